"""Step 5b: HumanEval pass@1 of the base and the fine-tuned student, through llama.cpp, greedy.

We evaluate the quantized GGUF files users will actually run. Two prompt styles:
- `completion` (a base model): the HumanEval prompt itself; generation stops at the usual
  top-level stop sequences.
- `instruct` (the fine-tuned model): the training template with the instruction "Write a
  solution to the following problem" + the prompt in a code fence, and the response prefilled
  with a code fence and the prompt, as Magicoder evaluates its models; generation stops at the
  closing fence.
Either way the program run is prompt + completion + the problem's tests, in the sandbox.

Outputs: `eval/<model>.samples.jsonl` (one line per problem: the completion, as it is decoded),
`eval/<model>.jsonl` (the same with the program's status, once decoding is done) and
`eval/results.json`.
"""

from __future__ import annotations

import math
from pathlib import Path

from repro import sandbox
from repro.artifacts import DATA_DIR, ReproError, append_jsonl, read_jsonl, resume_jsonl
from repro.benchmarks import humaneval, humaneval_sha256
from repro.config import EvaluateConfig
from repro.train import format_prompt

COMPLETION_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```", "\nassert "]


def build_prompt(problem: dict, style: str) -> tuple[str, list[str]]:
    """The text the model continues, and where to stop it."""
    if style == "completion":
        return problem["prompt"], COMPLETION_STOPS
    if style == "instruct":
        instruction = (DATA_DIR / "prompts" / "eval_instruct.txt").read_text().replace(
            "{prompt}", problem["prompt"].strip())
        return format_prompt(instruction) + "```python\n" + problem["prompt"], ["```"]
    raise ReproError(f"evaluate prompt style {style!r} is unknown; use completion or instruct")


def program(problem: dict, completion: str) -> str:
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a pass rate (sensible at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def evaluate_model(gguf: Path, style: str, cfg: EvaluateConfig, out: Path, fp: str, label: str,
                   progress=None) -> dict:
    """Generate and run one answer per problem, resuming from `out` if it was made with `fp`."""
    from repro.engine import Request, open_engine

    problems = humaneval()[: cfg.limit or None]
    samples = out.with_suffix(".samples.jsonl")
    resume_jsonl([samples, out], out.with_suffix(".resume"), fp)
    generated = {r["task_id"] for r in read_jsonl(samples)}
    todo = [p for p in problems if p["task_id"] not in generated]
    stats, threads = None, None
    task = progress.add_task(f"evaluate {label}", total=len(problems), completed=len(generated)) if progress else None
    if todo:
        requests = (Request(p["task_id"], prompt=text, max_tokens=cfg.max_tokens, stop=stops)
                    for p in todo for text, stops in [build_prompt(p, style)])
        with open_engine(cfg.backend, gguf, n_ctx=cfg.n_ctx, parallel=cfg.parallel, threads=cfg.threads) as engine, \
                open(samples, "a", encoding="utf-8") as f:
            threads = engine.threads
            for c in engine.run(requests):
                append_jsonl(f, {"task_id": c.key, "completion": c.text, "finish_reason": c.finish_reason,
                                 "completion_tokens": c.completion_tokens})
                if progress:
                    tps = engine.stats.tokens_per_second or 0.0
                    progress.update(task, advance=1, description=f"evaluate {label} ({tps:.1f} tok/s)")
            stats = engine.stats
    # Programs run only once decoding is over: a program sharing the 2 cores with llama.cpp's
    # threads made decoding 3x slower (measured), more than the programs themselves cost.
    by_id = {p["task_id"]: p for p in problems}
    executed = {r["task_id"] for r in read_jsonl(out)}
    pending = [r for r in read_jsonl(samples) if r["task_id"] not in executed]
    if pending:
        run_task = progress.add_task(f"run {label}'s programs", total=len(pending)) if progress else None
        with open(out, "a", encoding="utf-8") as f:
            for r in pending:
                res = sandbox.run_python(program(by_id[r["task_id"]], r["completion"]), timeout_s=cfg.timeout_s)
                append_jsonl(f, {**r, "status": res.status, "output": res.output[-2000:]})
                if progress:
                    progress.update(run_task, advance=1)
    rows = read_jsonl(out)
    k, n = sum(r["status"] == "passed" for r in rows), len(rows)
    lo, hi = wilson(k, n)
    return {"model": str(gguf), "prompt_style": style, "passed": k, "n": n, "pass@1": k / n if n else 0.0,
            "ci95": [lo, hi], "timeouts": sum(r["status"] == "timeout" for r in rows),
            "tokens_per_second": round(stats.tokens_per_second, 1) if stats and stats.seconds else None,
            "threads": threads, "backend": cfg.backend, "parallel": cfg.parallel}


def run(cfg: EvaluateConfig, models: dict[str, tuple[Path, str]], out_dir: Path, fp: str,
        progress=None) -> dict:
    """`models`: label -> (gguf path, prompt style)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"benchmark": "humaneval", "data_sha256": humaneval_sha256(), "max_tokens": cfg.max_tokens,
               "limit": cfg.limit or len(humaneval()), "models": {}}
    for label, (gguf, style) in models.items():
        results["models"][label] = evaluate_model(gguf, style, cfg, out_dir / f"{label}.jsonl",
                                                  fp, label, progress)
    return results
