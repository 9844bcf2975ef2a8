"""The pipeline: one `Stage` record per stage, in order, and the code that runs them.

    python -c "import repro.pipeline as p; print([s.name for s in p.STAGES])"

A stage says what it reads and writes in the run directory, which settings define its result
(fingerprinted with its inputs: a stage whose fingerprint is unchanged is skipped, or copied from a
sibling run), how to check its settings before anything is written, how to run it and its one
summary line. Adding a stage is adding one record here (and its module). The stages themselves are
plain functions `run(config, paths…) -> stats` in their modules; this file only wires them to the
run directory. It does not parse arguments (repro/cli.py) nor draw progress (repro/console.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from repro import config as config_mod
from repro.artifacts import DATA_DIR, ROOT, ReproError, RunDir, digest, fingerprint, write_json
from repro.config import Config
from repro.console import LoggedProgress, RunLog, TeeConsole, busy, print_notes, progress_display


@dataclass(frozen=True)
class Stage:
    name: str
    help: str                                   # one line for `repro --help`
    inputs: Callable[[Config], list[str]]       # artifact names it reads (made by earlier stages)
    outputs: Callable[[Config], list[str]]      # artifact names it writes
    settings: Callable[[Config], dict]          # what defines its result (with the inputs' hashes)
    check: Callable[[Config], None]             # bad settings: one ReproError before anything is written
    run: Callable[[Config, RunDir, object], dict]  # (config, run dir, progress) -> stats
    summary: Callable[[dict], str]              # the closing line, from the stats
    variant_only: bool = False                  # runs only in the variants that name it (validate, evol)
    asks_teacher: bool = False                  # uses generate's teacher: its settings are checked once
    uses_student: bool = False                  # uses train.student: its file is checked once
    fingerprinted: bool = True                  # False: rebuilt every time from what is on disk (report)


def _nothing(cfg: Config) -> None:
    return None


def _prompt_hash(name: str) -> str:
    p = Path(name) if Path(name).is_file() else DATA_DIR / "prompts" / name
    return digest(p) if p.exists() else name


def _teacher_settings(cfg: Config) -> dict:
    """What the teacher asked by validate and evol is (generate's)."""
    from repro import models

    return {"teacher_id": models.model_id(cfg.generate.teacher) if cfg.generate.teacher else "",
            **{k: getattr(cfg.generate, k) for k in ("backend", "base_url", "model_name", "n_ctx", "seed",
                                                     "temperature", "top_p")}}


def train_inputs(cfg: Config) -> list[str]:
    """What the train stage reads for the run's variant: the first stage's pairs, then evol's."""
    extra = config_mod.variant_stages(cfg.variant)
    return ["validated.parquet" if "validate" in extra else "clean.parquet"] + (
        ["evol.parquet"] if "evol" in extra else [])


def teacher_spec(cfg: Config) -> str:
    """The teacher evaluated beside the students: evaluate.teacher, else the one that generated."""
    spec = cfg.evaluate.teacher or cfg.generate.teacher
    if not spec:
        raise ReproError("evaluate.models names the teacher, but neither evaluate.teacher nor generate.teacher "
                         "is set (an openai server's model cannot be evaluated here); set evaluate.teacher "
                         "or drop teacher from evaluate.models")
    return spec


def check_model_file(spec: str, setting: str) -> None:
    """Resolve a model spec and, for a local GGUF, check its header: a corrupt or truncated file is
    one line naming the setting before anything is written (llama.cpp would say less, later).
    Embedded models are verified by their published hash instead; a transformers checkpoint (a
    folder or a hub id, allowed for train.student only) is checked by train."""
    from repro import models

    if setting == "train.student" and models.is_checkpoint(spec):
        return
    path = models.resolve(spec)
    if not spec.startswith("embedded:"):
        models.check_gguf(path, setting)


def _quant_file(cfg: Config) -> str:
    return f"model-{cfg.export.quant}.gguf"


def _base_files(cfg: Config) -> list[str]:
    """The base student's own GGUF in the run, when the student is a transformers checkpoint:
    export converts and quantizes it exactly as the fine-tuned one, so that evaluation compares
    like with like. A GGUF student is evaluated from its own file: no such output."""
    from repro import models
    return [f"base-{cfg.export.quant}.gguf"] if models.is_checkpoint(cfg.train.student) else []


def base_student_gguf(cfg: Config, run: RunDir) -> Path:
    """The GGUF the base student is evaluated from."""
    from repro import models
    made = _base_files(cfg)
    return run / made[0] if made else models.resolve(cfg.train.student)


# ---------------------------------------------------------------------------------------------
# seeds


def _seeds_settings(cfg: Config) -> dict:
    from repro.data import corpus
    return {**cfg.section("seeds"), "sources": corpus.source_fingerprints(cfg.seeds),
            "tables": [digest(DATA_DIR / n) for n in ("languages.tsv", "licenses.tsv")]}


def _seeds_check(cfg: Config) -> None:
    from repro.data import corpus, seeds
    seeds.check_settings(cfg.seeds)          # quotas, mode, counts
    corpus.resolve_sources(cfg.seeds.source)  # source kinds, and that each path exists


def _seeds_run(cfg: Config, run: RunDir, progress) -> dict:
    from repro.data import seeds
    with busy(progress, "seeds: read the sources, cut seeds"):
        stats = seeds.run(cfg.seeds, run / "seeds.parquet", run / "corpus.parquet")
    print_notes("seeds", stats["notes"], progress)  # filters, shortfalls, rebalancing: one line each
    return stats


# ---------------------------------------------------------------------------------------------
# generate


def _generate_settings(cfg: Config) -> dict:
    from repro import models
    s = {**cfg.section("generate"),
         "teacher_id": models.model_id(cfg.generate.teacher) if cfg.generate.teacher else "",
         "prompt_hash": _prompt_hash(cfg.generate.prompt)}
    # Settings newer than the runs already made are left out at their defaults (one sample, every
    # seed: what those runs did), so that their generate stays up to date.
    for k, default in (("samples", 1), ("shard", ""), ("tasks", ""), ("tasks_per_request", 3), ("fill_loops", 0)):
        if s[k] == default:
            del s[k]
    if cfg.generate.tasks:  # self-instruct: the pool's content, as the prompt's
        s["tasks_hash"] = _prompt_hash(cfg.generate.tasks)
    return s


def generate_outputs(cfg: Config) -> list[str]:
    """pairs.jsonl and rejected.jsonl, or a shard's own store with generate.shard=I/N."""
    from repro import generate
    return [p.name for p in generate.store_paths(Path("pairs.jsonl"), Path("rejected.jsonl"), cfg.generate.shard)]


def manifest_name(stage: str, cfg: Config) -> str:
    """The name of a stage's manifest: its own, or `generate.shard-I-of-N` for a shard of generate
    (each shard has one, so that shards copied into one run directory keep theirs)."""
    from repro import generate
    return f"generate.{generate.shard_tag(cfg.generate.shard)}" if stage == "generate" and cfg.generate.shard else stage


def _generate_run(cfg: Config, run: RunDir, progress) -> dict:
    from repro import generate
    # Resumable by itself: answers already in the store under the same key are kept. A shard
    # (generate.shard) appends to its own store instead.
    return generate.run(cfg.generate, run / "seeds.parquet", run / "pairs.jsonl", run / "rejected.jsonl", progress)


def _generate_summary(s: dict) -> str:
    line = (f"{s['pairs']} pairs kept, {s['rejected']} rejected; {s['generated']} answered now "
            f"({s['resumed_from']} earlier), {s['completion_tokens']} new tokens, "
            f"{s['tokens_per_second'] or '-'} tokens/s, {s['wall_seconds']} s")
    if s.get("samples"):
        line = f"{s['seeds']} seeds x {s['samples']} samples: " + line
    if s.get("shard"):
        line = f"shard {s['shard']} ({' and '.join(s['store'])}): " + line + "; join the shards with `repro merge`"
    if s.get("merged_from"):
        line = f"{s['shards']} shards merged: " + line
    return line


# ---------------------------------------------------------------------------------------------
# clean


def _clean_settings(cfg: Config) -> dict:
    from repro import clean
    from repro import decontam
    # The substring rule became BigCode's own (whitespace as is): runs cleaned before redo clean.
    return {**cfg.section("clean"), "benchmark_data": clean.source_fingerprints(cfg.clean),
            **({"substring_rule": decontam.SUBSTRING_RULE} if "substring" in cfg.clean.methods else {})}


def _clean_check(cfg: Config) -> None:
    from repro import clean
    clean.check_settings(cfg.clean)          # benchmark names and paths, methods, n-gram and dedup settings


def _clean_run(cfg: Config, run: RunDir, progress) -> dict:
    from repro import clean
    with busy(progress, "clean: validate, decontaminate, deduplicate"):
        stats = clean.run(cfg.clean, run / "pairs.jsonl", run / "clean.parquet", run / "removed.parquet",
                          run / "decontamination.json", run / "decontamination.md")
    print_notes("clean", stats["notes"], progress)  # benchmarks not checked, an empty input: one line each
    return stats


# ---------------------------------------------------------------------------------------------
# validate and evol (beyond the paper; only in the variants that name them)


def _validate_settings(cfg: Config) -> dict:
    v = cfg.validate
    return {**cfg.section("validate"), **_teacher_settings(cfg),
            "prompts": [_prompt_hash(v.prompt), _prompt_hash(v.solve_prompt)],
            # Several answers per seed: one is chosen among them (and removed.parquet is read).
            **({"generate_samples": cfg.generate.samples} if cfg.generate.samples > 1 else {})}


def _validate_inputs(cfg: Config) -> list[str]:
    """clean.parquet; with generate.samples > 1 also removed.parquet, where clean lists a seed's
    other answers (validate chooses among them)."""
    return ["clean.parquet"] + (["removed.parquet"] if cfg.generate.samples > 1 else [])


def _validate_summary(s: dict) -> str:
    line = (f"{s['kept']} kept of {s['pairs_in']}: {s['passed']} passed, {s['failed']} failed, "
            f"{s['timeout']} timed out, {s['no_tests']} without usable tests, {s['not_run']} "
            f"not testable here; {s['pairs_per_minute']} pairs/min")
    if s.get("answers"):
        line = (f"{s['kept']} seeds of {s['pairs_in']} kept with one answer each ({s['seeds_with_a_pass']} with one "
                f"that passed) of {s['answers']} answers ({s['generate_samples']} samples per seed): "
                + line.split(": ", 1)[1])
    return line


def _validate_check(cfg: Config) -> None:
    from repro import validate
    validate.check(cfg.validate)


def _validate_run(cfg: Config, run: RunDir, progress) -> dict:
    from repro import validate
    stats = validate.run(cfg.validate, cfg.generate, run / "clean.parquet", run / "validated.parquet",
                         run / "validation.jsonl", run / "validate-answers.jsonl", progress,
                         removed_path=run / "removed.parquet" if cfg.generate.samples > 1 else None)
    print_notes("validate", stats["notes"], progress)
    return stats


def _evol_settings(cfg: Config) -> dict:
    from repro import clean
    return {**cfg.section("evol"), **_teacher_settings(cfg), "clean": cfg.section("clean"),
            "benchmark_data": clean.source_fingerprints(cfg.clean),
            "prompts": [_prompt_hash("evol_instruct.txt"), _prompt_hash("evol_answer.txt")]}


def _evol_check(cfg: Config) -> None:
    from repro import clean, evol
    clean.check_settings(cfg.clean)          # its pairs are cleaned by clean's code
    evol.check(cfg.evol)


def _evol_run(cfg: Config, run: RunDir, progress) -> dict:
    from repro import clean, evol
    stats = evol.run(cfg.evol, cfg.generate, run / "clean.parquet", run / "evol_pairs.jsonl",
                     run / "evol_rejected.jsonl", run / "evol-answers.jsonl", progress)
    with busy(progress, "evol: validate, decontaminate, deduplicate the evolved pairs"):
        stats["clean"] = clean.run(cfg.clean, run / "evol_pairs.jsonl", run / "evol.parquet",
                                   run / "evol_removed.parquet", run / "evol_decontamination.json",
                                   run / "evol_decontamination.md")
    stats["kept"] = stats["clean"]["kept"]
    print_notes("evol", stats["clean"]["notes"], progress)
    return stats


def _evol_summary(s: dict) -> str:
    return (f"{s['kept']} evolved pairs kept of {s['evolved']} problems evolved; rejected: "
            + "".join(f"{n} {why}; " for why, n in s["rejected_by_reason"].items())
            + f"{s['clean']['pairs_in'] - s['clean']['kept']} by cleaning")


# ---------------------------------------------------------------------------------------------
# train, export


def _train_two_stages(cfg: Config) -> bool:
    return "evol.parquet" in train_inputs(cfg)


def _train_settings(cfg: Config) -> dict:
    from repro import models
    from repro.train import SUBSET_RULE
    return {**cfg.section("train"), "student_id": models.model_id(cfg.train.student),
            **({"subset": SUBSET_RULE} if cfg.train.max_pairs else {}),
            "template": digest(DATA_DIR / "prompts" / "train_template.txt"),
            **({"evol_train_pairs": cfg.evol.train_pairs} if _train_two_stages(cfg) else {})}


def _train_check(cfg: Config) -> None:
    from repro import train
    train.check_settings(cfg.train)         # backend, CUDA, packages, student, max_len vs template


def _train_run(cfg: Config, run: RunDir, progress) -> dict:
    from repro import train
    # A crashed run left run/train_ckpt/: train.run resumes from it (its manifest is missing, so
    # the stage is not skipped) and deletes it once the adapter is written.
    first, *second = train_inputs(cfg)
    if not second:
        stats = train.run(cfg.train, run / first, run / "adapter", run / "train_log.jsonl", progress)
        print_notes("train", stats["notes"], progress)  # backend substitutions, patched kernels, resume
        return stats
    return train.run_two_stages(cfg.train, cfg.evol.train_pairs, run / first, run / second[0], run.path, progress)


def _export_check(cfg: Config) -> None:
    from repro import export, models
    export.check_settings(cfg.export)       # outtype, quant and round-trip types
    if not models.is_checkpoint(cfg.train.student):
        models.resolve(cfg.train.student)   # export reads the student's GGUF (train may use a checkpoint)


def _export_run(cfg: Config, run: RunDir, progress) -> dict:
    from repro import export
    with busy(progress, "export: merge, convert, quantize, compare"):
        made = _base_files(cfg)
        stats = export.run(cfg.export, cfg.train.student, run / "adapter", run / _quant_file(cfg), run / "export-work",
                           base_out=run / made[0] if made else None)
    write_json(run / "export.json", stats)
    return stats


# ---------------------------------------------------------------------------------------------
# evaluate, report


# The rows evaluate.models may name: the base student on its completion prompt (the paper's
# baseline) and on the fine-tuned student's instruction prompt (the control), the fine-tuned
# student, the teacher.
MODEL_ROWS = ("base", "base-instruct", "finetuned", "teacher")


def _evaluate_inputs(cfg: Config) -> list[str]:
    models = cfg.evaluate.models
    return (([_quant_file(cfg)] if "finetuned" in models else [])
            + (_base_files(cfg) if {"base", "base-instruct"} & set(models) else []))


def _evaluate_settings(cfg: Config) -> dict:
    from repro import models
    from repro.eval import evalplus_data
    e = cfg.evaluate
    data = {b: evalplus_data.load(b, path=getattr(e, f"{b}_path"), fetch=e.fetch).sha256 for b in e.benchmarks}
    section = cfg.section("evaluate")
    if e.samples == 1:  # greedy: the sampling settings, newer than the runs made, change nothing
        del section["samples"], section["temperature"]
    if not e.fill_loops:  # newer than the runs made, and off: every token decoded, as those runs did
        del section["fill_loops"]
    del section["lanes"]  # how the answers are scheduled, not what they are
    return {**section, "base_id": models.model_id(cfg.train.student),
            "teacher_id": models.model_id(teacher_spec(cfg)) if "teacher" in e.models else "",
            "benchmark_data": data,
            "prompts": [digest(DATA_DIR / "prompts" / n) for n in ("train_template.txt", "eval_instruct.txt")]}


def _evaluate_check(cfg: Config) -> None:
    from repro import models
    from repro.eval import evaluate
    e = cfg.evaluate
    evaluate.check_data(e)                  # engine settings, benchmark files and their hashes
    if e.backend == "openai":
        raise ReproError("evaluate.backend=openai: evaluation runs the GGUF files through llama.cpp; "
                         "use llama-batched or llama")
    unknown = [m for m in e.models if m not in MODEL_ROWS]
    if unknown or not e.models:
        raise ReproError(f"evaluate.models={','.join(e.models)}: choose from {', '.join(MODEL_ROWS)}")
    if not models.is_checkpoint(cfg.train.student):
        models.resolve(cfg.train.student)   # the base student is evaluated as its GGUF (else export's)
    if "teacher" in e.models:
        check_model_file(teacher_spec(cfg), "evaluate.teacher" if e.teacher else "generate.teacher")


def _evaluate_run(cfg: Config, run: RunDir, progress) -> dict:
    from repro import models
    from repro.eval import evaluate
    e = cfg.evaluate
    if "finetuned" in e.models:
        finetuned = run / _quant_file(cfg)
        try:
            models.check_gguf(finetuned, "export")
        except ReproError as err:
            why = str(err).split(": ", 1)[-1].split("; ", 1)[0]  # check_gguf's fix is for a download
            raise ReproError(f"{finetuned} (the export stage's output): {why}; rerun "
                             f"`repro export --profile {cfg.profile} --force` to make it again") from None
    every = {"base": lambda: (base_student_gguf(cfg, run), e.base_prompt),
             "base-instruct": lambda: (base_student_gguf(cfg, run), e.tuned_prompt),  # the control row
             "finetuned": lambda: (run / _quant_file(cfg), e.tuned_prompt),
             "teacher": lambda: (models.resolve(teacher_spec(cfg)), e.teacher_prompt)}
    results = evaluate.run(e, {m: every[m]() for m in e.models}, run / "eval", progress)
    write_json(run / "eval" / "results.json", results)
    return results


def _evaluate_summary(s: dict) -> str:
    if s.get("samples", 1) > 1:  # pass@k of n samples per problem
        def at(r):
            return ", ".join(f"pass@{k} {100 * x:.1f}%" for k, x in r["pass@k"].items())
        return (f"{s['samples']} samples per problem at temperature {s['temperature']}: " + "; ".join(
            f"{k} " + ", ".join(f"{b} ({v[b]['n']}) {at(v[b]['base'])}" + (f" (+ {at(v[b]['plus'])})" if "plus" in v[b]
                                                                          else "")
                                for b in s["benchmarks"]) for k, v in s["models"].items()))
    return "; ".join(f"{k} " + ", ".join(f"{b} {v[b]['base']['passed']}/{v[b]['n']}"
                                         + (f" (+ {v[b]['plus']['passed']})" if "plus" in v[b] else "")
                                         for b in s["benchmarks"]) for k, v in s["models"].items())


def _report_run(cfg: Config, run: RunDir, progress) -> dict:
    from repro import card, report
    stats = {"report": str(run / "report.md"), "card": None}
    with busy(progress, "report and dataset card"):
        report.run(run, run / "report.md", STAGES, cfg.report)
        if (run / "clean.parquet").exists():  # the dataset card (and clean.jsonl) beside the dataset
            stats["card"] = str(card.write_card(run))
    return stats


def _report_summary(s: dict) -> str:
    made = f"dataset card → {s['card']}" if s["card"] else "[dim]no dataset card: no clean.parquet yet[/]"
    return f"{s['report']}; {made}"


# ---------------------------------------------------------------------------------------------
# The table


STAGES: list[Stage] = [
    Stage("seeds", "sample seed snippets from real source code",
          lambda c: [], lambda c: ["seeds.parquet", "corpus.parquet"], _seeds_settings, _seeds_check, _seeds_run,
          lambda s: f"{s['seeds']} seeds from {s['files']} files"),
    Stage("generate", "the teacher writes a problem and a solution per seed",
          lambda c: ["seeds.parquet"], generate_outputs, _generate_settings,
          _nothing, _generate_run, _generate_summary, asks_teacher=True),
    Stage("clean", "check, decontaminate and deduplicate the pairs",
          lambda c: ["pairs.jsonl"],
          lambda c: ["clean.parquet", "removed.parquet", "decontamination.json", "decontamination.md"],
          _clean_settings, _clean_check, _clean_run,
          lambda s: f"{s['kept']} kept of {s['pairs_in']} ({s['removed_by_reason'] or 'none removed'})"),
    Stage("validate", "run teacher-written tests against each solution (beyond the paper)",
          _validate_inputs, lambda c: ["validated.parquet", "validation.jsonl"],
          _validate_settings, _validate_check, _validate_run, _validate_summary,
          variant_only=True, asks_teacher=True),
    Stage("evol", "rewrite problems harder with Evol-Instruct and answer them (beyond the paper)",
          lambda c: ["clean.parquet"],
          lambda c: ["evol.parquet", "evol_pairs.jsonl", "evol_rejected.jsonl", "evol_removed.parquet",
                     "evol_decontamination.json", "evol_decontamination.md"],
          _evol_settings, _evol_check, _evol_run, _evol_summary, variant_only=True, asks_teacher=True),
    Stage("train", "LoRA fine-tune the student on the pairs",
          train_inputs,
          lambda c: ["adapter", "train_log.jsonl"] + (["adapter-oss", "train_log_evol.jsonl"]
                                                     if _train_two_stages(c) else []),
          _train_settings, _train_check, _train_run,
          lambda s: f"{s['steps']} steps, loss {s['first_loss']:.3f} → {s['final_loss']:.3f}, "
                    f"{s['tokens_per_second']} tokens/s", uses_student=True),
    Stage("export", "merge, convert to GGUF, quantize, check the round trip",
          lambda c: ["adapter"],
          lambda c: [_quant_file(c), *_base_files(c), "export.json"]
          + ([f"adapter-{c.export.outtype}.gguf"] if c.export.lora_gguf else []),
          lambda c: {**c.section("export"), "student_id": _model_id(c.train.student)},
          _export_check, _export_run,
          lambda s: (f"{s['quant']} GGUF, {s['bytes'] / 2**20:.0f} MiB, loads in llama.cpp; greedy agreement "
                     "with PyTorch: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in
                                                  s.get("roundtrip", {}).get("agreement", {}).items())),
          uses_student=True),
    Stage("evaluate", "pass@1 of the base and fine-tuned student and the teacher",
          _evaluate_inputs,
          lambda c: ["eval/results.json"], _evaluate_settings, _evaluate_check,
          _evaluate_run, _evaluate_summary, uses_student=True),
    Stage("report", "the report and the dataset card, from what is on disk",
          lambda c: [], lambda c: ["report.md"], lambda c: {}, _nothing, _report_run, _report_summary,
          fingerprinted=False),
]
BY_NAME = {s.name: s for s in STAGES}
NAMES = [s.name for s in STAGES]


