"""The `repro` command: `repro run --profile tiny` runs every stage; `repro <stage>` runs one.

    repro run --profile tiny                    # the whole pipeline into runs/tiny/
    repro generate --profile tiny --set generate.max_tokens=512
    repro doctor                                # what is installed, cached and missing
    repro fetch                                 # assemble embedded models, fetch the GGUF converter
    repro config --profile smoke                # print the resolved configuration
    repro report smoke                          # rebuild runs/smoke/report.md and its dataset card

A stage whose inputs and settings are unchanged since it last finished is skipped. Errors meant
for the user are one line and exit status 2; `--debug` shows the traceback. Everything a stage
command prints, progress every half minute, and its errors are appended to runs/<name>/log.txt;
`--quiet` silences the console but not the log.
"""

from __future__ import annotations

import os

# Before torch is imported anywhere: busy-waiting OpenMP threads made CPU training 10x slower on
# a loaded 2-core machine (measured). Progress bars of libraries would interleave with ours.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.control import Control  # noqa: E402
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,  # noqa: E402
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text  # noqa: E402

from repro import config as config_mod  # noqa: E402
from repro.artifacts import (DATA_DIR, ROOT, ReproError, RunDir, atomic_path, digest, fingerprint,  # noqa: E402
                             parquet_rows, write_json, write_text)

STAGES = ["seeds", "generate", "clean", "validate", "evol", "train", "export", "evaluate", "report"]


def stages_of(variant: str) -> list[str]:
    """The stages `repro run` runs for a variant: validate and evol only where it names them."""
    extra = config_mod.variant_stages(variant)
    return [s for s in STAGES if s not in ("validate", "evol") or s in extra]


def train_inputs(cfg: config_mod.Config) -> list[str]:
    """What the train stage reads for the run's variant: the first stage's pairs, then evol's."""
    extra = config_mod.variant_stages(cfg.variant)
    return ["validated.parquet" if "validate" in extra else "clean.parquet"] + (
        ["evol.parquet"] if "evol" in extra else [])


# ---------------------------------------------------------------------------------------------
# Stage table: for each stage, its settings, the artifacts it reads and writes, and how to run it.


def _prompt_hash(name: str) -> str:
    p = Path(name) if Path(name).is_file() else DATA_DIR / "prompts" / name
    return digest(p) if p.exists() else name


def stage_plan(stage: str, cfg: config_mod.Config):
    """(settings that define the result, input artifact names, output artifact names)."""
    from repro import models, seeds, train

    quant_file = f"model-{cfg.export.quant}.gguf"
    if stage == "seeds":
        return ({**cfg.section("seeds"), "sources": seeds.source_fingerprints(cfg.seeds),
                 "tables": [digest(DATA_DIR / n) for n in ("languages.tsv", "licenses.tsv")]},
                [], ["seeds.parquet", "corpus.parquet"])
    if stage == "generate":
        return ({**cfg.section("generate"),
                 "teacher_id": models.model_id(cfg.generate.teacher) if cfg.generate.teacher else "",
                 "prompt_hash": _prompt_hash(cfg.generate.prompt)},
                ["seeds.parquet"], ["pairs.jsonl", "rejected.jsonl"])
    if stage == "clean":
        from repro import clean
        return ({**cfg.section("clean"), "benchmark_data": clean.source_fingerprints(cfg.clean)}, ["pairs.jsonl"],
                ["clean.parquet", "removed.parquet", "decontamination.json", "decontamination.md"])
    if stage in ("validate", "evol"):
        teacher = {"teacher_id": models.model_id(cfg.generate.teacher) if cfg.generate.teacher else "",
                   **{k: getattr(cfg.generate, k) for k in ("backend", "base_url", "model_name", "n_ctx", "seed",
                                                            "temperature", "top_p")}}
        if stage == "validate":
            v = cfg.validate
            return ({**cfg.section("validate"), **teacher, "prompts": [_prompt_hash(v.prompt), _prompt_hash(v.solve_prompt)]},
                    ["clean.parquet"], ["validated.parquet", "validation.jsonl"])
        from repro import clean
        return ({**cfg.section("evol"), **teacher, "clean": cfg.section("clean"),
                 "benchmark_data": clean.source_fingerprints(cfg.clean),
                 "prompts": [_prompt_hash("evol_instruct.txt"), _prompt_hash("evol_answer.txt")]},
                ["clean.parquet"], ["evol.parquet", "evol_pairs.jsonl", "evol_rejected.jsonl", "evol_removed.parquet",
                                    "evol_decontamination.json", "evol_decontamination.md"])
    if stage == "train":
        two = "evol.parquet" in train_inputs(cfg)
        return ({**cfg.section("train"), "student_id": train.student_id(cfg.train.student),
                 "template": digest(DATA_DIR / "prompts" / "train_template.txt"),
                 **({"evol_train_pairs": cfg.evol.train_pairs} if two else {})},
                train_inputs(cfg), ["adapter", "train_log.jsonl"] + (["adapter-oss", "train_log_evol.jsonl"] if two else []))
    if stage == "export":
        lora = [f"adapter-{cfg.export.outtype}.gguf"] if cfg.export.lora_gguf else []
        return ({**cfg.section("export"), "student_id": models.model_id(cfg.train.student)},
                ["adapter"], [quant_file, "export.json"] + lora)
    if stage == "evaluate":
        from repro import evalplus_data
        e = cfg.evaluate
        data = {b: evalplus_data.load(b, path=getattr(e, f"{b}_path"), fetch=e.fetch).sha256 for b in e.benchmarks}
        return ({**cfg.section("evaluate"), "base_id": models.model_id(cfg.train.student),
                 "teacher_id": models.model_id(teacher_spec(cfg)) if "teacher" in e.models else "",
                 "benchmark_data": data,
                 "prompts": [digest(DATA_DIR / "prompts" / n) for n in ("train_template.txt", "eval_instruct.txt")]},
                [quant_file], ["eval/results.json"])
    raise AssertionError(stage)


