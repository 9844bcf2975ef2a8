"""Warm sandboxed workers: one long-lived interpreter per worker thread, started inside the
sandbox's namespaces, that forks a fresh child per program instead of starting an interpreter.

Why: a fresh sandboxed interpreter per run (unshare, the mount jail, setpriv, Python) costs tens of
milliseconds, most of the time of an answer that fails its first input; EvalPlus forks a warm
process. `Pool.run_python` gives the same `repro.sandbox.Result` as `sandbox.run_python`.

How one run is contained (namespaces isolation only; docs/sandbox.md):
- the worker is started by repro.sandbox exactly as a run is (new network, pid and mount
  namespaces, the read-only jail, the scrubbed environment), but it keeps the jail's root and
  capabilities: it runs only the code below, never the program;
- per run the host makes a fresh directory in the worker's (already visible inside the jail),
  writes the given files there and hands it to the run's uid; the worker forks a helper, which
  enters a new pid namespace and forks the child: the child is process 1 of its own namespace,
  so when it ends or is killed everything it started dies with it, and it cannot name (so not
  signal) the worker, the helper or the host;
- the child enters its own mount namespace with a fresh /proc (its own processes only) and
  everything read-only but its directory, starts its own session, takes the run's rlimits, then
  drops every capability (bounding set, ambient, inheritable), its groups and (as root) the uid,
  and sets no_new_privs before the program's first line runs;
- the helper reads the child's output through a capped pipe and SIGKILLs it at the wall-clock
  timeout; the host reads the `read_back` files and removes the directory.
What the program changes in its memory (modules, the guard's os.fork = None) is its own copy.

What it does not do: run at "process" isolation (no namespaces: `available()` says so, callers
use sandbox.run_python), or start a program other than Python code; a worker that dies, hangs or
answers nonsense is killed, and that run is done again by sandbox.run_python (the reference path).
Nor does it give each run a fresh interpreter's state: the children of one worker share its str
hash seed (random, as for a fresh `python -I`, which ignores PYTHONHASHSEED) and start with the
preloaded modules in their address space (which counts against RLIMIT_AS).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import queue
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

from repro import sandbox

# The worker, run with -I inside the jail; argv[1] is JSON {wd, uid, preload, cap_last}.
# Messages are 8-byte big-endian lengths then a body: the host's pickle, the worker's JSON
# (nothing that a child could influence is unpickled by the host).
WORKER = r"""
import ctypes, json, os, pickle, resource, selectors, signal, struct, sys, time
spec = json.loads(sys.argv[1])
for name in spec["preload"]:
    try:
        __import__(name)
    except BaseException:
        pass  # the child imports it again, and fails there as it would in a fresh interpreter
