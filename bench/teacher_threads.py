"""Teacher decode speed with 1 thread vs all cores, side by side, idle and under load.

    .venv/bin/python bench/teacher_threads.py [--model embedded:qwen2.5-coder-0.5b-instruct-q4_k_m]

Why: on a 2-core machine 2 llama.cpp threads are fastest when idle but collapse when another
process shares the cores; `repro.models.choose_threads` picks the thread count from the load.
This prints tokens/s for each case and the ratios, in one run, so the choice can be rechecked
on any machine. The load is one busy Python process per core minus one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

from repro.models import load_llama, resolve

PROMPT = [{"role": "user", "content": "Write a Python function that merges two sorted lists, with a docstring."}]


def spin(stop):
    while not stop.is_set():
        pass


def tokens_per_second(llm, n_tokens: int) -> float:
    llm.reset()
    t0 = time.perf_counter()
    out = llm.create_chat_completion(messages=PROMPT, max_tokens=n_tokens, temperature=0.0)
    return out["usage"]["completion_tokens"] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:qwen2.5-coder-0.5b-instruct-q4_k_m")
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    path = resolve(args.model)
    results = {}
    for load in (False, True):
        stop = mp.Event()
        procs = [mp.Process(target=spin, args=(stop,)) for _ in range(max(1, cores - 1))] if load else []
        for p in procs:
            p.start()
        for threads in sorted({1, cores}):
            llm = load_llama(path, n_ctx=1024, threads=threads)
            tokens_per_second(llm, 8)  # warm-up
            results[(load, threads)] = tokens_per_second(llm, args.tokens)
            del llm
        stop.set()
        for p in procs:
            p.join()
    print(f"model {args.model}, {cores} cores, {args.tokens} new tokens, greedy")
    print("| machine | 1 thread | %d threads | ratio %d/1 |" % (cores, cores))
    print("| --- | --- | --- | --- |")
    for load in (False, True):
        one, many = results[(load, 1)], results[(load, cores)]
        print(f"| {'loaded' if load else 'idle'} | {one:.1f} tok/s | {many:.1f} tok/s | {many / one:.2f} |")


if __name__ == "__main__":
    main()