def teacher_spec(cfg: config_mod.Config) -> str:
    """The teacher evaluated beside the students: evaluate.teacher, else the one that generated."""
    spec = cfg.evaluate.teacher or cfg.generate.teacher
    if not spec:
        raise ReproError("evaluate.models names the teacher, but neither evaluate.teacher nor generate.teacher "
                         "is set (an openai server's model cannot be evaluated here); set evaluate.teacher "
                         "or drop teacher from evaluate.models")
    return spec


def print_notes(stage: str, notes: list[str], progress) -> None:
    """A stage's notes (what it skipped, counted or substituted), one dim line each."""
    if progress is not None:
        for note in notes:
            progress.console.print(f"  {stage}: {note}", style="dim", markup=False, highlight=False, soft_wrap=True)


def execute(stage: str, cfg: config_mod.Config, run: RunDir, fp: str, progress) -> dict:
    from repro import clean, engine, evaluate, export, generate, models, seeds, train

    if stage == "seeds":
        with busy(progress, "seeds: read the sources, cut seeds"):
            stats = seeds.run(cfg.seeds, run / "seeds.parquet", run / "corpus.parquet")
        print_notes("seeds", stats["notes"], progress)  # filters, shortfalls, rebalancing: one line each
        return stats
    if stage == "generate":
        # Resumable by itself: answers already in the store under the same key are kept.
        return generate.run(cfg.generate, run / "seeds.parquet", run / "pairs.jsonl", run / "rejected.jsonl",
                            progress)
    if stage == "clean":
        with busy(progress, "clean: validate, decontaminate, deduplicate"):
            stats = clean.run(cfg.clean, run / "pairs.jsonl", run / "clean.parquet", run / "removed.parquet",
                              run / "decontamination.json", run / "decontamination.md")
        print_notes("clean", stats["notes"], progress)  # benchmarks not checked, an empty input: one line each
        return stats
    if stage == "validate":
        from repro import validate
        stats = validate.run(cfg.validate, cfg.generate, run / "clean.parquet", run / "validated.parquet",
                             run / "validation.jsonl", run / "validate-answers.jsonl", progress)
        print_notes("validate", stats["notes"], progress)
        return stats
    if stage == "evol":
        from repro import evol
        stats = evol.run(cfg.evol, cfg.generate, run / "clean.parquet", run / "evol_pairs.jsonl",
                         run / "evol_rejected.jsonl", run / "evol-answers.jsonl", progress)
        with busy(progress, "evol: validate, decontaminate, deduplicate the evolved pairs"):
            stats["clean"] = clean.run(cfg.clean, run / "evol_pairs.jsonl", run / "evol.parquet",
                                       run / "evol_removed.parquet", run / "evol_decontamination.json",
                                       run / "evol_decontamination.md")
        stats["kept"] = stats["clean"]["kept"]
        print_notes("evol", stats["clean"]["notes"], progress)
        return stats
    if stage == "train":
        # A crashed run left run/train_ckpt/: train.run resumes from it (its manifest is missing,
        # so the stage is not skipped) and deletes it once the adapter is written.
        first, *second = train_inputs(cfg)
        if not second:
            stats = train.run(cfg.train, run / first, run / "adapter", run / "train_log.jsonl", progress)
            print_notes("train", stats["notes"], progress)  # backend substitutions, patched kernels, resume
            return stats
        # MagicoderS: OSS-Instruct first (adapter-oss), then the evolved pairs from that adapter.
        # A finished first stage is kept across a crash of the second: its fingerprint is beside it.
        fp1 = train.resume_fingerprint(cfg.train, run / first, train.student_checkpoint(cfg.train.student))
        marker = run / "adapter-oss" / "repro-stage.json"
        done = json.loads(marker.read_text()) if marker.exists() else {}
        s1 = done.get("stats") if done.get("fingerprint") == fp1 else None
        if s1 is None:
            s1 = train.run(cfg.train, run / first, run / "adapter-oss", run / "train_log.jsonl", progress)
            write_json(marker, {"fingerprint": fp1, "stats": s1})
        print_notes("train (stage 1, OSS-Instruct)", s1["notes"], progress)
        if not parquet_rows(run / "evol.parquet"):
            # The 0.5B teacher often rewrites a problem back unchanged; with a few problems evolved
            # none may survive. Stage 1 is the run's model then, said on the console and in the report.
            why = (f"skipped: {run / 'evol.parquet'} has no pairs (see evol_rejected.jsonl and "
                   "evol_removed.parquet; raise evol.num for more); the adapter is the OSS-Instruct stage's alone")
            with atomic_path(run / "adapter") as tmp:
                shutil.copytree(run / "adapter-oss", tmp, ignore=shutil.ignore_patterns("repro-stage.json"))
            write_text(run / "train_log_evol.jsonl", "")
            print_notes("train (stage 2, Evol-Instruct)", [why], progress)
            return {**s1, "stage1": s1, "stage2_skipped": why, "notes": s1["notes"] + [f"stage 2 {why}"]}
        cfg2 = dataclasses.replace(cfg.train, max_pairs=cfg.evol.train_pairs)
        s2 = train.run(cfg2, run / "evol.parquet", run / "adapter", run / "train_log_evol.jsonl", progress,
                       ckpt_dir=run / "train_ckpt_evol", init_adapter=run / "adapter-oss")
        print_notes("train (stage 2, Evol-Instruct)", s2["notes"], progress)
        return {**s2, "steps": s1["steps"] + s2["steps"], "first_loss": s1["first_loss"],
                "examples": s1["examples"] + s2["examples"], "stage1": s1, "stage2": s2, "notes": s1["notes"] + s2["notes"]}
    if stage == "export":
        with busy(progress, "export: merge, convert, quantize, compare"):
            stats = export.run(cfg.export, cfg.train.student, run / "adapter",
                               run / f"model-{cfg.export.quant}.gguf", run / "export-work")
        write_json(run / "export.json", stats)
        return stats
    if stage == "evaluate":
        e = cfg.evaluate
        if "finetuned" in e.models:
            finetuned = run / f"model-{cfg.export.quant}.gguf"
            try:
                engine.check_gguf(finetuned, "export")
            except ReproError as err:
                why = str(err).split(": ", 1)[-1].split("; ", 1)[0]  # check_gguf's fix is for a download
                raise ReproError(f"{finetuned} (the export stage's output): {why}; rerun "
                                 f"`repro export --profile {cfg.profile} --force` to make it again") from None
        every = {"base": lambda: (models.resolve(cfg.train.student), e.base_prompt),
                 "finetuned": lambda: (run / f"model-{cfg.export.quant}.gguf", e.tuned_prompt),
                 "teacher": lambda: (models.resolve(teacher_spec(cfg)), e.teacher_prompt)}
        results = evaluate.run(e, {m: every[m]() for m in e.models}, run / "eval", progress)
        write_json(run / "eval" / "results.json", results)
        return results
    raise AssertionError(stage)


