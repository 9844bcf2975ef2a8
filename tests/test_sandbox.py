"""Hostile programs in repro.sandbox: each is contained, reported, and leaves nothing behind.

Every test runs at both isolation levels: "namespaces" (skipped, visibly, where the kernel refuses
them) and "process" (forced with REPRO_SANDBOX=process), and a third time as "warm": the same
program run by a warm worker's forked child (repro/eval/worker.py, on namespaces), which must
contain all that "namespaces" does and survive it: no worker is lost (no fallback run), and no
process of the worker's run uid is left. Where a level does not claim to contain an attack (see
the sandbox's docstring), the test says so instead of asserting it.
"""

import os
import re
import resource
import socket
import threading
import time
from pathlib import Path

import pytest

from repro.eval import evalplus_data as ed
from repro import sandbox
from repro.eval import harness, worker

ROOT_USER = os.geteuid() == 0
WARM: list[worker.Pool] = []  # the pool of the "warm" level's test, while it runs


@pytest.fixture(params=["namespaces", "process", "warm"])
def level(request, monkeypatch):
    sandbox.isolation.cache_clear()
    if request.param in ("namespaces", "warm"):
        info = sandbox.isolation()
        if info["level"] != "namespaces":
            pytest.skip(f"namespaces unavailable here: {info['why']}")
    else:
        monkeypatch.setenv("REPRO_SANDBOX", "process")
        assert sandbox.isolation()["level"] == "process"
    if request.param == "warm":
        if why := worker.available():
            pytest.skip(f"warm workers unavailable here: {why}")
        pool = worker.Pool(1)
        monkeypatch.setattr(sandbox, "run_python", pool.run_python)
        WARM.append(pool)
    try:
        yield request.param
        if request.param == "warm":
            assert pool.restarts == 0, "a run lost its warm worker (it was judged by a fresh interpreter)"
    finally:
        if WARM:
            WARM.pop().close()
        sandbox.isolation.cache_clear()


def strong(level):
    return level in ("namespaces", "warm")


def needs_containment(level, what):
    """Process isolation under our own uid does not contain `what`: running it would hit us."""
    if level == "process" and sandbox.isolation()["uid"] == "same":
        pytest.skip(f"process isolation under our own uid does not contain {what} "
                    f"({sandbox.isolation()['why']}; see repro/sandbox.py)")


def hostile(code: str, **kw) -> sandbox.Result:
    """Run `code`; then check that no process of the run is left (they all have HOME=its directory)."""
    r = sandbox.run_python("import os\nprint('CWD', os.getcwd(), flush=True)\n" + code, **kw)
    m = re.search(r"CWD (\S+)", r.output)
    assert m, r.output
    deadline = time.monotonic() + 3  # SIGKILL is delivered asynchronously
    # A warm child's environment is set after the fork, so /proc/<pid>/environ does not show it:
    # there, the run's uid (the worker's own) must own no process.
    uid = WARM[0].all[0].uid if WARM and WARM[0].all else None
    find = (lambda: processes_with(m.group(1))) if uid is None else (lambda: processes_of(uid))
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"stray processes {left}"
    assert not Path(m.group(1)).exists()  # the working directory was removed
    return r


def processes_of(uid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and sandbox._owner(p) == uid]


def processes_with(text: str) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                env = Path(f"/proc/{p}/environ").read_bytes()
            except OSError:
                continue
            if text.encode() in env:
                found.append(int(p))
    return found


def test_a_fork_bomb_is_stopped(level):
    needs_containment(level, "a fork bomb")
    code = "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    r = hostile(code, timeout_s=3)
    assert r.status == "timeout" and time.monotonic() - t0 < 10


def test_a_memory_bomb_fails_with_memoryerror(level):
    r = hostile("x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n", timeout_s=20, mem_bytes=1 << 30)
    assert r.status == "failed" and "MemoryError" in r.output


def test_an_infinite_loop_times_out_and_its_children_die(level):
    child = "import time; time.sleep(30)"
    code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {child!r}])\nwhile True: pass\n"
    t0 = time.monotonic()
    assert hostile(code, timeout_s=1).status == "timeout"
    assert time.monotonic() - t0 < 6