def _model_id(spec: str) -> str:
    from repro import models
    return models.model_id(spec)


def stages_of(variant: str) -> list[str]:
    """The stages `repro run` runs for a variant: validate and evol only where it names them."""
    extra = config_mod.variant_stages(variant)
    return [s.name for s in STAGES if not s.variant_only or s.name in extra]


def producer(name: str, cfg: Config) -> str:
    """The stage that writes artifact `name` (for the "run this first" line)."""
    return next(s.name for s in STAGES if name in s.outputs(cfg))


def stage_plan(stage: str, cfg: Config) -> tuple[dict, list[str], list[str]]:
    """(settings that define the result, input artifact names, output artifact names)."""
    s = BY_NAME[stage]
    return s.settings(cfg), s.inputs(cfg), s.outputs(cfg)


def check(cfg: Config, stages: list[str]) -> None:
    """Fail on bad settings before anything is written into the run directory. What several
    stages share (the teacher's settings and file or server, the student's file) is checked once."""
    from repro import generate

    if cfg.generate.tasks and cfg.variant != "self-instruct" and "generate" in stages:
        raise ReproError(f"generate.tasks={cfg.generate.tasks}: a task pool makes Self-Instruct data, which has its own "
                         "run directory; use --variant self-instruct instead of --set generate.tasks")
    if cfg.generate.shard and stages != ["generate"]:
        raise ReproError(f"generate.shard={cfg.generate.shard}: a shard is made by `repro generate --shard` alone; "
                         "join the shards with `repro merge RUN...`, then run the other stages without it")
    teacher = student = False
    for s in (BY_NAME[name] for name in stages):  # in stage order: the first problem is the one said
        if s.asks_teacher and not teacher:
            generate.check(cfg.generate)          # settings, the teacher's file, the server
            teacher = True
        if s.uses_student and not student:
            check_model_file(cfg.train.student, "train.student")  # a damaged GGUF: one line, before any work
            student = True
        s.check(cfg)