import io, traceback
# Imported here, not in each child: its imports (shutil, random, hashlib, bz2, lzma, ...) were
# most of a child's time (17 of 25 ms a run under strace). The child only resets its cached
# directory, as a fresh interpreter would find TMPDIR anew.
import tempfile
libc = ctypes.CDLL(None, use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64), ("prop", ctypes.c_uint64), ("fd", ctypes.c_uint64)]
class CapHdr(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
def check(rc, what):
    if rc != 0:
        raise OSError(ctypes.get_errno(), what)
def mount(src, dst, fstype, flags):
    check(libc.mount(src.encode(), dst.encode(), fstype and fstype.encode(), flags, None), "mount " + dst)
def readonly(path, recursive):
    a = Attr(1, 0, 0, 0)
    check(libc.syscall(442, -100, path.encode(), 0x8000 if recursive else 0, ctypes.byref(a), ctypes.sizeof(a)),
          "mount_setattr " + path)
CLONE_NEWNS, CLONE_NEWPID, MS_BIND, MS_REC, MS_PRIVATE = 0x20000, 0x20000000, 0x1000, 0x4000, 0x40000
CODE = {}
rfd, wfd = os.dup(0), os.dup(1)  # the protocol, on descriptors no child keeps
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
wd, uid = spec["wd"], spec["uid"]

def read_exact(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(rfd, n - len(buf))
        if not chunk:
            sys.exit(0)  # the host went away
        buf += chunk
    return bytes(buf)

def send(obj):
    data = json.dumps(obj).encode()
    data = struct.pack(">Q", len(data)) + data
    while data:
        data = data[os.write(wfd, data):]

def child(task, run, out_w):
    # process 1 of a new pid namespace; nothing of the program has run yet
    check(libc.unshare(CLONE_NEWNS), "unshare")
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    mount("proc", "/proc", "proc", 0x2 | 0x4 | 0x8)  # nosuid, nodev, noexec: this namespace's processes
    mount(run, run, None, MS_BIND)
    readonly(wd, False)  # the worker's directory; the run's own, a mount of its own, stays writable
    os.chdir(run)
    os.setsid()  # kill(0) reaches only this run
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    os.closerange(3, 1 << 16)
    cpu = max(1, int(task["cpu_s"] + 1))
    for lim, v in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, task["mem_bytes"]),
                   (resource.RLIMIT_FSIZE, task["fsize_bytes"]), (resource.RLIMIT_NOFILE, task["nofile"]),
                   (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, task["nproc"])):
        if v is not None:
            resource.setrlimit(lim, (v, v))
    for cap in range(spec["cap_last"] + 1):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    data = (CapData * 2)()
    check(libc.capset(ctypes.byref(CapHdr(0x20080522, 0)), data), "capset")
    check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")
    os.environ.update(HOME=run, TMPDIR=run)
    sys.argv = ["program.py"]
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), "utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), "utf-8")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), "utf-8",
                                                   "backslashreplace", line_buffering=True)
    tempfile.tempdir = None
    status = 0
    try:
        exec(CODE[task["code_key"]], {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
    except SystemExit as e:
        if e.code is None:
            status = 0
        elif isinstance(e.code, int):
            status = e.code & 0xFF
        else:
            sys.stderr.write(str(e.code) + "\n")
            status = 1
    except BaseException:
        t, e, tb = sys.exc_info()
        traceback.print_exception(t, e, tb.tb_next)  # from the program's frame, as a fresh interpreter prints it
        status = 1
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except BaseException:
            pass
    os._exit(status)

def helper(task, run, report_w):
    # enters a new pid namespace for its one child, supervises it, reports
    check(libc.unshare(CLONE_NEWPID), "unshare")
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(out_r)
            os.close(report_w)
            child(task, run, out_w)
        except BaseException as e:
            os.write(out_w, ("warm sandbox: %s\n" % e).encode(errors="replace"))
        os._exit(125)
    os.close(out_w)
    cap, out, truncated, timed_out = task["output_cap"], bytearray(), False, False
    deadline = time.monotonic() + task["timeout_s"]
    sel = selectors.DefaultSelector()
    sel.register(out_r, selectors.EVENT_READ)
    status = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        if not sel.select(min(left, 0.25)):
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            continue
        chunk = os.read(out_r, 1 << 16)
        if not chunk:
            break
        keep = cap - len(out)
        truncated |= len(chunk) > keep
        out += chunk[:max(keep, 0)]
    if status is None and not timed_out:
        while True:  # the output ended; the child may still be on its way out
            left = deadline - time.monotonic()
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            if left <= 0:
                timed_out = True
                break
            time.sleep(min(left, 0.002))
    if status is None:
        os.kill(pid, signal.SIGKILL)  # process 1: its whole namespace goes with it
        status = os.waitpid(pid, 0)[1]  # returns once the namespace is empty
    rc = None if timed_out else os.waitstatus_to_exitcode(status)
    body = json.dumps({"status": "timeout" if timed_out else ("passed" if rc == 0 else "failed"), "returncode": rc,
                       "output": out.decode("utf-8", "replace"), "truncated": truncated}).encode()
    while body:
        body = body[os.write(report_w, body):]

while True:
    task = pickle.loads(read_exact(struct.unpack(">Q", read_exact(8))[0]))
    if task["code_key"] not in CODE:
        CODE[task["code_key"]] = compile(task["code"], "program.py", "exec")
    run = os.path.join(wd, task["run"])
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_r)
            helper(task, run, report_w)
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(report_w)
    body = bytearray()
    while chunk := os.read(report_r, 1 << 16):
        body += chunk
    os.close(report_r)
    os.waitpid(pid, 0)
    try:
        send(json.loads(body))
    except ValueError:
        send({"status": "error", "output": "the helper gave no report"})
"""

SETUP_FAILED = "warm sandbox: "  # what a child whose set-up failed prints, exiting 125
REPLY_SLACK_S = 10.0  # past the run's own timeout, the worker is taken for dead


def available() -> str:
    """'' when warm workers work here, else why not (then callers use sandbox.run_python).

    REPRO_WARM=0 turns them off; they need "namespaces" isolation; then one probe run per process."""
    if os.environ.get("REPRO_WARM", "") == "0":
        return "REPRO_WARM=0"
    if sandbox.isolation()["level"] != "namespaces":
        return "warm workers need namespaces isolation"
    return _probe()


@functools.lru_cache(maxsize=1)
def _probe() -> str:
    pool = Pool(1, ())
    try:
        r = pool._run_warm("import sys; open('probe', 'w').write(sys.base_prefix)", {}, ("probe",),
                           timeout_s=20, mem_bytes=2 << 30, fsize_bytes=1 << 20)
    except WorkerError as e:
        return str(e)
    finally:
        pool.close()
    if r.files.get("probe") != sys.base_prefix.encode():
        return (r.output.strip().splitlines() or [f"probe: {r.status} {r.returncode}"])[-1][:200]
    return ""


class WorkerError(Exception):
    pass


class _Worker:
    def __init__(self, preload: tuple[str, ...]):
        self.uid = sandbox._take_uid() if sandbox.isolation()["uid"] == "own" else None
        self.tmp = tempfile.mkdtemp(prefix="repro-warm-")
        self.runs = 0
        try:
            if self.uid is not None:
                os.chown(self.tmp, self.uid, self.uid)
                os.chmod(self.tmp, 0o700)
            spec = json.dumps({"wd": os.path.realpath(self.tmp), "uid": self.uid, "preload": list(preload),
                               "cap_last": _cap_last()})
            self.proc = sandbox.spawn_jailed([sys.executable, "-I", "-c", WORKER, spec], self.tmp)
        except BaseException:
            self._release()
            raise

    def run(self, code: str, code_key: str, files: dict[str, bytes], read_back: tuple[str, ...], *,
            timeout_s: float, mem_bytes: int | None, fsize_bytes: int) -> sandbox.Result:
        self.runs += 1
        name = f"r{self.runs}"
        run = os.path.join(self.tmp, name)
        os.mkdir(run, 0o700)
        try:
            for fname, data in files.items():
                with open(os.path.join(run, fname), "wb") as f:
                    f.write(data)
            if self.uid is not None:
                os.chown(run, self.uid, self.uid)  # the given files stay ours, readable, as in sandbox.run
            # the limits of sandbox.run's defaults (CPU seconds = the timeout, 64 files, 64 processes)
            task = {"run": name, "code": code, "code_key": code_key, "timeout_s": timeout_s, "cpu_s": timeout_s,
                    "mem_bytes": mem_bytes, "fsize_bytes": fsize_bytes, "nofile": 64, "nproc": 64,
                    "output_cap": sandbox.OUTPUT_CAP}
            reply = self._ask(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL), timeout_s + REPLY_SLACK_S)
            if not isinstance(reply, dict) or reply.get("status") not in ("passed", "failed", "timeout"):
                raise WorkerError(f"warm worker: {str(reply)[:200]}")
            if reply["returncode"] == 125 and str(reply["output"]).startswith(SETUP_FAILED):
                # the child's own set-up failed before the program ran (a program that forges this
                # only gets a fresh interpreter)
                raise WorkerError(str(reply["output"]).strip()[:200])
            back = {n: d for n in read_back if (d := sandbox._read_plain(os.path.join(run, n))) is not None}
            return sandbox.Result(reply["status"], reply["returncode"], str(reply["output"]), back,
                                  bool(reply["truncated"]))
        finally:
            shutil.rmtree(run, ignore_errors=True)
            if os.path.exists(run):
                _force_rmtree(run)

    def _ask(self, body: bytes, wait_s: float):
        msg = struct.pack(">Q", len(body)) + body
        try:
            self.proc.stdin.write(msg)
            self.proc.stdin.flush()
        except OSError as e:
            raise WorkerError(f"warm worker gone ({e})") from None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + wait_s
        buf = bytearray()
        need = 8
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                if len(buf) >= need:
                    if need == 8:
                        need = 8 + struct.unpack(">Q", bytes(buf[:8]))[0]
                        if need > 64 << 20:
                            raise WorkerError("warm worker: reply too long")
                        continue
                    try:
                        return json.loads(bytes(buf[8:need]))
                    except ValueError:
                        raise WorkerError("warm worker: a torn reply") from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerError("warm worker: no reply in time")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, max(need - len(buf), 1 << 16))
                if not chunk:
                    raise WorkerError(f"warm worker exited (status {self.proc.poll()})")
                buf += chunk

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the worker exits at the end of its input
        except OSError:
            pass
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # unshare's group; the namespaces die with it
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.proc.stdout.close()
        self._release()

    def _release(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        if os.path.exists(self.tmp):
            _force_rmtree(self.tmp)
        if self.uid is not None:
            with sandbox._uid_lock:
                sandbox._uids_in_use.discard(self.uid)
            self.uid = None


def _force_rmtree(path: str) -> None:
    """rmtree after making every folder writable again (a program may chmod its own folders)."""
    for top, dirs, _ in os.walk(path):
        for d in dirs:
            try:
                os.chmod(os.path.join(top, d), 0o700)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _cap_last() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63  # dropping a capability the kernel lacks fails harmlessly


class Pool:
    """Warm workers for `n` threads at once; each run takes an idle worker or starts one.

    `preload`: modules the workers import once (a child imports them again for free). Use as a
    context manager, or call close(): the workers live until then.
    """

    def __init__(self, n: int, preload: tuple[str, ...] = ()):
        self.preload = tuple(preload)
        self.idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self.all: list[_Worker] = []
        self.n = n
        self.restarts = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run_python(self, code: str, timeout_s: float = 10.0, mem_bytes: int | None = 2 << 30,
                   files: dict[str, bytes] | None = None, read_back: tuple[str, ...] = (),
                   fsize_bytes: int = 16 << 20) -> sandbox.Result:
        """sandbox.run_python's contract, in a warm worker; in sandbox.run_python itself when the
        worker fails (it is killed, and the next run starts a fresh one)."""
        files = files or {}
        for name in list(files) + list(read_back):
            if name != os.path.basename(name) or name in ("", ".", "..", "program.py"):
                raise ValueError(f"sandbox file name {name!r}: use a plain name")
        try:
            return self._run_warm(code, files, read_back, timeout_s=timeout_s, mem_bytes=mem_bytes,
                                  fsize_bytes=fsize_bytes)
        except WorkerError:
            self.restarts += 1
            return sandbox.run_python(code, timeout_s=timeout_s, mem_bytes=mem_bytes, files=files,
                                      read_back=read_back, fsize_bytes=fsize_bytes)

    def _run_warm(self, code, files, read_back, *, timeout_s, mem_bytes, fsize_bytes) -> sandbox.Result:
        try:
            w = self.idle.get_nowait()
        except queue.Empty:
            w = self._new()
        try:
            r = w.run(code, hashlib.sha256(code.encode()).hexdigest(), files, read_back, timeout_s=timeout_s,
                      mem_bytes=mem_bytes, fsize_bytes=fsize_bytes)
        except BaseException:
            self.all.remove(w)
            w.close()
            raise
        self.idle.put(w)
        return r

    def _new(self) -> _Worker:
        try:
            w = _Worker(self.preload)
        except (OSError, RuntimeError) as e:  # RuntimeError: no namespaces isolation here
            raise WorkerError(f"warm worker did not start ({e})") from None
        self.all.append(w)
        return w

    def close(self) -> None:
        while self.all:
            self.all.pop().close()