def test_a_child_that_ignores_sigterm_and_leaves_the_group_dies_with_the_run(level):
    needs_containment(level, "a child that calls setsid()")
    child = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(60)")
    code = (f"import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True)\n"
            f"time.sleep(0.5)\n")  # the parent exits first, normally; the child is orphaned
    r = hostile(code, timeout_s=10)  # hostile() fails if the child is still there
    assert r.status == "passed"


def test_writes_and_deletions_outside_the_working_directory_change_nothing(level, tmp_path):
    needs_containment(level, "writes to the user's files")
    keep = tmp_path / "keep.txt"
    keep.write_text("original\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inner.txt").write_text("inner\n")
    escape = Path("/tmp") / f"repro-escape-{os.getpid()}-{level}"
    code = f"""
import shutil
attempts = [
    lambda: open({str(keep)!r}, "a").write("changed"),
    lambda: open({str(tmp_path / 'new.txt')!r}, "w").write("new"),
    lambda: os.remove({str(keep)!r}),
    lambda: shutil.rmtree({str(tmp_path / 'folder')!r}),
    lambda: os.rename({str(keep)!r}, {str(tmp_path / 'moved.txt')!r}),
    lambda: open({str(escape)!r}, "w").write("escaped"),
]
for a in attempts:
    try:
        a()
    except OSError as e:
        print("refused:", e)
open("inside.txt", "w").write("fine")  # its own directory is writable
print("inside ok")
"""
    r = hostile(code, timeout_s=10)
    assert "inside ok" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "keep.txt"]
    assert keep.read_text() == "original\n" and (tmp_path / "folder" / "inner.txt").read_text() == "inner\n"
    if strong(level):
        assert not escape.exists()
    else:  # /tmp is world-writable: process isolation does not stop this (docstring)
        escape.unlink(missing_ok=True)


def test_the_parents_environment_is_out_of_reach(level, monkeypatch):
    secret = f"s3cret-{os.getpid()}-{time.time_ns()}"
    monkeypatch.setenv("REPRO_TEST_SECRET", secret)
    code = f"""
seen = [v for v in os.environ.values() if {secret!r} in v]
for pid in [str(os.getppid())] + [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        if {secret!r}.encode() in open(f"/proc/{{pid}}/environ", "rb").read():
            seen.append(pid)
    except OSError:
        pass
print("SEEN" if seen else "NOT SEEN", seen)
"""
    needs_containment(level, "reading /proc/<pid>/environ")
    r = hostile(code, timeout_s=10)
    assert "NOT SEEN" in r.output, r.output


def test_no_network_not_even_a_loopback_server(level):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    got, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                got.append(conn.recv(100))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    port = srv.getsockname()[1]
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"hello from the sandbox")
    print("connected")
except OSError as e:
    print("refused:", e)
"""
    try:
        r = hostile(code, timeout_s=10)
    finally:
        stop.set()
        t.join()
        srv.close()
    if strong(level):
        assert "refused" in r.output and got == [], r.output
    else:  # process isolation does not cut the network (docstring); it connects
        assert "connected" in r.output


def test_killing_the_parent_and_everyone_else_leaves_us_running(level):
    needs_containment(level, "kill(-1)")
    me = os.getpid()
    code = f"""
import signal
for target in (os.getppid(), {me}, -1):
    try:
        os.kill(target, signal.SIGKILL)
        print("sent to", target)
    except OSError as e:
        print("refused:", target, e)