# ---------------------------------------------------------------------------------------------
# Running stages


@dataclass
class Options:
    command: str = "$ repro"        # the command line, first in log.txt
    quiet: bool = False             # print nothing but errors (log.txt still gets everything)
    force: bool = False             # rerun stages that are up to date
    logged: bool = False            # set once the command line is in log.txt


def run_stage(stage: str, cfg: Config, run: RunDir, console, progress, force: bool = False) -> dict:
    """Run one stage in `run` unless it is up to date (or the same as in a sibling run), writing its
    manifest last."""
    s = BY_NAME[stage]
    if not s.fingerprinted:  # cheap, and reflects whatever is on disk now
        stats = s.run(cfg, run, progress)
        console.print(f"[green]✓[/] {stage} → {s.summary(stats)}", soft_wrap=True)
        return stats
    settings, inputs, outputs = stage_plan(stage, cfg)
    for name in inputs:
        if not (run / name).exists():
            prev = producer(name, cfg)
            var = f" --variant {cfg.variant}" if cfg.variant != "oss" else ""
            raise ReproError(f"{run / name} is missing; run `repro {prev} --profile {cfg.profile}{var}` first "
                             f"(or `repro run --profile {cfg.profile}{var}`)")
    input_digests = {name: digest(run / name) for name in inputs}
    # An input its own stage did not finish (a killed generate leaves a partial pairs.jsonl) is
    # used, since users may bring their own inputs, but not silently: a note once the stage is done
    # (before, it would make a failing stage's one error line two).
    makers = {name: producer(name, cfg) for name in inputs}
    unfinished = [f"[yellow]note[/]: {run / name} was not finished by `repro {maker}` (an interrupted or outside "
                  f"input); rerun `repro {maker} --profile {cfg.profile}` to complete it"
                  for name, d in input_digests.items() if (maker := makers[name])
                  and (run.manifest(maker) or {}).get("outputs", {}).get(name) != d]
    fp = fingerprint(stage, settings, input_digests)
    mname = manifest_name(stage, cfg)
    if not force and run.is_done(mname, fp, outputs):
        console.print(f"[dim]↷ {stage}: up to date, skipped[/]")
        return run.manifest(mname)["stats"]
    if not force and (other := run.reuse(mname, fp, outputs)) is not None:
        console.print(f"[dim]↷ {stage}: the same as in {other.path}, copied from there[/]", soft_wrap=True)
        return run.manifest(mname)["stats"]
    if isinstance(console, TeeConsole):  # the log only: on the console, an error stays one line
        console.log_file.write(f"→ {stage}: started")
    t0 = time.perf_counter()
    try:
        stats = s.run(cfg, run, progress)
    finally:
        if isinstance(progress, LoggedProgress):
            progress.log_open_tasks()  # where each of the stage's tasks got to, done or not
    seconds = time.perf_counter() - t0
    run.write_manifest(mname, fp, settings, input_digests, outputs, stats, seconds)
    console.print(f"[green]✓[/] {stage} ({seconds:.1f} s): {s.summary(stats)}")
    for note in unfinished:
        console.print(note, soft_wrap=True)
    return stats