@contextlib.contextmanager
def busy(progress, description: str):
    """A task with no count for a stage that reports no per-item progress: elapsed time on the
    console, a line in log.txt every half minute and at its end."""
    task = progress.add_task(description, total=None, busy=True) if progress is not None else None
    yield
    if task is not None:
        progress.update(task, total=1, completed=1)


# Which stage makes each input of a later stage.
PRODUCER = {"seeds.parquet": "seeds", "pairs.jsonl": "generate", "clean.parquet": "clean",
            "validated.parquet": "validate", "evol.parquet": "evol", "adapter": "train"}


def run_stage(stage: str, cfg: config_mod.Config, run: RunDir, console, progress, force: bool = False) -> dict:
    from repro import card, report

    if stage == "report":  # cheap, and reflects whatever is on disk now
        stats = {"report": str(run / "report.md"), "card": None}
        with busy(progress, "report and dataset card"):
            report.run(run, run / "report.md", cfg.report)
            if (run / "clean.parquet").exists():  # the dataset card (and clean.jsonl) beside the dataset
                stats["card"] = str(card.write_card(run))
        made = f"dataset card → {stats['card']}" if stats["card"] else "[dim]no dataset card: no clean.parquet yet[/]"
        console.print(f"[green]✓[/] report → {run / 'report.md'}; {made}", soft_wrap=True)
        return stats
    settings, inputs, outputs = stage_plan(stage, cfg)
    for name in inputs:
        if not (run / name).exists():
            prev = PRODUCER.get(name, "export")
            var = f" --variant {cfg.variant}" if cfg.variant != "oss" else ""
            raise ReproError(f"{run / name} is missing; run `repro {prev} --profile {cfg.profile}{var}` first "
                             f"(or `repro run --profile {cfg.profile}{var}`)")
    input_digests = {name: digest(run / name) for name in inputs}
    # An input its own stage did not finish (a killed generate leaves a partial pairs.jsonl) is
    # used, since users may bring their own inputs, but not silently: a note once the stage is done
    # (before, it would make a failing stage's one error line two).
    unfinished = [f"[yellow]note[/]: {run / name} was not finished by `repro {maker}` (an interrupted or outside "
                  f"input); rerun `repro {maker} --profile {cfg.profile}` to complete it"
                  for name, d in input_digests.items() if (maker := PRODUCER.get(name))
                  and (run.manifest(maker) or {}).get("outputs", {}).get(name) != d]
    fp = fingerprint(stage, settings, input_digests)
    if not force and run.is_done(stage, fp, outputs):
        console.print(f"[dim]↷ {stage}: up to date, skipped[/]")
        return run.manifest(stage)["stats"]
    if not force and (other := run.reuse(stage, fp, outputs)) is not None:
        console.print(f"[dim]↷ {stage}: the same as in {other.path}, copied from there[/]", soft_wrap=True)
        return run.manifest(stage)["stats"]
    if isinstance(console, TeeConsole):  # the log only: on the console, an error stays one line
        console.log_file.write(f"→ {stage}: started")
    t0 = time.perf_counter()
    try:
        stats = execute(stage, cfg, run, fp, progress)
    finally:
        if isinstance(progress, LoggedProgress):
            progress.log_open_tasks()  # where each of the stage's tasks got to, done or not
    seconds = time.perf_counter() - t0
    run.write_manifest(stage, fp, settings, input_digests, outputs, stats, seconds)
    console.print(f"[green]✓[/] {stage} ({seconds:.1f} s): {summary(stage, stats)}")
    for note in unfinished:
        console.print(note, soft_wrap=True)
    return stats


