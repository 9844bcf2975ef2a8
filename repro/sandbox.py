"""Run model-written programs (and the tools that read them) in a separate, limited process.

Every place that runs generated code goes through `run` (any command) or `run_python`, or, for the
harness, a warm worker that `spawn_jailed` starts in the same namespaces and jail and that forks a
contained child per program (repro/eval/worker.py). docs/sandbox.md says the same for users.

What each run gets, always ("process" isolation):
- a fresh temporary working directory, removed afterwards, with only the files given to it;
- its own session and process group, and a wall-clock timeout that kills the whole group;
- rlimits on CPU seconds, address space, file size, open files, core files, and processes;
- a scrubbed environment (PATH, HOME and TMPDIR in the working directory, a locale; nothing else);
- stdout and stderr read through a pipe and capped (64 KiB kept; the rest is read and dropped, so a
  program that prints a gigabyte costs nothing but time);
- when we run as root (CI, containers): its own user id (a numeric uid from an unused range, one per
  concurrent run), no supplementary groups, no capabilities and no_new_privs. Root ignores the
  process rlimit, and an unprivileged uid cannot touch root's files or processes. Every process of
  that uid is killed when the run ends.

Where the kernel allows it (probed once; `isolation()` says which level is in force) it also gets
new Linux namespaces through util-linux `unshare` ("namespaces" isolation):
- network: a namespace with only a loopback device that is down: no network at all, loopback
  servers of the host included;
- pid: the program is process 1 of its own namespace: it sees (in its own /proc) and can signal only
  its own processes, and when it exits or is killed every process it started dies with it, also
  those that left its process group or ignore SIGTERM;
- mount: the whole file system is read-only except the working directory, and the home and
  temporary directories (HIDE, and $HOME) are empty tmpfs mounts in which only the Python
  installation and the toolchains a caller names (`show`) appear;
- user (only when we are not root): a user namespace, so no privilege is needed for the above; the
  capability bounding set is emptied before the program starts, so it cannot undo them.

What it does not protect against, plainly:
- it is not a virtual machine: a kernel bug is a way out, and programs share the kernel, the CPU
  and memory bandwidth with us (no cgroup: the limits are per process, so N processes of one run
  may use up to N times the address-space limit, within the process limit);
- the program can read the world-readable files outside the hidden directories (and, without
  namespaces and as an ordinary user, every file that user can read). Do not keep secrets where
  the user that runs evaluations can read them;
- without namespaces ("process" isolation: an old kernel, user namespaces disabled, or
  REPRO_SANDBOX=process): the program can reach the network, write wherever its uid may write (as
  an ordinary user: all of the user's files; as root: world-writable places such as /tmp), and, as
  an ordinary user, signal the user's other processes and leave a setsid()ed child behind (it is
  not busy, so the CPU limit does not stop it);
- with namespaces, files stay read-only but UNIX sockets on the host's file system (a Docker or
  X11 socket, say) can still be connected to when the program's uid may open them.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

OUTPUT_CAP = 64 * 1024
UID_BASE = 1_000_000  # uids for runs when we are root: no user on a normal system has these
UID_SLOTS = 4096


@dataclass
class Result:
    status: str  # passed | failed | timeout
    returncode: int | None
    output: str  # stdout and stderr together, the first OUTPUT_CAP bytes
    files: dict[str, bytes] = field(default_factory=dict)  # the `read_back` files the program left
    truncated: bool = False  # the output went past OUTPUT_CAP


# ---------------------------------------------------------------------------------------------
# The jail: runs inside the new namespaces as their root. It hides the home and temporary
# directories behind empty tmpfs mounts, shows again only what the program needs (its working
# directory, the Python installation, the toolchains a caller names), makes the whole file system
# read-only except the working directory, sets the process limit, then execs setpriv, which drops
# the uid (when we are root) and every capability before it execs the program.
# Run with -I -S: standard library only. Its argument is JSON: {wd, nproc, hide, show}.

JAIL = r"""
import ctypes, json, os, resource, sys
spec, argv = json.loads(sys.argv[1]), sys.argv[2:]
wd = spec["wd"]
libc = ctypes.CDLL(None, use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [("set", ctypes.c_uint64), ("clr", ctypes.c_uint64), ("prop", ctypes.c_uint64), ("fd", ctypes.c_uint64)]
def setattr_(path, set_, clr):
    a = Attr(set_, clr, 0, 0)  # mount_setattr(2), Linux 5.12; 442 on every architecture
    if libc.syscall(442, -100, path.encode(), 0x8000, ctypes.byref(a), ctypes.sizeof(a)) != 0:
        raise OSError(ctypes.get_errno(), "mount_setattr " + path)
def mount(src, dst, fstype, flags, data=None):
    if libc.mount(src.encode(), dst.encode(), fstype and fstype.encode(), flags, data and data.encode()) != 0:
        raise OSError(ctypes.get_errno(), "mount " + dst)
MS_BIND, MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x1000, 0x4000, 0x40000, 0x2, 0x4
try:
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    shown = {p: os.open(p, os.O_PATH) for p in [wd] + spec["show"] if os.path.exists(p)}
    for h in spec["hide"]:
        mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for p, fd in shown.items():  # parents first, so a child path lands inside its parent's mount
        if os.path.isdir("/proc/self/fd/%d" % fd):
            os.makedirs(p, exist_ok=True)
        elif not os.path.exists(p):
            os.makedirs(os.path.dirname(p), exist_ok=True)
            open(p, "w").close()
        mount("/proc/self/fd/%d" % fd, p, None, MS_BIND | MS_REC)
    setattr_("/", 1, 0)  # MOUNT_ATTR_RDONLY, recursively
    setattr_(wd, 0, 1)  # ... except the working directory
    os.chdir(wd)  # the cwd we were started in is not the mount now at that path
    if spec["nproc"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
except OSError as e:
    sys.stderr.write("sandbox jail: %s\n" % e)
    os._exit(125)
os.execv(argv[0], argv)
"""

HIDE = ("/root", "/home", "/tmp", "/var/tmp", "/dev/shm")


def _jail_spec(wd: str, nproc: int, show: tuple[str, ...]) -> str:
    hide = {os.path.realpath(h) for h in (*HIDE, os.path.expanduser("~")) if os.path.isdir(h) and h != "/"}
    # The interpreter's installation and the environment we run in (pyenv under a home directory,
    # a virtualenv in a project under /home, ...), and whatever the caller needs.
    wanted = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix,
                                              os.path.dirname(os.path.realpath(sys.executable)), *show)}
    wanted = sorted(p for p in wanted if any(_under(p, h) for h in hide))
    wanted = [p for p in wanted if not any(q != p and _under(p, q) for q in wanted)]  # outermost only
    hide_list = sorted(h for h in hide if not any(_under(h, o) for o in hide if o != h))
    return json.dumps({"wd": os.path.realpath(wd), "nproc": nproc, "hide": hide_list, "show": wanted})


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


@functools.lru_cache(maxsize=1)
def isolation() -> dict:
    """The isolation in force: {"level": "namespaces"|"process", "uid": "own"|"same", "why": str}.

    "uid": "own" when each run gets its own uid (we are root), "same" when it runs as we do.
    Probed once per process by running this interpreter through each level in turn; "why" says
    why a level was not had (REPRO_SANDBOX=process asks for process isolation).
    """
    root = os.geteuid() == 0
    if os.environ.get("REPRO_SANDBOX", "") == "process":
        why = "REPRO_SANDBOX=process"
    elif not shutil.which("unshare") or not shutil.which("setpriv"):
        why = "util-linux unshare/setpriv not found"
    elif (why := _probe("namespaces", root)) == "":
        return {"level": "namespaces", "uid": "own" if root else "same", "why": ""}
    else:
        why = f"namespaces unavailable ({why})"
    if root and shutil.which("setpriv"):
        if (no := _probe("process", True)) == "":
            return {"level": "process", "uid": "own", "why": why}
        why += f"; runs keep our uid: this interpreter does not run under another uid ({no})"
    return {"level": "process", "uid": "same", "why": why}


def _probe(level: str, own_uid: bool) -> str:
    """'' when this interpreter runs at `level` and can write in its directory, else what went wrong."""
    code = "import sys; open('probe', 'w').write(sys.base_prefix)"
    r = _run([sys.executable, "-I", "-c", code], level=level, own_uid=own_uid, timeout_s=20, mem_bytes=2 << 30,
             cpu_s=20, files={}, read_back=("probe",), fsize_bytes=1 << 20, nproc=16, nofile=64)
    if r.files.get("probe") == sys.base_prefix.encode():
        return ""
    if "probe" in r.files:
        return f"it found its installation in {r.files['probe'].decode(errors='replace')}, not {sys.base_prefix}"
    return (r.output.strip().splitlines() or [f"exit status {r.returncode}"])[-1][:200]


def run(argv: list[str], *, timeout_s: float = 10.0, mem_bytes: int | None = 2 << 30, cpu_s: float | None = None,
        files: dict[str, bytes] | None = None, read_back: tuple[str, ...] = (), fsize_bytes: int = 16 << 20,
        nproc: int = 64, nofile: int = 64, show: tuple[str, ...] = ()) -> Result:
    """Run `argv` in a fresh working directory; passed means exit status 0 within the limits.

    `files` are written there first (plain names); the `read_back` files the program leaves there
    are returned in `Result.files`, also after a timeout, so a harness can take its results from a
    file rather than from the program's output. `mem_bytes=None` sets no address-space limit (JVMs
    and node reserve far more address space than they use: give them their own heap flags).
    `cpu_s` defaults to the timeout; `nproc` counts threads too. `show`: paths the program needs
    that may be hidden (a toolchain under a home directory); the Python installation always is shown.
    """
    for name in list(files or ()) + list(read_back):
        if name != os.path.basename(name) or name in ("", ".", ".."):
            raise ValueError(f"sandbox file name {name!r}: use a plain name")
    info = isolation()
    return _run(argv, level=info["level"], own_uid=info["uid"] == "own", timeout_s=timeout_s, mem_bytes=mem_bytes,
                cpu_s=cpu_s if cpu_s is not None else timeout_s, files=files or {}, read_back=read_back,
                fsize_bytes=fsize_bytes, nproc=nproc, nofile=nofile, show=tuple(show))


def run_python(code: str, timeout_s: float = 10.0, mem_bytes: int | None = 2 << 30,
               files: dict[str, bytes] | None = None, read_back: tuple[str, ...] = (),
               fsize_bytes: int = 16 << 20) -> Result:
    """Run `code` as `program.py` with this interpreter in isolated mode (no user site, no PYTHON*)."""
    if "program.py" in (files or {}) or "program.py" in read_back:
        raise ValueError("sandbox file name 'program.py' is the program's own")
    return run([sys.executable, "-I", "program.py"], timeout_s=timeout_s, mem_bytes=mem_bytes,
               files={"program.py": code.encode("utf-8"), **(files or {})}, read_back=read_back,
               fsize_bytes=fsize_bytes)


def tool(name: str) -> tuple[str, tuple[str, ...]]:
    """(absolute path, folders to `show`) of a compiler or interpreter found on our PATH, for `run`:
    the run's PATH holds only the system folders, and home directories are hidden from it.
    rustup's proxy is resolved to the toolchain's own rustc, which needs neither rustup's
    environment nor its home directory."""
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(name)
    path = os.path.realpath(found)
    if name == "rustc" and os.path.basename(path) == "rustup":
        # The proxy answers only where rustup has a toolchain for this user (its home, or
        # RUSTUP_HOME): without one there is no rustc, whatever PATH holds.
        r = subprocess.run([found, "--print", "sysroot"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        sysroot = r.stdout.strip()
        if r.returncode or not os.path.isfile(os.path.join(sysroot, "bin", "rustc")):
            raise FileNotFoundError(name)
        return os.path.join(sysroot, "bin", "rustc"), (sysroot,)
    return path, (os.path.dirname(path),)


def workers(n: int) -> int:
    """Programs run at once: `n`, or the machine's cores when 0 (the workers settings)."""
    return n if n > 0 else (os.cpu_count() or 1)


def mem_cap(limit: int) -> int:
    """An address-space limit, no more than this machine's physical memory."""
    return min(limit, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def missing(names) -> list[str]:
    """Those of `names` that `tool` cannot find here (not on PATH, or rustup with no toolchain)."""
    out = []
    for name in names:
        try:
            tool(name)
        except FileNotFoundError:
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------


_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()
_uid_start = itertools.count()


def _take_uid() -> int:
    # One uid per concurrent run, so that the process limit (counted per uid) is each run's own:
    # a fork bomb in one answer must not stop its neighbours from starting.
    with _uid_lock:
        base = UID_BASE + (os.getpid() % 1000) * UID_SLOTS
        for _ in range(UID_SLOTS):
            uid = base + next(_uid_start) % UID_SLOTS
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid
    raise RuntimeError("sandbox: no free uid")


def _run(argv, *, level, own_uid, timeout_s, mem_bytes, cpu_s, files, read_back, fsize_bytes, nproc, nofile,
         show=()) -> Result:
    root = os.geteuid() == 0
    uid = _take_uid() if own_uid else None
    try:
        with tempfile.TemporaryDirectory(prefix="repro-sandbox-", ignore_cleanup_errors=True) as tmp:
            for name, data in files.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
            if uid is not None:
                os.chown(tmp, uid, uid)  # the program's own directory; the given files stay ours, readable
                os.chmod(tmp, 0o700)
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
                   "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
            drop = ["setpriv", *([f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []),
                    "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]
            if level == "namespaces":
                ns = ["unshare", *([] if root else ["--user", "--map-root-user"]), "--net", "--pid", "--fork",
                      "--kill-child", "--mount", "--mount-proc", "--"]
                cmd = [*ns, sys.executable, "-I", "-S", "-c", JAIL, _jail_spec(tmp, nproc, show),
                       shutil.which("setpriv") or "/usr/bin/setpriv", *drop[1:], *argv]
                preexec = _limits(cpu_s, mem_bytes, fsize_bytes, nofile, None)
            else:
                cmd = [*drop, *argv] if uid is not None else list(argv)
                preexec = _limits(cpu_s, mem_bytes, fsize_bytes, nofile, _nproc_limit(nproc, root))
            try:
                return _supervise(cmd, tmp, env, preexec, timeout_s, read_back)
            finally:
                if uid is not None and level != "namespaces":
                    _kill_uid(uid)
    finally:
        if uid is not None:
            with _uid_lock:
                _uids_in_use.discard(uid)


def spawn_jailed(argv: list[str], wd: str) -> subprocess.Popen:
    """Start a trusted supervisor (repro/eval/worker.py) in fresh namespaces and the mount jail,
    with `wd` its writable directory, stdin and stdout pipes, and the scrubbed environment.

    It is not a run: it keeps the jail's root and capabilities (no setpriv, no process limit, no
    CPU or address-space limit) so that it can give each program it starts its own namespaces,
    limits and uid. Namespaces isolation only; the caller kills its process group when done.
    """
    if isolation()["level"] != "namespaces":
        raise RuntimeError("sandbox.spawn_jailed needs namespaces isolation")
    root = os.geteuid() == 0
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": wd, "TMPDIR": wd, "LANG": "C.UTF-8",
           "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    ns = ["unshare", *([] if root else ["--user", "--map-root-user"]), "--net", "--pid", "--fork",
          "--kill-child", "--mount", "--mount-proc", "--"]
    cmd = [*ns, sys.executable, "-I", "-S", "-c", JAIL, _jail_spec(wd, 0, ()), *argv]

    def limits():
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return subprocess.Popen(cmd, cwd=wd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=limits)


def _kill_uid(uid: int) -> None:
    # Without a pid namespace a child that called setsid() is not in the process group: kill every
    # process of the run's own uid. kill(-1) as that uid reaches exactly those, in one pass that a
    # forking process cannot race.
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "kill", "-KILL", "-1"],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _nproc_limit(nproc: int, root: bool) -> int:
    if root:
        return nproc  # counted for the run's own uid (setpriv switches to it)
    # Without namespaces the count is the user's whole process count: allow what they have plus nproc.
    mine = sum(1 for p in os.listdir("/proc") if p.isdigit() and _owner(p) == os.getuid())
    return mine + nproc


def _owner(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _limits(cpu_s, mem_bytes, fsize_bytes, nofile, nproc):
    cpu = max(1, int(cpu_s + 1))

    def apply():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        if mem_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_bytes, fsize_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    return apply


def _supervise(cmd, tmp, env, preexec, timeout_s, read_back) -> Result:
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec)
    out, truncated, timed_out = bytearray(), False, False
    deadline = time.monotonic() + timeout_s
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                # EOF is the usual end. The poll catches a program that has exited while something
                # it left behind still holds the pipe (only possible without a pid namespace).
                if not sel.select(min(left, 0.25)):
                    if proc.poll() is not None:
                        break
                    continue
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                keep = OUTPUT_CAP - len(out)
                if len(chunk) > keep:
                    truncated = True
                out += chunk[:max(keep, 0)]
        if not timed_out:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group; with namespaces, the namespace dies with it
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        proc.stdout.close()
    status = "timeout" if timed_out else ("passed" if proc.returncode == 0 else "failed")
    back = {name: data for name in read_back if (data := _read_plain(os.path.join(tmp, name))) is not None}
    return Result(status, None if timed_out else proc.returncode, out.decode("utf-8", "replace"), back, truncated)


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


if __name__ == "__main__":  # `python -m repro.sandbox`: which isolation this machine gives
    print(json.dumps(isolation()))
