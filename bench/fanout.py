"""Throughput of the `openai` backend over 1, 2 and 4 endpoints of fixed per-request latency.

    .venv/bin/python bench/fanout.py [--endpoints 1,2,4] [--delay 0.2] [--parallel 4]
                                     [--requests 200] [--rounds 3]

Each endpoint is tests/test_fanout.py's `Stub` (an OpenAI-compatible server of our own making)
in a process of its own, answering every chat request after `--delay` seconds whatever else it
has in flight: a server whose latency does not grow with load, so the figure is the engine's
(routing, threads, the openai client), not a model's. Per endpoint count N, `--requests` chat
requests go through `OpenAIEngine` with `--parallel` in flight per endpoint; the counts are
interleaved round by round so a change in the machine's load hits them alike, and the median
round is printed: requests/s, the ideal N × parallel / delay, and the ratio to N × the one-endpoint
figure (the target: ≥ 0.9 at N = 4). It does not measure a real model's server, where one
request's latency depends on the others in flight.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from repro.engine import Request, Server, open_engine  # noqa: E402


def serve(delay: float, conn, stop) -> None:
    """A child process: one stub server; sends its URL, serves until `stop` is set."""
    from test_fanout import Stub

    with Stub(delay) as s:
        conn.send(s.url)
        stop.wait()


def once(urls: list[str], n: int, parallel: int) -> tuple[float, list[int]]:
    """(requests per second, requests sent to each endpoint) for n requests."""
    reqs = [Request(f"k{i}", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=8) for i in range(n)]
    with open_engine("openai", None, parallel=parallel, server=Server(",".join(urls), retries=0)) as e:
        t = time.perf_counter()
        got = list(e.run(iter(reqs)))
        seconds = time.perf_counter() - t
        bad = [c for c in got if c.finish_reason != "stop"]
        if len(got) != n or bad:
            raise SystemExit(f"fanout: {len(got)} answers for {n} requests, {len(bad)} not stop "
                             f"({bad[0].error if bad else ''})")
        return n / seconds, [ep.sent for ep in e.endpoints]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", default="1,2,4")
    ap.add_argument("--delay", type=float, default=0.2, help="seconds each stub takes per request")
    ap.add_argument("--parallel", type=int, default=4, help="requests in flight per endpoint")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    counts = [int(x) for x in args.endpoints.split(",")]
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    procs, urls = [], []
    for _ in range(max(counts)):
        here, there = ctx.Pipe()
        p = ctx.Process(target=serve, args=(args.delay, there, stop), daemon=True)
        p.start()
        procs.append(p)
        urls.append(here.recv())
    try:
        once(urls[:1], 8, args.parallel)  # warm up: imports, first connections
        rates: dict[int, list[float]] = {n: [] for n in counts}
        spread: dict[int, list[int]] = {}
        for r in range(args.rounds):
            for n in counts:
                rate, spread[n] = once(urls[:n], args.requests, args.parallel)
                rates[n].append(rate)
                print(f"round {r + 1}, {n} endpoint(s): {rate:.1f} requests/s", flush=True)
    finally:
        stop.set()
        for p in procs:
            p.join(5)
    one = statistics.median(rates[counts[0]]) / counts[0]
    print(f"\n{args.requests} requests, {args.parallel} in flight per endpoint, {args.delay * 1000:.0f} ms each, "
          f"median of {args.rounds} rounds")
    print("| endpoints | requests/s | ideal | × (N × one endpoint) | sent to each (last round) |")
    print("| --- | --- | --- | --- | --- |")
    for n in counts:
        med = statistics.median(rates[n])
        print(f"| {n} | {med:.1f} | {n * args.parallel / args.delay:.0f} | {med / (n * one):.2f} | "
              f"{', '.join(map(str, spread[n]))} |")


if __name__ == "__main__":
    main()