def summary(stage: str, s: dict) -> str:
    return {
        "seeds": lambda: f"{s['seeds']} seeds from {s['files']} files",
        "generate": lambda: f"{s['pairs']} pairs kept, {s['rejected']} rejected; {s['generated']} answered "
                            f"now ({s['resumed_from']} earlier), {s['completion_tokens']} new tokens, "
                            f"{s['tokens_per_second'] or '-'} tokens/s, {s['wall_seconds']} s",
        "clean": lambda: f"{s['kept']} kept of {s['pairs_in']} ({s['removed_by_reason'] or 'none removed'})",
        "validate": lambda: f"{s['kept']} kept of {s['pairs_in']}: {s['passed']} passed, {s['failed']} failed, "
                            f"{s['timeout']} timed out, {s['no_tests']} without usable tests, {s['not_run']} "
                            f"not testable here; {s['pairs_per_minute']} pairs/min",
        "evol": lambda: f"{s['kept']} evolved pairs kept of {s['evolved']} problems evolved; rejected: "
                        + "".join(f"{n} {why}; " for why, n in s["rejected_by_reason"].items())
                        + f"{s['clean']['pairs_in'] - s['clean']['kept']} by cleaning",
        "train": lambda: f"{s['steps']} steps, loss {s['first_loss']:.3f} → {s['final_loss']:.3f}, "
                         f"{s['tokens_per_second']} tokens/s",
        "export": lambda: f"{s['quant']} GGUF, {s['bytes'] / 2**20:.0f} MiB, loads in llama.cpp; greedy agreement "
                          "with PyTorch: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in
                                                      s.get("roundtrip", {}).get("agreement", {}).items()),
        "evaluate": lambda: "; ".join(
            f"{k} " + ", ".join(f"{b} {v[b]['base']['passed']}/{v[b]['n']}"
                                + (f" (+ {v[b]['plus']['passed']})" if "plus" in v[b] else "")
                                for b in s["benchmarks"]) for k, v in s["models"].items()),
    }[stage]()


