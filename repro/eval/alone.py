"""Evaluate one model, or judge one samples file, outside a pipeline run, as EvalPlus users do.

    repro evaluate --model embedded:qwen2.5-coder-0.5b-instruct-q4_k_m --style chat
    repro evaluate --model Qwen/Qwen2.5-Coder-1.5B          # a transformers checkpoint (or a folder)
    repro evaluate --model openai:http://localhost:8000/v1   # vLLM, SGLang, llama-server: completion prompts
    repro evaluate --samples samples.jsonl                  # {task_id, solution | completion} per line

A model goes through the same code as the pipeline's evaluate stage (`evaluate.run`: the same
prompts, stops, sandbox and intervals, the `evaluate.*` settings of `--profile`); its results
go to `runs/eval-<model>/` (`--name`/`--run-dir` choose another place). A transformers checkpoint
is converted to GGUF once, by llama.cpp's converter, quantized to `export.quant` (as the pipeline
quantizes its students), and kept in the cache. A samples file is judged with EvalPlus's rules
(repro/eval/harness.py): its benchmark is found from the task ids; results are written beside it
as `<file>_eval_results.json`, the name EvalPlus uses.

A server is asked with completion prompts only: the instruct and chat styles prefill the answer,
which needs the served model's own template here.

It does not compare models (the pipeline's report does), sample (greedy decoding only), or
judge MultiPL-E or DS-1000 samples files (their programs are built by the stage itself).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from repro.artifacts import ReproError, atomic_path, write_json
from repro.config import Config
from repro.eval import evaluate, evalplus_data

STYLES = evaluate.STYLES
ENDPOINT = "openai:"


def slug(spec: str) -> str:
    """A folder name for a model spec: its last meaningful part, in safe characters."""
    name = spec.removeprefix(ENDPOINT).removeprefix("embedded:").removeprefix("hf://").rstrip("/")
    name = re.sub(r"^https?://", "", name) if spec.startswith(ENDPOINT) else name.rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80] or "model"


def target(spec: str, cfg: Config):
    """What `evaluate.run` decodes with: a GGUF path, or an `engine.Server` for `openai:<base_url>`
    (`generate.model_name`, `generate.api_key_env` and the retry settings apply to it)."""
    from repro import models

    if spec.startswith(ENDPOINT):
        import dataclasses

        from repro.generate import server

        url = spec.removeprefix(ENDPOINT)
        return dataclasses.replace(server(dataclasses.replace(cfg.generate, base_url=url)), section="evaluate")
    if models.is_checkpoint(spec):
        return converted(spec, cfg)
    path = models.resolve(spec)
    if not spec.startswith("embedded:"):
        models.check_gguf(path, "--model")
    return path


def converted(spec: str, cfg: Config) -> Path:
    """A transformers checkpoint as a GGUF quantized to `export.quant`, made once and cached by
    the checkpoint's identity."""
    from repro import export, models
    from repro.artifacts import cache_lock, fingerprint

    export.check_settings(cfg.export)
    key = fingerprint("converted", models.model_id(spec), cfg.export.outtype, cfg.export.quant)[:16]
    out = models.cache_dir() / "converted" / f"{slug(spec)}-{key}-{cfg.export.quant.lower()}.gguf"
    if out.is_file():
        return out
    src = models.checkpoint_dir(spec, "--model")
    # Another process converting the same checkpoint is waited for: both would write `unquantized`.
    with cache_lock(out):
        if out.is_file():
            return out
        unquantized = out.with_name(out.stem + f".{cfg.export.outtype}.tmp.gguf")
        try:
            export.convert(src, unquantized, cfg.export.outtype)
            with atomic_path(out) as tmp:
                export.quantize(unquantized, tmp, cfg.export.quant, out.with_suffix(".log"))
                models.check_gguf(tmp, "--model")
        finally:
            unquantized.unlink(missing_ok=True)
    return out


def check(cfg: Config, spec: str, style: str) -> None:
    """Refuse a bad model spec, style or setting before anything is written."""
    from repro import models

    if style not in STYLES:
        raise ReproError(f"--style {style}: choose one of {', '.join(STYLES)}")
    if spec.startswith(ENDPOINT):
        if not re.match(r"https?://", spec.removeprefix(ENDPOINT)):
            raise ReproError(f"--model {spec}: expected openai:http://host:port/v1 (an OpenAI-compatible server)")
        if style != "completion":
            raise ReproError(f"--model {spec} --style {style}: a server is evaluated with --style completion (the "
                             f"{style} style prefills the answer, which needs the served model's template here)")
    elif models.is_checkpoint(spec):
        if Path(spec).expanduser().is_dir():
            models.checkpoint_dir(spec, "--model")  # config.json is there
    else:
        target(spec, cfg)  # resolves and checks the GGUF's header
    evaluate.check_data(cfg.evaluate)


