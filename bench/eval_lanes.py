"""evaluate's answers one model at a time (`evaluate.lanes=1`) vs in lanes (the default), one run.

    .venv/bin/python bench/eval_lanes.py [--profile tiny] [--run runs/tiny] [--lanes 0]

Why: on a 2-core CPU llama.cpp decodes a small model only 1.5-1.6x as fast on two threads as on
one, so the evaluate stage decodes its models side by side, each on its share of the threads
(repro/eval/lanes.py). This decodes the profile's HumanEval(+) and MBPP(+) problems (its stride
and limit) for the rows `repro run` evaluates, first one model after another (each on every
thread), then in lanes, with `repro.eval.evaluate.run` itself and its answer cache off (answers
go to a temporary folder, so both passes decode everything). Prints each pass's wall time, the
ratio, and whether every answer and pass@1 figure is the same in both.

Rows: the base student on both prompts and the teacher; the fine-tuned student too with `--run`
(its exported GGUF, `model-<quant>.gguf`). Both passes run in this process, so they share the
machine's state; run it on an otherwise idle machine. The programs are judged in both passes
(seconds); the times are the whole `evaluate.run`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from repro import config as config_mod
from repro import models
from repro.artifacts import read_jsonl
from repro.eval import evaluate
from repro.pipeline import teacher_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny", help="whose evaluate settings (stride, limit, parallel, ...)")
    ap.add_argument("--run", default="", help="a run folder: its fine-tuned GGUF is evaluated too")
    ap.add_argument("--lanes", type=int, default=0, help="the lanes pass's evaluate.lanes (0 = one per thread)")
    args = ap.parse_args()
    cfg = config_mod.load(args.profile)
    e = replace(cfg.evaluate, cache=False, multilingual=[])
    base = models.resolve(cfg.train.student)
    rows = {"base": (base, e.base_prompt), "base-instruct": (base, e.tuned_prompt)}
    if args.run:
        rows["finetuned"] = (Path(args.run) / f"model-{cfg.export.quant}.gguf", e.tuned_prompt)
    rows["teacher"] = (models.resolve(teacher_spec(cfg)), e.teacher_prompt)
    passes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, lanes in (("one model at a time", 1), ("lanes", args.lanes)):
            out = Path(tmp) / str(lanes)
            t0 = time.perf_counter()
            res = evaluate.run(replace(e, lanes=lanes), rows, out)
            passes[name] = (time.perf_counter() - t0, res, {
                (label, b): read_jsonl(out / label / b / "samples.jsonl") for label in rows for b in e.benchmarks})
    (t1, r1, s1), (t2, r2, s2) = passes.values()
    n = sum(len(v) for v in s1.values())
    print(f"{n} answers: {', '.join(rows)} on {', '.join(e.benchmarks)} (stride {e.stride}, "
          f"MBPP {e.mbpp_stride or e.stride}), parallel {e.parallel}")
    for name, (t, res, _) in passes.items():
        per = ", ".join(f"{k} {v['threads']} threads {v['tokens_per_second']} tok/s" for k, v in res["models"].items())
        print(f"  {name:20s} {t:7.1f} s   lanes {res['lanes']}: {per}")
    print(f"  time lanes / one at a time: {t2 / t1:.2f}")
    differ = [(k, i) for k in s1 for i, (a, b) in enumerate(zip(s1[k], s2[k])) if a["answer"] != b["answer"]]
    print(f"  answers that differ: {len(differ)} of {n}" + "".join(f"\n    {k} #{i}" for k, i in differ))
    rates = lambda r: {(m, b): (v[b]["base"]["passed"], v[b].get("plus", {}).get("passed"))  # noqa: E731
                       for m, v in r["models"].items() for b in e.benchmarks}
    print(f"  pass@1 (base, plus) the same in both: {rates(r1) == rates(r2)}")


if __name__ == "__main__":
    main()
