"""Structured (JSON-schema grammar) answers vs free text: parse rate and speed, same seeds, same run.

    .venv/bin/python bench/structured.py [--model embedded:qwen2.5-coder-0.5b-instruct-q4_k_m]
                                         [--seeds 16] [--max-tokens 1024] [--backend llama-batched]
                                         [--parallel 8]

Both modes go through what `repro generate` runs: the OSS-Instruct template around 1-15 line
stdlib snippets (bench/teacher.py's, fixed seed), greedy, the same engine and the same checks
(`generate.judge`). Free text must show both headings; structured (`generate.structured=json`)
gets one sentence more in the prompt and a grammar that forces {"problem": str, "solution": str},
and must parse as that JSON. Prints, per mode: answers parsed, why the others were rejected,
answer tokens, decode tokens/s and wall time. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from teacher import snippets  # noqa: E402

from repro import generate  # noqa: E402
from repro.config import GenerateConfig  # noqa: E402
from repro.engine import Request, open_engine  # noqa: E402
from repro.models import resolve  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=GenerateConfig().teacher)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=1024, help="0 = the paper's min(2500, n_ctx - prompt)")
    ap.add_argument("--backend", default="llama-batched", choices=["llama-batched", "llama"])
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    system, user = generate.load_prompt("oss_instruct.txt")
    seeds = snippets(args.seeds)
    # Halves in the order free, json, json, free (ABBA): a machine whose load drifts during the
    # run then weighs on both modes alike.
    half = (len(seeds) + 1) // 2
    parts = {"": [], "json": []}
    with open_engine(args.backend, resolve(args.model), n_ctx=2048, parallel=args.parallel,
                     threads=args.threads) as engine:
        for mode, lo, hi in (("", 0, half), ("json", 0, half), ("json", half, len(seeds)), ("", half, len(seeds))):
            cfg = GenerateConfig(max_tokens=args.max_tokens, structured=mode)
            reqs = []
            for i in range(lo, hi):
                f = generate.fit(engine.tokenizer, cfg, system, user, "Python", seeds[i])
                reqs.append(Request(f"p{i}", messages=f.messages, max_tokens=generate.max_new_tokens(cfg, f.prompt_tokens),
                                    json_schema=generate.ANSWER_SCHEMA if mode else None))
            before = (engine.stats.completion_tokens, engine.stats.decode_seconds)
            t0 = time.perf_counter()
            verdicts = [generate.judge(c.text, c.finish_reason, mode) for c in engine.run(reqs)]
            wall = time.perf_counter() - t0
            parts[mode].append((verdicts, engine.stats.completion_tokens - before[0],
                                engine.stats.decode_seconds - before[1], wall))
            print(f"  {mode or 'free text'} seeds {lo}-{hi - 1}: {wall:.1f} s", flush=True)
        threads = engine.threads
    rows = [(mode or "free text", [v for p in ps for v in p[0]], sum(p[1] for p in ps), sum(p[2] for p in ps),
             sum(p[3] for p in ps)) for mode, ps in parts.items()]
    print(f"\nmodel {args.model}; {len(seeds)} seeds; {args.backend} x{args.parallel}, {threads} threads; "
          f"greedy, up to {args.max_tokens or 'min(2500, n_ctx - prompt)'} new tokens")
    print("| mode | parsed | rejected (why) | answer tokens | tokens/answer | decode tok/s | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode, verdicts, tokens, decode_s, wall in rows:
        ok = sum(not isinstance(v, str) for v in verdicts)
        why = Counter(v for v in verdicts if isinstance(v, str))
        print(f"| {mode} | {ok}/{len(verdicts)} | {', '.join(f'{k}: {v}' for k, v in why.items()) or '-'} | "
              f"{tokens} | {tokens / len(verdicts):.0f} | {tokens / decode_s if decode_s else 0:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
