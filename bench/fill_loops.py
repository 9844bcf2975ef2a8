"""Filling verbatim loops (`evaluate.fill_loops`) against decoding every token, one run.

    .venv/bin/python bench/fill_loops.py [--fill-loops 160] [--profile tiny] [--styles completion,instruct]
                                         [--model embedded:gemma-3-270m-q4_k_m] [--out answers.json]

Why: the 270M student falls into a verbatim loop in about one answer in four and stays in it to
the 512-token limit; `fill_loops` repeats such a loop instead of decoding it. That is only worth
having if the filled answers are the ones decoding gives. This decodes the profile's HumanEval(+)
and MBPP(+) problems (its stride and limit) with the student's base GGUF, in each prompt style of
`--styles` (completion: the base row; instruct: the control row), as `repro evaluate` asks for
them (prompts, stops, max_tokens, parallel, threads), first decoding every token, then with
`--fill-loops`. Prints each side's wall time and decoded tokens, the ratio of the times, how many
answers were filled, and how many filled answers equal the decoded ones (text, finish reason,
token count); lists those that differ with the token where they part.

Both passes run in this process on one engine setting, so they share the machine's state; run it
on an otherwise idle machine. Greedy decoding in a batch can differ from itself only where a
sequence's batch neighbours differ (docs/generate.md); an answer filled early frees its sequence
sooner, so the passes' batches differ a little, and the unfilled answers are compared too.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from repro import config as config_mod
from repro.engine import Request, open_engine
from repro.eval import evalplus_data
from repro.eval.evaluate import build_request, select
from repro.models import resolve


def decode(path, cfg, todo, fill_loops: int) -> tuple[dict, float, object]:
    reqs = []
    for key, (bench, problem, style) in todo.items():
        f = build_request(bench, problem, style)
        reqs.append(Request(key, prompt=f.get("prompt", ""), messages=f.get("messages"), prefill=f.get("prefill", ""),
                            stop=f["stop"], max_tokens=cfg.max_tokens, fill_loops=fill_loops))
    with open_engine(cfg.backend, path, n_ctx=cfg.n_ctx, parallel=cfg.parallel, threads=cfg.threads,
                     n_gpu_layers=cfg.n_gpu_layers, flash_attn=cfg.flash_attn, section="evaluate") as e:
        t0 = time.perf_counter()
        out = {c.key: c for c in e.run(reqs)}
        return out, time.perf_counter() - t0, e.stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fill-loops", type=int, default=160)
    ap.add_argument("--profile", default="tiny", help="whose evaluate settings (stride, limit, parallel, ...)")
    ap.add_argument("--styles", default="completion,instruct")
    ap.add_argument("--model", default=config_mod.STUDENT_270M)
    ap.add_argument("--out", default="", help="write both passes' answers here (JSON)")
    args = ap.parse_args()
    cfg = replace(config_mod.load(args.profile).evaluate, fill_loops=0)
    todo = {}
    for b in cfg.benchmarks:
        bench = evalplus_data.load(b, path=getattr(cfg, f"{b}_path"), fetch=cfg.fetch)
        for style in args.styles.split(","):
            for t in select(bench.problems, cfg, b):
                todo[f"{style}|{t}"] = (b, bench.problems[t], style)
    path = resolve(args.model)
    full, t_full, s_full = decode(path, cfg, todo, 0)
    fill, t_fill, s_fill = decode(path, cfg, todo, args.fill_loops)
    same = lambda a, b: (a.text, a.finish_reason, a.completion_tokens) == (b.text, b.finish_reason, b.completion_tokens)
    filled = [k for k, c in fill.items() if c.filled]
    differ = [k for k in todo if not same(full[k], fill[k])]
    print(f"{len(todo)} answers ({args.styles} on {', '.join(cfg.benchmarks)}; stride {cfg.stride}), "
          f"parallel {cfg.parallel}, {s_full.completion_tokens} answer tokens decoded in full")
    print(f"  decode every token: {t_full:7.1f} s  {s_full.completion_tokens:6d} tokens decoded")
    print(f"  fill_loops={args.fill_loops:<4d}:   {t_fill:7.1f} s  {s_fill.completion_tokens:6d} tokens decoded, "
          f"{s_fill.filled_tokens} filled in {len(filled)} answers")
    print(f"  time filled / full: {t_fill / t_full:.2f}")
    print(f"  filled answers equal to the decoded ones: {sum(k not in differ for k in filled)} of {len(filled)}; "
          f"answers not filled that differ anyway: {sum(k not in filled for k in differ)} of {len(todo) - len(filled)}")
    for k in differ:
        a, b = full[k].text, fill[k].text
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"    {k}: {'filled' if k in filled else 'not filled'}; differ from character {at} "
              f"({full[k].finish_reason} / {fill[k].finish_reason}): {a[at:at + 40]!r} vs {b[at:at + 40]!r}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({k: {"full": full[k].__dict__, "filled": fill[k].__dict__} for k in todo}, f)


if __name__ == "__main__":
    main()
