"""What the bench/gpu/ helpers share: where results go, GPU memory, timing.

Each helper appends one JSON object per finding to $GPU_BENCH_RESULTS (run.sh sets it to
$OUT/results.jsonl); bench/gpu/summary.py turns that file into summary.md after every step, so a
run stopped at its time limit still leaves the figures it reached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `repro` without installing the project (the GPU machine)


def record(kind: str, **fields) -> dict:
    """Append {"kind": kind, **fields} to the results file (and print it)."""
    row = {"kind": kind, "time": round(time.time(), 1), **fields}
    line = json.dumps(row, default=str)
    print(line, flush=True)
    path = os.environ.get("GPU_BENCH_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return row


def gpu_memory_mib() -> dict | None:
    """Used and total MiB of the first GPU, from nvidia-smi (the whole card: every process's share);
    None without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=False).stdout.splitlines()[0]
        used, total = (int(float(x)) for x in out.split(","))
        return {"used": used, "total": total}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def llama_build() -> dict:
    """What the loaded libllama is: can it offload to a GPU, and which file it is."""
    import llama_cpp.llama_cpp as C

    return {"gpu_offload": bool(C.llama_supports_gpu_offload()),
            "lib": os.environ.get("LLAMA_CPP_LIB_PATH") or "llama_cpp/lib (installed)"}


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = round(time.perf_counter() - self.t0, 2)