def run_model(cfg: Config, spec: str, style: str, out_dir: Path, progress=None) -> dict:
    """Evaluate one model with the profile's evaluate settings; write `results.json` in `out_dir`."""
    check(cfg, spec, style)
    label = slug(spec)
    results = evaluate.run(cfg.evaluate, {label: (target(spec, cfg), style)}, out_dir / "eval", progress)
    results["spec"], results["label"] = spec, label
    write_json(out_dir / "eval" / "results.json", results)
    return results


def benchmark_of(task_ids: list[str], path: Path) -> str:
    """HumanEval or MBPP, from the samples' task ids (as EvalPlus names them)."""
    kinds = {"humaneval" if t.startswith("HumanEval/") else "mbpp" if t.startswith("Mbpp/") else "?"
             for t in task_ids}
    if kinds == {"humaneval"} or kinds == {"mbpp"}:
        return kinds.pop()
    raise ReproError(f"--samples {path}: task ids must all be HumanEval/<n> or all Mbpp/<n> "
                     f"(found {', '.join(sorted(kinds))}); split the file by benchmark")


def read_samples(path: Path) -> list[dict]:
    """EvalPlus's samples: one JSON object per line with task_id and solution or completion (the
    last line may lack its newline: this is a user's file, not one of our stores)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReproError(f"--samples {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReproError(f"--samples {path}: cannot be read as UTF-8 text ({type(e).__name__})") from None
    rows, bad = [], 0
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            r = None
        if not isinstance(r, dict) or not isinstance(r.get("task_id"), str) \
                or not isinstance(r.get("solution", r.get("completion")), str):
            bad = bad or i
        rows.append(r)
    if not rows or bad:
        raise ReproError(f"--samples {path}: {f'line {bad}' if bad else 'no samples'}: each line must be a JSON "
                         "object with task_id and solution (or completion), as EvalPlus's samples.jsonl")
    return rows


def judge_samples(cfg: Config, path: Path) -> dict:
    """Judge a samples file (one or more samples per task); pass@1 over the first sample of each
    task, with its Wilson interval, base and plus tests. Writes `<file>_eval_results.json`."""
    from repro.eval import harness

    path = Path(path)
    rows = read_samples(path)
    name = benchmark_of([r["task_id"] for r in rows], path)
    e = cfg.evaluate
    bench = evalplus_data.load(name, path=getattr(e, f"{name}_path"), fetch=e.fetch)
    unknown = sorted({r["task_id"] for r in rows} - set(bench.problems))
    if unknown:
        raise ReproError(f"--samples {path}: {len(unknown)} task ids are not in {name} {bench.version} "
                         f"(first: {unknown[0]})")
    ids = list(dict.fromkeys(r["task_id"] for r in rows))
    gt = harness.ground_truth(bench, workers=e.workers, task_ids=ids) if bench.plus else None
    ev = harness.evaluate_samples(bench, rows, gt=gt, workers=e.workers)
    out = path.with_name(path.name.removesuffix(".jsonl") + "_eval_results.json")
    write_json(out, ev)
    s = evaluate._summary(ev, ids)  # the stage's own pass@1 of each task's first sample, base and plus
    return {"benchmark": name, "version": bench.version, "tasks": len(ids), "samples": len(rows),
            "of": len(bench.problems), "results": str(out), **{k: s[k] for k in ("base", "plus") if k in s}}


def lines(results: dict) -> list[str]:
    """The console summary of `run_model`'s or `judge_samples`'s result."""
    def pct(x):
        return f"{100 * x['pass@1']:.1f}% ({100 * x['ci95'][0]:.0f}–{100 * x['ci95'][1]:.0f})"

    if "benchmark" in results:  # a samples file
        out = [f"{results['benchmark']} {results['version']}: {results['tasks']} of {results['of']} tasks, "
               f"pass@1 {pct(results['base'])}"]
        if "plus" in results:
            out[0] += f", {results['benchmark']}+ {pct(results['plus'])}"
        return out + [f"details: {results['results']}"]
    out = []
    for label, m in results["models"].items():
        for b, info in results["benchmarks"].items():
            s = m.get(b) or {}
            if s.get("base"):
                out.append(f"{label} {b}: {info['n']} of {info['of']} problems, pass@1 {pct(s['base'])}"
                           + (f", plus {pct(s['plus'])}" if s.get("plus") else ""))
        for name, s in m.items():
            if name.startswith("multipl-e/") or name == "ds1000":
                if isinstance(s, dict) and s.get("base"):
                    out.append(f"{label} {name}: pass@1 {pct(s['base'])}")
    return out
