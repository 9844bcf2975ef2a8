"""Run model-written programs in a separate, limited process.

What it does: a fresh Python interpreter (`-I`: no user site, no PYTHON* variables) in its own
session, in a temporary working directory removed afterwards, with a scrubbed environment and
rlimits on CPU seconds, address space, file size and open files; a wall-clock timeout kills the
whole process group; output is capped.

What it does not do: it is not a security boundary. The program runs as the same user, can read
any file that user can read, and can reach the network. Run untrusted generations only on a
machine you are willing to expose to them (the sandbox issue hardens this further).
"""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

OUTPUT_CAP = 64 * 1024


@dataclass
class Result:
    status: str  # passed | failed | timeout
    returncode: int | None
    output: str
    files: dict[str, bytes] = field(default_factory=dict)  # the `read_back` files the program left


def _limits(cpu_s: int, mem_bytes: int, fsize_bytes: int = 16 << 20):
    def apply():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_bytes, fsize_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_python(code: str, timeout_s: float = 10.0, mem_bytes: int = 2 << 30,
               files: dict[str, bytes] | None = None, read_back: tuple[str, ...] = (),
               fsize_bytes: int = 16 << 20) -> Result:
    """Run `code` as a script; passed means exit status 0 within the limits.

    `files` are written next to the program (plain names, no folders) before it starts; the
    `read_back` files it leaves in its directory are returned in `Result.files`, also after a
    timeout, so a harness can take its results from a file rather than from the program's output.
    `fsize_bytes` caps the size of any file the program writes.
    """
    for name in list(files or ()) + list(read_back):
        if name != os.path.basename(name) or name in ("", ".", "..", "program.py"):
            raise ValueError(f"sandbox file name {name!r}: use a plain name other than program.py")
    with tempfile.TemporaryDirectory(prefix="repro-sandbox-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)
        for name, data in (files or {}).items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-I", path], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_limits(int(timeout_s) + 1, mem_bytes, fsize_bytes))
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            status, out = "timeout", b""
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # grandchildren too
            except ProcessLookupError:
                pass
            if proc.poll() is None:
                proc.wait()
        back = {name: data for name in read_back if (data := _read_plain(os.path.join(tmp, name))) is not None}
        return Result(status, proc.returncode, out[:OUTPUT_CAP].decode("utf-8", "replace"), back)


def _read_plain(path: str) -> bytes | None:
    """A file's bytes, or None if it is missing or not a regular file (the program may have put a
    link to somewhere else in its place)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()
