"""What the sandbox's isolation costs per run: a trivial Python program at each isolation level,
and in a warm worker's forked child (repro/eval/worker.py, on namespaces: what the harness uses by
default), side by side in one run, and the ratios. The harness runs one sandboxed program per
sample and split, so this start-up cost is most of the time of a sample that fails at once.

    .venv/bin/python bench/sandbox.py [--runs 40]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repro import sandbox  # noqa: E402
from repro.eval import harness, worker  # noqa: E402


def per_run(level: str, runs: int) -> list[float]:
    os.environ.pop("REPRO_SANDBOX", None)
    if level == "process":
        os.environ["REPRO_SANDBOX"] = "process"
    sandbox.isolation.cache_clear()
    info = sandbox.isolation()
    if info["level"] != ("process" if level == "process" else "namespaces"):
        print(f"{level}: not available here ({info['why']})")
        return []
    pool = None
    if level == "warm":
        if why := worker.available():
            print(f"warm: not available here ({why})")
            return []
        pool = worker.Pool(1, harness.PRELOAD)
        pool.run_python("print(1)")  # the worker's own start is paid once per evaluation, not per run
    times = []
    try:
        for _ in range(runs):
            t = time.perf_counter()
            r = (pool.run_python if pool else sandbox.run_python)("print(1)")
            times.append(time.perf_counter() - t)
            assert r.status == "passed", r.output
    finally:
        if pool:
            assert pool.restarts == 0
            pool.close()
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores, uid {os.geteuid()}")
    res = {}
    for level in ("process", "namespaces", "warm") * 2:  # interleaved against drift
        res.setdefault(level, []).extend(per_run(level, args.runs // 2))
    for level, t in res.items():
        if t:
            print(f"{level:11s} median {1000 * statistics.median(t):.1f} ms per run ({len(t)} runs)")
    med = {k: statistics.median(t) for k, t in res.items() if t}
    for a, b in (("namespaces", "process"), ("warm", "namespaces"), ("warm", "process")):
        if a in med and b in med:
            print(f"ratio {a}/{b}: {med[a] / med[b]:.2f}")


if __name__ == "__main__":
    main()
