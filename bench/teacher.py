"""Teacher throughput: the one-at-a-time `llama` backend vs `llama-batched` at 1, 2, 4, 8 sequences.

    .venv/bin/python bench/teacher.py [--model embedded:qwen2.5-coder-0.5b-instruct-q4_k_m]
                                      [--prompts 32] [--max-tokens 96] [--parallel 1,2,4,8]

Same model, same prompts (real OSS-Instruct prompts: our template around 1-15 line snippets cut
from this interpreter's standard library with a fixed seed), same run. Prints decode tokens/s,
prompt tokens/s, wall time, the ratio of each to the `llama` reference, and how many greedy
answers are identical to the reference's (batched float sums may differ, see docs/generate.md).
Run it on an otherwise idle machine: other processes on the cores change every figure.
"""

from __future__ import annotations

import argparse
import os
import random
import sysconfig
import time
from pathlib import Path

from repro.engine import Request, open_engine
from repro.generate import load_prompt, render
from repro.models import resolve


def snippets(n: int, seed: int = 0) -> list[str]:
    """n seeds cut as the paper does: a random file, a uniform start line, 1-15 lines."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    rng, out = random.Random(seed), []
    while len(out) < n:
        lines = rng.choice(files).read_text(encoding="utf-8", errors="replace").splitlines()
        if not lines:
            continue
        start = rng.randrange(len(lines))
        out.append("\n".join(lines[start:start + rng.randint(1, 15)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:qwen2.5-coder-0.5b-instruct-q4_k_m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--parallel", default="1,2,4,8")
    ap.add_argument("--threads", type=int, default=0, help="0 = choose from the load, as the pipeline does")
    args = ap.parse_args()
    system, user = load_prompt("oss_instruct.txt")
    reqs = [Request(f"p{i}", messages=[{"role": "system", "content": system},
                                       {"role": "user", "content": render(user, "Python", s)}],
                    max_tokens=args.max_tokens) for i, s in enumerate(snippets(args.prompts))]
    path = resolve(args.model)
    runs = [("llama", 1)] + [("llama-batched", int(p)) for p in args.parallel.split(",")]
    rows, texts = [], {}
    for backend, parallel in runs:
        with open_engine(backend, path, n_ctx=2048, parallel=parallel, threads=args.threads) as e:
            t0 = time.perf_counter()
            out = {c.key: c.text for c in e.run(reqs)}
            wall = time.perf_counter() - t0
            rows.append((backend, parallel, e.threads, e.stats, wall))
        texts[(backend, parallel)] = out
        print(f"  {backend} x{parallel}: {wall:.1f} s", flush=True)
    ref_stats, ref_wall, ref_text = rows[0][3], rows[0][4], texts[("llama", 1)]
    print(f"\nmodel {args.model}; {len(reqs)} prompts ({ref_stats.prompt_tokens} prompt tokens), "
          f"greedy, up to {args.max_tokens} new tokens each; {len(os.sched_getaffinity(0))} cores")
    print("| backend | sequences | threads | decode tok/s | × llama | prompt tok/s | wall s | × llama "
          "| answers identical to llama |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for backend, parallel, threads, st, wall in rows:
        same = sum(texts[(backend, parallel)][k] == ref_text[k] for k in ref_text)
        print(f"| {backend} | {parallel} | {threads} | {st.decode_tokens_per_second:.1f} | "
              f"{st.decode_tokens_per_second / ref_stats.decode_tokens_per_second:.2f} | "
              f"{st.prompt_tokens_per_second:.0f} | {wall:.1f} | {ref_wall / wall:.2f} | {same}/{len(ref_text)} |")


if __name__ == "__main__":
    main()