def run_stages(cfg: Config, run: RunDir, stages: list[str], opts: Options) -> list[str]:
    """Run `stages` in `run` under its lock, with its log, progress and closing lines; returns
    what ran ("clean (skipped)" for one that was up to date)."""
    with run.locked():
        log = RunLog(run / "log.txt")
        try:
            log.write(opts.command)
            opts.logged = True
            console = TeeConsole(log, stderr=True, quiet=opts.quiet)
            if stages != ["report"]:  # rebuilding a report leaves the run's own settings alone
                write_json(run / "run.json", {"profile": cfg.profile, "variant": cfg.variant, "config": asdict(cfg)})
            t0, ran = time.perf_counter(), []
            with progress_display(console, log, opts.quiet) as progress:
                for stage in stages:
                    before = run.manifest(manifest_name(stage, cfg))
                    run_stage(stage, cfg, run, console, progress, force=opts.force)
                    ran.append(stage if stage == "report" or run.manifest(manifest_name(stage, cfg)) != before
                               else f"{stage} (skipped)")
            if "evaluate" in stages or "report" in stages:
                print_results(run, console)
            console.print(f"done in {time.perf_counter() - t0:.1f} s: {', '.join(ran)}; log: {run / 'log.txt'}",
                          style="dim", highlight=False, soft_wrap=True)
        finally:
            log.close()
    return ran