# ---------------------------------------------------------------------------------------------
# The console, progress, and runs/<name>/log.txt

LOG_EVERY_S = 30.0  # a progress line per running task in log.txt this often


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class RunLog:
    """`runs/<name>/log.txt`: lines appended with a timestamp, from any thread. It is a record for
    people, not an artifact: no stage reads it, and a kill may leave its last line torn."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            for line in text.splitlines():
                if line.strip():
                    self._f.write(f"{_stamp()} {line.rstrip()}\n")
            self._f.flush()

    def close(self) -> None:
        self._f.close()


def log_error(args, line: str) -> None:
    """A command's last line (its error) into the run directory's log.txt, after the command line
    when the command failed before writing it; never creates the directory (bad settings leave
    nothing behind)."""
    run_dir = run_dir_of(args)
    if run_dir is None or not Path(run_dir).is_dir():
        return
    with contextlib.suppress(OSError):
        log = RunLog(Path(run_dir) / "log.txt")
        if not getattr(args, "logged", False):
            log.write(command_line(args))
        log.write(line)
        log.close()


def command_line(args) -> str:
    return "$ repro " + " ".join(shlex.quote(a) for a in args.argv)


class TeeConsole(Console):
    """The console (stderr; silent with --quiet), every line printed to it also in log.txt as
    plain text. Live-display redraws are not lines and are not logged."""

    def __init__(self, log: RunLog, **kwargs):
        super().__init__(**kwargs)
        self.log_file = log
        self._plain = Console(width=160, color_system=None, highlight=False, emoji=False, soft_wrap=True)

    def print(self, *objects, **kwargs) -> None:
        super().print(*objects, **kwargs)
        if objects and not any(isinstance(o, Control) for o in objects):
            with self._plain.capture() as cap:
                self._plain.print(*objects, **kwargs)
            self.log_file.write(cap.get())


def _rate(speed: float | None) -> str:
    if not speed:
        return "-"
    return f"{speed:.2f}/s" if speed >= 1 else f"{1 / speed:.1f} s each"


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item, for slow items such as the teacher's answers)."""

    def render(self, task: Task) -> Text:
        return Text(_rate(task.finished_speed or task.speed), style="progress.data.speed")


