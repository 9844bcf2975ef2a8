"""What the sandbox's isolation costs per run: a trivial Python program at each isolation level,
side by side in one run, and the ratio. The harness runs one sandboxed program per sample and
split, so this start-up cost is most of the time of a sample that fails at once.

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


def per_run(level: str, runs: int) -> list[float]:
    os.environ.pop("REPRO_SANDBOX", None)
    if level == "process":
        os.environ["REPRO_SANDBOX"] = "process"
    sandbox.isolation.cache_clear()
    info = sandbox.isolation()
    if info["level"] != level:
        print(f"{level}: not available here ({info['why']})")
        return []
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = sandbox.run_python("print(1)")
        times.append(time.perf_counter() - t)
        assert r.status == "passed", r.output
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores, uid {os.geteuid()}")
    res = {}
    for level in ("process", "namespaces", "process", "namespaces"):  # interleaved against drift
        res.setdefault(level, []).extend(per_run(level, args.runs // 2))
    for level, t in res.items():
        if t:
            print(f"{level:11s} median {1000 * statistics.median(t):.1f} ms per run ({len(t)} runs)")
    if all(res.get(k) for k in ("process", "namespaces")):
        print(f"ratio namespaces/process: {statistics.median(res['namespaces']) / statistics.median(res['process']):.2f}")


if __name__ == "__main__":
    main()