def print_results(run: RunDir, console) -> None:
    from rich.table import Table

    m = run.manifest("evaluate")
    if not m:
        return
    s = m["stats"]
    t = Table(title=f"pass@1, % ({run.path.name}; 95% intervals in the report)")
    t.add_column("model")
    t.add_column("prompt")
    cols = []
    for b, info in s["benchmarks"].items():
        for split in ("base", "plus") if info["plus"] else ("base",):
            cols.append((b, split))
            name = {"humaneval": "HumanEval", "mbpp": "MBPP"}.get(b, b) + ("+" if split == "plus" else "")
            t.add_column(f"{name} ({info['n']})")
    for label, r in s["models"].items():
        t.add_row(label, r["prompt_style"], *(f"{100 * r[b][split]['pass@1']:.1f}" for b, split in cols))
    if s.get("samples", 1) > 1:  # n samples per problem: pass@1 above is the unbiased estimate; then pass@k
        t.title = (f"pass@1, % ({run.path.name}; unbiased, from {s['samples']} samples per problem at temperature "
                   f"{s['temperature']})")
        console.print(t)
        ks = [k for k in next(iter(s["models"].values()))[cols[0][0]][cols[0][1]]["pass@k"] if k != "1"]
        if ks:
            tk = Table(title=f"pass@k, % (unbiased estimator, {s['samples']} samples per problem)")
            tk.add_column("model")
            tk.add_column("k")
            for b, split in cols:
                tk.add_column({"humaneval": "HumanEval", "mbpp": "MBPP"}.get(b, b) + ("+" if split == "plus" else ""))
            for label, r in s["models"].items():
                for k in ks:
                    tk.add_row(label, k, *(f"{100 * r[b][split]['pass@k'][k]:.1f}" for b, split in cols))
            console.print(tk)
    else:
        console.print(t)
    console.print(f"report: {run / 'report.md'}")