"""
    r = hostile(code, timeout_s=10)
    assert r.status in ("passed", "failed")
    assert sandbox.run_python("print('still here')").output == "still here\n"  # and so is the harness


def test_printing_a_gigabyte_is_capped_and_costs_no_memory(level):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = "import sys\nb = b'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.buffer.write(b)\n"
    r = hostile(code, timeout_s=60)
    assert r.status == "passed" and r.truncated
    assert len(r.output.encode()) <= sandbox.OUTPUT_CAP
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB


def test_deep_recursion_crashes_only_the_program(level):
    # repr() of a million nested lists recurses in C: past the C stack it is a segfault
    code = "import sys\nsys.setrecursionlimit(10**8)\nl = []\nfor _ in range(10**6):\n    l = [l]\nrepr(l)\n"
    r = hostile(code, timeout_s=30)
    assert r.status == "failed" and r.returncode == -11, r.output


def test_a_file_past_the_size_limit_fails(level):
    r = hostile("open('big', 'wb').write(b'x' * (2 << 20))\n", timeout_s=10, fsize_bytes=1 << 20)
    assert r.status == "failed" and "File too large" in r.output


def test_other_languages_run_in_the_sandbox(level):
    cpp = b'#include <cstdio>\nint main() { std::puts("hello from c++"); return 0; }\n'
    argv = ["/bin/sh", "-c", "g++ -o prog prog.cpp && ./prog"]
    if not all(os.path.exists(f"/usr/bin/{t}") for t in ("g++",)):
        pytest.skip("g++ not installed")
    r = sandbox.run(argv, files={"prog.cpp": cpp}, timeout_s=60, mem_bytes=None)
    assert r.status == "passed" and "hello from c++" in r.output, r.output


def test_isolation_is_probed_and_reported():
    info = sandbox.isolation()
    assert info["level"] in ("namespaces", "process") and info["uid"] in ("own", "same")
    assert (info["why"] == "") == (info["level"] == "namespaces")


# ---------------------------------------------------------------------------------------------
# Through the harness: EvalPlus's guard (os.fork = None, ...) is undone by the program itself,
# so only the sandbox stands between it and us; every hostile answer fails, the good one passes.

# Each is the task's function with a hostile body (it can never return the right answer).
HOSTILE_BODIES = {
    "fork bomb": "import posix\n    while True:\n        try:\n            posix.fork()\n        except OSError:\n            pass",
    "memory bomb": "x = []\n    while True:\n        x.append(bytearray(64 << 20))",
    "kills its parent": "import posix, signal\n    posix.kill(posix.getppid(), signal.SIGKILL)\n    posix.kill(-1, signal.SIGKILL)",
    "escaped child": ("import posix, signal, time\n    if posix.fork() == 0:\n        posix.setsid()\n"
                      "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n        time.sleep(120)"),
    "prints a lot": "import posix\n    for _ in range(256):\n        posix.write(1, b'x' * (1 << 20))",
    "deep recursion": ("import sys\n    sys.setrecursionlimit(10**8)\n    l = []\n    for _ in range(10**6):\n"
                       "        l = [l]\n    return repr(l)"),
    "infinite loop": "while True:\n        pass",
    "deletes files": "import shutil\n    shutil.rmtree('/', ignore_errors=True)",
}


def test_the_harness_judges_hostile_answers_as_failures_and_keeps_going(level):
    needs_containment(level, "hostile answers")
    bench = ed.load("humaneval")
    tid = "HumanEval/0"
    p = bench.problems[tid]
    good = p["prompt"] + p["canonical_solution"]
    head = "def has_close_elements(numbers, threshold):\n    "
    samples = [{"task_id": tid, "solution": head + body + "\n"} for body in HOSTILE_BODIES.values()]
    samples.append({"task_id": tid, "solution": good})
    gt = harness.ground_truth(bench, task_ids=[tid])
    rows = harness.evaluate_samples(bench, samples, gt=gt, workers=2, warm=level == "warm")["eval"][tid]
    verdicts = {name: (r["base_status"], r["reason"]) for name, r in zip(HOSTILE_BODIES, rows)}
    assert all(status != "pass" for status, _ in verdicts.values()), verdicts
    assert rows[-1]["base_status"] == rows[-1]["plus_status"] == "pass"
    if sandbox.isolation()["uid"] == "own":  # every run had its own uid from our range: none of them has a process left
        lo = sandbox.UID_BASE + (os.getpid() % 1000) * sandbox.UID_SLOTS
        deadline = time.monotonic() + 3
        while (left := [p for p in os.listdir("/proc") if p.isdigit()
                        and lo <= (sandbox._owner(p) or -1) < lo + sandbox.UID_SLOTS]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"stray processes {left}"
