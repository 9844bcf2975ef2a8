"""Warm workers (repro/eval/worker.py): a child cannot change the worker or the runs after it, a
lost worker is replaced and its run judged by a fresh interpreter, and the harness gives the same
verdicts warm as cold. The hostile programs themselves run warm in tests/test_sandbox.py."""

import os
import signal

import pytest

from repro import sandbox
from repro.eval import evalplus_data as ed
from repro.eval import harness, worker


@pytest.fixture
def pool():
    sandbox.isolation.cache_clear()
    if why := worker.available():
        pytest.skip(f"warm workers unavailable here: {why}")
    with worker.Pool(1, ("json",)) as p:
        yield p


def test_a_child_changes_nothing_for_the_next(pool):
    first = pool.run_python("""
import json, os, sys
os.fork = None
json.dumps = None
sys.modules["marker"] = sys
open("left.txt", "w").write("x")
os.mkdir("sub")
os.chmod("sub", 0)
for path in ("../left.txt", "/tmp/left.txt"):
    try:
        open(path, "w").write("x")
        print("wrote", path)
    except OSError as e:
        print("refused", path, e.errno)
""")
    assert first.status == "passed" and "wrote" not in first.output, first.output
    second = pool.run_python("""
import json, os, sys
assert os.fork is not None and json.dumps([1]) == "[1]" and "marker" not in sys.modules
assert os.listdir(".") == [] and os.listdir("..") == [os.path.basename(os.getcwd())], os.listdir("..")
assert sorted(os.listdir("/proc"))[0] == "1" and os.getpid() == 1
print("clean")
""")
    assert second.status == "passed" and second.output == "clean\n", second.output
    assert pool.restarts == 0 and len(pool.all) == 1


def test_a_lost_worker_is_replaced_and_its_run_judged_by_a_fresh_interpreter(pool):
    assert pool.run_python("print(1)").output == "1\n"
    lost = pool.all[0]
    os.killpg(lost.proc.pid, signal.SIGKILL)  # as if the worker had died between runs
    lost.proc.wait()
    r = pool.run_python("open('out', 'w').write('fine')", read_back=("out",))
    assert r.status == "passed" and r.files == {"out": b"fine"} and pool.restarts == 1
    assert pool.run_python("print(2)").output == "2\n" and pool.restarts == 1  # a fresh worker
    assert lost not in pool.all and len(pool.all) == 1


def test_bad_file_names_are_refused(pool):
    with pytest.raises(ValueError):
        pool.run_python("pass", files={"../x": b""})
    with pytest.raises(ValueError):
        pool.run_python("pass", read_back=("program.py",))


AWKWARD = {
    "canonical": "",
    "sleep past limit": "import time\ntime.sleep(3)\n",  # only in the call: see the body below
    "os._exit at load": "import os\nos._exit(0)\n",
    "sys.exit at load": "import sys\nsys.exit(0)\n",
    "exit() at load": "exit(0)\n",
    "memory bomb at load": "_x = bytearray(16 << 30)\n",
    "prints at load": "print('loaded')\nimport sys\nsys.stderr.write('loaded\\n')\n",
    "stdin at load": "import sys\n_line = sys.stdin.readline()\n",
    "kills its group": "import posix, signal\nposix.kill(0, signal.SIGKILL)\n",
}


def test_the_harness_judges_the_same_warm_and_cold(pool):
    bench = ed.load("humaneval")
    tid = "HumanEval/2"
    p = bench.problems[tid]
    gt = harness.ground_truth(bench, task_ids=[tid])
    canonical = p["prompt"] + p["canonical_solution"]
    solutions = {k: canonical + "\n" + code for k, code in AWKWARD.items() if k != "sleep past limit"}
    solutions["sleep past limit"] = p["prompt"] + "    import time\n    time.sleep(3)\n    return number % 1.0\n"
    with worker.Pool(2, harness.PRELOAD) as warm:
        for kind, sol in solutions.items():
            a = harness.check(bench, tid, sol, gt, pool=warm)
            b = harness.check(bench, tid, sol, gt)
            assert a == b, kind
        assert warm.restarts == 0