# ---------------------------------------------------------------------------------------------
# Runs: configs, names, directories


def load_config(profile: str, sets: list[str], variant: str = "oss", full_eval: bool = False) -> Config:
    full = ["evaluate.stride=1", "evaluate.mbpp_stride=0", "evaluate.limit=0", "evaluate.multilingual_stride=1"] if full_eval else []
    # Every multilingual set where the profile leaves them out (tiny), before the user's own --set,
    # which wins.
    every_set = [f"evaluate.multilingual={','.join(config_mod.EvaluateConfig().multilingual)}"] if full_eval else []
    variant = config_mod.check_variant(variant or "oss")
    cfg = config_mod.load(profile, config_mod.variant_sets(variant) + every_set + list(sets) + full)
    cfg.variant = variant
    return cfg


def run_name(base: str, variant: str) -> str:
    """runs/<base> for the paper's oss variant, runs/<base>-<validated|evol|validated-evol|self-instruct> for the others."""
    slug = config_mod.variant_slug(variant)
    return f"{base}-{slug}" if slug else base


def find_run(spec: str, command: str = "repro report") -> Path:
    """A run named by the user: a directory, else a name under runs/."""
    for p in (Path(spec).expanduser(), ROOT / "runs" / spec):
        if p.is_dir():
            return p
    raise ReproError(f"{command} {spec}: no such run directory (neither {Path(spec).expanduser().resolve()} "
                     f"nor {ROOT / 'runs' / spec}); give a name under runs/ or a run's directory")


def sibling_runs(base: str, variant: str) -> list[RunDir]:
    """The other variants' runs of the same name (runs/<name>, runs/<name>-validated, ...), whose
    finished stages a run may copy, so that variants generate and clean only once."""
    return [RunDir(ROOT / "runs" / run_name(base, v)) for v in config_mod.VARIANTS if v != variant]