class LoggedProgress(Progress):
    """rich's Progress (hidden with --quiet), and in log.txt each task's count, rate, elapsed time
    and ETA every LOG_EVERY_S seconds while it runs and once when it ends."""

    def __init__(self, *columns, log: RunLog, every: float = LOG_EVERY_S, **kwargs):
        super().__init__(*columns, **kwargs)
        self._log, self._every = log, every
        self._first: dict = {}  # task -> its count when added (a resumed stage starts above 0)
        self._ended: set = set()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def add_task(self, description: str, *args, **kwargs):
        task_id = super().add_task(description, *args, **kwargs)
        self._first[task_id] = self._tasks[task_id].completed
        return task_id

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._end_if_finished(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._end_if_finished(task_id)

    def _end_if_finished(self, task_id) -> None:
        if task_id not in self._ended and self._tasks[task_id].finished:
            self.snapshot(task_id, final=True)

    def snapshot(self, task_id, final: bool = False) -> None:
        with self._lock:
            t = self._tasks.get(task_id)
            if t is None or task_id in self._ended:
                return
            if final:
                self._ended.add(task_id)
            elapsed = t.finished_time if t.finished_time is not None else (t.elapsed or 0.0)
            if t.fields.get("busy"):  # no count to show
                state = "done" if t.finished else "stopped before the end" if final else "running"
                line = f"  {t.description}: {state}, elapsed {_clock(elapsed)}"
            else:
                done_now = t.completed - self._first.get(task_id, 0)
                speed = done_now / elapsed if final and elapsed > 0 else t.speed
                eta = "" if t.finished or t.total is None else \
                    f", eta {_clock(t.time_remaining) if t.time_remaining is not None else '?'}"
                total = "?" if t.total is None else f"{t.total:g}"
                line = (f"  {t.description}: {t.completed:g}/{total} done, {_rate(speed)}, elapsed {_clock(elapsed)}"
                        f"{eta}" + ("" if not final or t.finished else " (stopped before the end)"))
        self._log.write(line)

    def log_open_tasks(self) -> None:
        for task_id in list(self._tasks):
            self.snapshot(task_id, final=True)

    def _tick(self) -> None:
        while not self._stop.wait(self._every):
            for task_id in list(self._tasks):
                self.snapshot(task_id)

    def start(self) -> None:
        super().start()
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="progress-log", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        super().stop()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"



# ---------------------------------------------------------------------------------------------
# Commands


def preflight(cfg: config_mod.Config, stages: list[str]) -> None:
    """Fail on bad settings before anything is written into the run directory."""
    from repro import engine, evaluate, generate, models, seeds, train

    if "seeds" in stages:
        seeds.check_settings(cfg.seeds)          # quotas, mode, counts
        seeds.resolve_sources(cfg.seeds.source)  # source kinds, and that each path exists
    if "generate" in stages:
        generate.check(cfg.generate)             # settings, the teacher's file, the server
    if "clean" in stages or "evol" in stages:
        from repro import clean
        clean.check_settings(cfg.clean)          # benchmark names and paths, methods, n-gram and dedup settings
    if {"validate", "evol"} & set(stages):
        from repro import evol, validate
        generate.check(cfg.generate)             # they ask generate's teacher
        validate.check(cfg.validate) if "validate" in stages else evol.check(cfg.evol)
    if "evaluate" in stages:
        e = cfg.evaluate
        engine.check_settings("evaluate", e.backend, e.parallel, e.n_ctx)
        if e.backend == "openai":
            raise ReproError("evaluate.backend=openai: evaluation runs the GGUF files through llama.cpp; "
                             "use llama-batched or llama")
        unknown = [m for m in e.models if m not in ("base", "finetuned", "teacher")]
        if unknown or not e.models:
            raise ReproError(f"evaluate.models={','.join(e.models)}: choose from base, finetuned, teacher")
    if {"train", "export", "evaluate"} & set(stages):
        check_model_file(cfg.train.student, "train.student")  # a damaged GGUF: one line, before any work
    if "train" in stages:
        train.check_settings(cfg.train)         # backend, CUDA, packages, student, max_len vs template
    if "export" in stages:
        from repro import export
        export.check_settings(cfg.export)       # outtype, quant and round-trip types
    if {"export", "evaluate"} & set(stages):
        models.resolve(cfg.train.student)
    if "evaluate" in stages:
        from repro import evalplus_data
        e = cfg.evaluate
        if "teacher" in e.models:
            check_model_file(teacher_spec(cfg), "evaluate.teacher" if e.teacher else "generate.teacher")
        for b in e.benchmarks:  # names, files and their hashes: before any work
            evalplus_data.load(b, path=getattr(e, f"{b}_path", ""), fetch=e.fetch)
        evaluate.multilingual_sets(e, probe=False)  # MultiPL-E and DS-1000: names, files and hashes too


def check_model_file(spec: str, setting: str) -> None:
    """Resolve a model spec and, for a local GGUF, check its header: a corrupt or truncated file is
    one line naming the setting before anything is written (llama.cpp would say less, later).
    Embedded models are verified by their published hash instead; a checkpoint directory (a
    train.student) is checked by train."""
    from repro import engine, models

    if not spec.startswith("embedded:") and Path(spec).expanduser().is_dir():
        return
    path = models.resolve(spec)
    if not spec.startswith("embedded:"):
        engine.check_gguf(path, setting)


def load_config(args) -> config_mod.Config:
    full = ["evaluate.stride=1", "evaluate.limit=0", "evaluate.multilingual_stride=1"] if getattr(args, "full_eval", False) else []
    cfg = config_mod.load(args.profile, args.set + full)
    cfg.variant = config_mod.check_variant(getattr(args, "variant", None) or "oss")
    return cfg


def run_name(base: str, variant: str) -> str:
    """runs/<base> for the paper's oss variant, runs/<base>-<validated|evol|validated-evol> for the others."""
    slug = config_mod.variant_slug(variant)
    return f"{base}-{slug}" if slug else base


def run_path(args, variant: str) -> Path:
    if getattr(args, "run_dir", None):
        return Path(args.run_dir)
    return ROOT / "runs" / run_name(args.name or args.profile, variant)


def shared_runs(args, variant: str) -> list[RunDir]:
    """The runs whose finished stages a run may copy: --share, else the other variants of the same
    name (runs/<name>, runs/<name>-validated, ...), so variants generate and clean only once."""
    if getattr(args, "share", None):
        return [RunDir(find_run(x)) for x in args.share]
    if getattr(args, "run_dir", None):
        return []
    base = args.name or args.profile
    return [RunDir(ROOT / "runs" / run_name(base, v)) for v in config_mod.VARIANTS if v != variant]


def cmd_stages(args, stages: list[str]) -> int:
    cfg = load_config(args)
    if args.command == "run":
        stages = stages_of(cfg.variant)
    run = RunDir(run_path(args, cfg.variant), share=shared_runs(args, cfg.variant))
    preflight(cfg, stages)
    return drive(args, cfg, run, stages)


def drive(args, cfg: config_mod.Config, run: RunDir, stages: list[str]) -> int:
    """Run `stages` in `run` under its lock, with its log, progress and closing lines."""
    with run.locked():
        log = RunLog(run / "log.txt")
        try:
            log.write(command_line(args))
            args.logged = True
            console = TeeConsole(log, stderr=True, quiet=args.quiet)
            if stages != ["report"]:  # rebuilding a report leaves the run's own settings alone
                write_json(run / "run.json", {"profile": cfg.profile, "variant": cfg.variant, "config": asdict(cfg)})
            # Items done/total, items per second (the stages put tokens/s in the description), ETA.
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
            t0, ran = time.perf_counter(), []
            # A 5-minute window for the rate: the teacher's answers can take a minute each.
            with LoggedProgress(*columns, log=log, console=console, transient=True, disable=args.quiet,
                                speed_estimate_period=300) as progress:
                for stage in stages:
                    before = run.manifest(stage)
                    run_stage(stage, cfg, run, console, progress, force=args.force)
                    ran.append(stage if stage == "report" or run.manifest(stage) != before else f"{stage} (skipped)")
            if "evaluate" in stages or "report" in stages:
                print_results(run, console)
            console.print(f"done in {time.perf_counter() - t0:.1f} s: {', '.join(ran)}; log: {run / 'log.txt'}",
                          style="dim", highlight=False, soft_wrap=True)
        finally:
            log.close()
    return 0


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
    console.print(t)
    console.print(f"report: {run / 'report.md'}")


def cmd_doctor(args) -> int:
    import importlib.metadata as md

    from repro import models, versions
    from repro.export import has_converter
    from repro.train import cpu_has_bf16

    ok = True
    print(f"repro root: {ROOT}")
    for k, v in versions().items():
        print(f"  {k:18} {v or 'MISSING'}")
        ok &= v is not None or k in ("gguf",)
    print(f"cache: {models.cache_dir()}")
    for name, e in models.EMBEDDED.items():
        installed = sum(1 for p in e.packages if _has_dist(md, p))
        f = models.cache_dir() / "models" / f"{name}.gguf"
        state = "assembled" if f.with_suffix(".gguf.verified").exists() else "not assembled"
        print(f"  embedded:{name}: {installed}/{len(e.packages)} chunk packages installed "
              f"(extra `{e.extra}`), {state}")
        if e.extra == "embedded-models" and installed < len(e.packages):
            ok = False
    print(f"  GGUF converters (model, LoRA): {'present' if has_converter() else 'missing (run `repro fetch`)'}")
    print(f"cpu: {os.cpu_count()} cores, bf16 {'yes' if cpu_has_bf16() else 'no'}, "
          f"llama.cpp threads now {models.choose_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    from repro.sandbox import isolation
    iso = isolation()
    print(f"sandbox: {iso['level']} isolation, {'an own uid per run' if iso['uid'] == 'own' else 'runs under our uid'}"
          + (f" ({iso['why']})" if iso["why"] else ""))
    try:
        import torch
        print(f"cuda: {'yes, ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
    except ImportError:
        pass
    return 0 if ok else 1


def _has_dist(md, name: str) -> bool:
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


def cmd_fetch(args) -> int:
    from repro import export, models

    for name, e in models.EMBEDDED.items():
        if e.extra == "embedded-models" or args.all:
            print(f"embedded:{name} → {models.assemble(name)}")
    print(f"GGUF converter → {export.fetch_converter()}")
    return 0


def find_run(spec: str) -> Path:
    """`repro report RUN`: RUN is a directory, else a name under runs/."""
    for p in (Path(spec).expanduser(), ROOT / "runs" / spec):
        if p.is_dir():
            return p
    raise ReproError(f"repro report {spec}: no such run directory (neither {Path(spec).expanduser().resolve()} "
                     f"nor {ROOT / 'runs' / spec}); give a name under runs/ or a run's directory")


def run_dir_of(args) -> Path | None:
    """The run directory a stage command works in (what a failed write without a file name was in)."""
    if getattr(args, "run_dir", None):
        return Path(args.run_dir)
    if args.command == "run" or args.command in STAGES:
        return run_path(args, getattr(args, "variant", None) or "oss")
    if args.command == "ablate":
        return ROOT / "runs" / f"{args.name or args.profile}-ablation"
    return None


def os_error_line(e: OSError, run_dir: Path | None) -> str:
    """An OSError that reached the top as one line: the path, what went wrong, and the fix."""
    import errno

    from repro.artifacts import DISK_FULL, disk_full_error

    path = e.filename if e.filename is not None else run_dir
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    where = str(path) if path is not None else "a file"
    if e.errno in DISK_FULL:
        return str(disk_full_error(where, e))
    what = os.strerror(e.errno) if e.errno else (str(e).splitlines() or [type(e).__name__])[0]
    fix = {errno.EACCES: "give this user access to it (chmod/chown), or point the setting or --run-dir elsewhere",
           errno.EPERM: "give this user access to it (chmod/chown), or point the setting or --run-dir elsewhere",
           errno.EROFS: "choose a --run-dir on a writable filesystem",
           errno.ENOENT: "check the path in the settings (`repro config`) or run the stage that makes it",
           errno.ENOTDIR: "check the path in the settings (`repro config`)",
           errno.EISDIR: "check the path in the settings (`repro config`)"}.get(
        e.errno, "rerun with --debug for the traceback")
    return f"{where}: {what}; {fix}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="repro", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def stage_args(p):
        p.add_argument("--profile", default="tiny", help=f"one of {', '.join(config_mod.PROFILES)}")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a setting, e.g. --set seeds.num_seeds=10 (repeatable)")
        p.add_argument("--name", help="run name (default: the profile's name) → runs/<name>/")
        p.add_argument("--run-dir", help="run directory (overrides --name)")
        p.add_argument("--force", action="store_true", help="rerun even if up to date")
        p.add_argument("--quiet", action="store_true",
                       help="print nothing but errors (runs/<name>/log.txt still gets everything)")
        p.add_argument("--full-eval", action="store_true",
                       help="evaluate every problem of every benchmark "
                            "(evaluate.stride=1, evaluate.multilingual_stride=1, evaluate.limit=0)")
        p.add_argument("--variant", default="oss", metavar="VARIANT",
                       help=f"what the student is trained on: {', '.join(config_mod.VARIANTS)} (default oss, the "
                            "paper's); other variants run in runs/<name>-<validated|evol|validated-evol>/")
        p.add_argument("--share", action="append", metavar="RUN",
                       help="copy finished stages with the same settings and inputs from this run (repeatable; "
                            "default: the other variants' runs of the same name)")

    stage_args(sub.add_parser("run", help="run every stage"))
    for s in STAGES:
        p = sub.add_parser(s, help=f"run the {s} stage")
        stage_args(p)
        if s == "report":
            p.add_argument("run", nargs="?", metavar="RUN",
                           help="rebuild this run's report and dataset card from its artifacts, rerunning "
                                "nothing: a name under runs/ or a directory")
    a = sub.add_parser("ablate", help="train and evaluate every variant at equal training-set size, and compare them")
    stage_args(a)
    a.add_argument("--variants", default=",".join(config_mod.VARIANTS),
                   help="comma-separated variants to compare (default: all four; oss is always included)")
    sub.add_parser("doctor", help="report what is installed, cached and missing")
    f = sub.add_parser("fetch", help="assemble the embedded models and fetch the GGUF converter")
    f.add_argument("--all", action="store_true", help="also the optional 1.5B teacher")
    c = sub.add_parser("config", help="print a profile's resolved settings")
    c.add_argument("--profile", default="tiny")
    c.add_argument("--set", action="append", default=[])
    c.add_argument("--full-eval", action="store_true", help="as the stage commands' --full-eval")

    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore")
    try:
        if args.command == "report" and args.run:
            if args.run_dir or args.name:
                raise ReproError(f"repro report {args.run}: name the run once, as RUN or with --name/--run-dir")
            args.run_dir, args.force = str(find_run(args.run)), True
        if args.command == "run":
            return cmd_stages(args, STAGES)
        if args.command == "ablate":
            from repro import ablation
            return ablation.cmd(args)
        if args.command in STAGES:
            return cmd_stages(args, [args.command])
        if args.command == "doctor":
            return cmd_doctor(args)
        if args.command == "fetch":
            return cmd_fetch(args)
        if args.command == "config":
            print(json.dumps(asdict(load_config(args)), indent=2))
            return 0
    except ReproError as e:
        log_error(args, f"error: {e}")
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        line = os_error_line(e, run_dir_of(args))
        log_error(args, f"error: {line}")
        if args.debug:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        line = "interrupted: finished work is kept; rerun the same command to resume"
        log_error(args, line)
        print(line, file=sys.stderr)
        return 130
    except Exception as e:  # a bug: the traceback goes to the terminal, one line to the log
        log_error(args, f"crashed: {type(e).__name__}: {e}")
        raise
    return 1


if __name__ == "__main__":
    sys.exit(main())
