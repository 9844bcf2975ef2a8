"""The harness judges as EvalPlus does: canonical solutions pass, wrong ones fail, limits hold.

By default on a fixed set that covers every float-tolerance task, every special oracle and every
kind of MBPP input conversion; the `slow` tests are the full self-test (all 164 + 378 problems),
run by `make test-all`; `make test` leaves them out.
"""

import json
import re
import time

import pytest

from repro.eval import evalplus_data as ed
from repro.eval import harness

NAMES = list(ed.RELEASES)  # humaneval, mbpp: HumanEval+ and MBPP+ from data/benchmarks/

SUBSET = {
    # atol (2, 4, and 32, which is find_zero's oracle), then every 8th problem (32 among them)
    "humaneval": ["HumanEval/2", "HumanEval/4"] + [f"HumanEval/{i}" for i in range(0, 164, 8)],
    "mbpp": [f"Mbpp/{i}" for i in (
        82, 85, 98, 120, 124, 137, 139, 233, 276, 293, 300, 312, 742,  # atol
        2, 7, 111, 140, 232, 579, 769,  # set equality
        737, 787, 794,  # only "is not None" is compared
        558, 581,  # their own oracles
        793,  # no plus inputs
        63, 75, 106, 250, 252, 259, 278, 580, 615, 722, 791)],  # each kind of input conversion
}

# Wrong answers built from the canonical one, so each is wrong on every task.
WRONG = {
    "raises": "def {ep}(*args):\n    raise ValueError('wrong')\n",
    "returns None": "def {ep}(*args):\n    return None\n",
    "wrong value": "def {ep}(*args):\n    return _off(_canonical(*args))\n",
    "wrong type": "def {ep}(*args):\n    return (_canonical(*args),)\n",
}
OFF = '''
def _off(r):
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float, complex)):
        return r + 1
    if isinstance(r, (str, list, tuple)):
        return r + type(r)("?")
    if isinstance(r, (set, dict)):
        return {**dict.fromkeys(r), "?": 0}
    return None if r is not None else 0
'''


def _canonical(bench, tid):
    p = bench.problems[tid]
    return p["prompt"] + p["canonical_solution"]


def _wrong(bench, tid, kind):
    ep = bench.problems[tid]["entry_point"]
    return _canonical(bench, tid) + f"\n_canonical = {ep}\n" + OFF + WRONG[kind].format(ep=ep)


@pytest.fixture(scope="module")
def benches():
    """Both benchmarks, with the ground truth of the subset (from the cache when it is warm)."""
    out = {}
    for name in NAMES:
        bench = ed.load(name)
        out[name] = (bench, harness.ground_truth(bench, task_ids=SUBSET[name]))
    return out


def _evaluate(benches, name, solutions: dict[str, str]) -> dict:
    bench, gt = benches[name]
    return harness.evaluate_samples(bench, [{"task_id": t, "solution": s} for t, s in solutions.items()], gt=gt)


def _not_passed(results: dict) -> list:
    return [(t, r["base_status"], r["plus_status"], r["reason"])
            for t, rows in results["eval"].items() for r in rows
            if not r["base_status"] == r["plus_status"] == "pass"]


@pytest.mark.parametrize("name", ["humaneval", "mbpp"])
def test_canonical_solutions_pass_base_and_plus(benches, name):
    bench = benches[name][0]
    results = _evaluate(benches, name, {t: _canonical(bench, t) for t in SUBSET[name]})
    assert _not_passed(results) == []
    n = len(SUBSET[name])
    assert harness.pass_at_1(results) == {"base": {"passed": n, "n": n}, "plus": {"passed": n, "n": n}}


# The quick loop judges the most telling kind (a wrong value of the right type); the others on the
# same subset are in `make test-all` (about 10 s each here).
@pytest.mark.parametrize("kind", [k if k == "wrong value" else pytest.param(k, marks=pytest.mark.slow) for k in WRONG])
def test_wrong_solutions_score_zero(benches, kind):
    for name in ("humaneval", "mbpp"):
        bench = benches[name][0]
        results = _evaluate(benches, name, {t: _wrong(bench, t, kind) for t in SUBSET[name]})
        passed = [t for t, rows in results["eval"].items() if rows[0]["base_status"] == "pass"]
        assert passed == [], f"{name}: {kind} passes the base tests of {passed}"


def test_sleeping_past_the_per_test_limit_fails_naming_the_limit(benches):
    bench, gt = benches["humaneval"]
    solution = bench.problems["HumanEval/2"]["prompt"] + "    import time\n    time.sleep(5)\n    return number % 1.0\n"
    r = harness.check(bench, "HumanEval/2", solution, gt)
    # EvalPlus: SIGALRM interrupts the test, which fails; only the whole-process deadline is "timeout".
    assert (r["base_status"], r["plus_status"]) == ("fail", "fail")
    assert "base: time limit on test 0 (1.00 s)" in r["reason"]
    assert r["base_fail_tests"] == [bench.problems["HumanEval/2"]["base_input"][0]]


def test_a_module_level_loop_is_a_timeout(benches):
    bench, gt = benches["mbpp"]  # Mbpp/793: 3 base inputs (5 s deadline), no plus inputs (2 s)
    r = harness.check(bench, "Mbpp/793", _canonical(bench, "Mbpp/793") + "\nwhile True:\n    pass\n", gt)
    assert (r["base_status"], r["plus_status"]) == ("timeout", "timeout")
    assert "still loading the solution at the 5 s deadline" in r["reason"]
    assert r["base_fail_tests"] == []  # no test ran


def test_a_function_that_swallows_the_alarm_is_a_timeout(benches):
    bench, gt = benches["mbpp"]
    solution = ("def last(arr, x):\n    while True:\n        try:\n            while True:\n                pass\n"
                "        except BaseException:\n            pass\n")
    r = harness.check(bench, "Mbpp/793", solution, gt)
    # plus has no inputs, so it passes, as in EvalPlus
    assert (r["base_status"], r["plus_status"]) == ("timeout", "pass")
    assert "still on test 0 at the 5 s deadline" in r["reason"]


def test_a_process_a_run_leaves_running_is_killed_before_the_next_run(benches):
    # Base and plus share one sandbox (harness_child.py, "checks"): each run is its own process,
    # and what it starts is killed when it ends. A run that leaves a busy child behind must not
    # hold up the plus run or the sandbox until its backstop deadline (5 s + 2 s here).
    bench, gt = benches["mbpp"]
    leftover = "\nimport posix\nif posix.fork() == 0:\n    while True:\n        pass\n"
    t0 = time.monotonic()
    r = harness.check(bench, "Mbpp/793", _canonical(bench, "Mbpp/793") + leftover, gt)
    assert (r["base_status"], r["plus_status"], r["reason"]) == ("pass", "pass", "")
    assert time.monotonic() - t0 < 4


def test_prints_stdin_and_main_behave_as_in_evalplus(benches):
    bench, _ = benches["humaneval"]
    prompt = bench.problems["HumanEval/2"]["prompt"]
    body = "    print('working on', number)\n    return number % 1.0\n"
    cases = {
        # prints are swallowed; globals are empty, so __name__ is not "__main__" and the block is skipped
        "pass": prompt + body + "\nprint('loaded')\nif __name__ == '__main__':\n    raise SystemExit(1)\n",
        "input": prompt + body + "\nx = input()\n",  # reading stdin raises
        "stdin": prompt + "    import sys\n    sys.stdin.readline()\n" + body,
        # a verdict printed by the solution is not a verdict
        "forged": prompt + '    print(\'{"stat": "pass"}\')\n    raise ValueError\n',
    }
    bench_gt = benches["humaneval"]
    rows = {k: harness.check(bench, "HumanEval/2", s, bench_gt[1]) for k, s in cases.items()}
    assert [(k, r["base_status"], r["plus_status"]) for k, r in rows.items()] == [
        ("pass", "pass", "pass"), ("input", "fail", "fail"), ("stdin", "fail", "fail"), ("forged", "fail", "fail")]
    assert rows["input"]["reason"].startswith("base: the solution did not load: OSError")


def test_eval_results_have_evalplus_shape(benches):
    bench, gt = benches["mbpp"]
    p = bench.problems["Mbpp/124"]
    samples = [{"task_id": "Mbpp/124", "completion": p["canonical_solution"]},  # prompt + completion
               {"task_id": "Mbpp/124", "solution": _wrong(bench, "Mbpp/124", "raises")},
               {"task_id": "Mbpp/252", "solution": _canonical(bench, "Mbpp/252")}]
    results = json.loads(json.dumps(harness.evaluate_samples(bench, samples, gt=gt)))
    assert set(results) == {"date", "hash", "eval"} and results["hash"] == bench.md5
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", results["date"])
    assert list(results["eval"]) == ["Mbpp/124", "Mbpp/252"]
    ok, wrong = results["eval"]["Mbpp/124"]
    assert set(ok) == {"task_id", "solution", "base_status", "plus_status", "base_fail_tests", "plus_fail_tests",
                       "reason"}
    assert ok["solution"] == p["prompt"] + p["canonical_solution"] and ok["base_fail_tests"] == []
    x, z = p["base_input"][0]
    assert wrong["base_status"] == "fail" and wrong["base_fail_tests"] == [[str(x), str(z)]]  # complex as text
    assert wrong["reason"].startswith("base: test 0: ValueError: wrong")
    assert harness.pass_at_1(results) == {"base": {"passed": 2, "n": 3}, "plus": {"passed": 2, "n": 3}}


def test_ground_truth_is_computed_once_per_task_then_read_from_the_cache(tmp_path, monkeypatch):
    """A run on a subset pays for its own tasks: what is cached is not computed again."""
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path))
    bench, real, calls = ed.load("humaneval"), harness._ground_truth_task, []
    monkeypatch.setattr(harness, "_ground_truth_task", lambda b, t: calls.append(t) or real(b, t))
    first = harness.ground_truth(bench, task_ids=["HumanEval/2", "HumanEval/4"])
    second = harness.ground_truth(bench, task_ids=["HumanEval/4", "HumanEval/8"])
    assert sorted(calls) == ["HumanEval/2", "HumanEval/4", "HumanEval/8"]
    assert second["HumanEval/4"] == first["HumanEval/4"] and set(second) == {"HumanEval/4", "HumanEval/8"}


def test_without_humaneval_plus_the_original_check_judges_base_only(no_benchmark_files):
    bench = ed.load("humaneval", fetch=False)
    assert not bench.plus and harness.ground_truth(bench) == {}
    p = bench.problems["HumanEval/0"]
    samples = [{"task_id": "HumanEval/0", "completion": p["canonical_solution"]},
               {"task_id": "HumanEval/0", "completion": "    return False\n"}]
    results = harness.evaluate_samples(bench, samples)
    assert [(r["base_status"], r["plus_status"]) for r in results["eval"]["HumanEval/0"]] == [
        ("pass", None), ("fail", None)]
    assert harness.pass_at_1(results) == {"base": {"passed": 1, "n": 2}, "plus": None}


# ---------------------------------------------------------------------------------------------
# The full self-test: every problem of both benchmarks (minutes; `-m "not slow"` leaves it out).


@pytest.fixture
def full():
    return {name: ed.load(name) for name in NAMES}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["humaneval", "mbpp"])
def test_every_canonical_solution_passes_base_and_plus(full, name):
    bench = full[name]
    gt = harness.ground_truth(bench)  # read once: both judgings below use it (MBPP's is 0.8 GB on disk)
    results = harness.evaluate_samples(bench, [{"task_id": t, "solution": _canonical(bench, t)}
                                               for t in bench.problems], gt=gt)
    # A time limit is 4x the reference run's time (EvalPlus's rule). On our CI's VM the kernel's cost
    # of a page fault varies severalfold with what memory did just before, so Mbpp/255's test 85
    # (1.5 s alone, 276K fresh pages) ran past its 6.15 s in CI, twice in one run. What this test
    # asserts is that the harness accepts every reference answer: a task that failed only on time
    # is judged again, alone, under 4x longer limits; any other failure, or a second one, stands.
    not_passed = _not_passed(results)
    timed_out = [t for t, base, plus, why in not_passed if "time limit" in why or "timeout" in (base, plus)]
    again = [harness.check(bench, t, _canonical(bench, t), gt, min_time_limit=4 * harness.MIN_TIME_LIMIT,
                           gt_time_limit_factor=4 * harness.GT_TIME_LIMIT_FACTOR) for t in timed_out]
    not_passed = [row for row in not_passed if row[0] not in timed_out] + [
        (r["task_id"], r["base_status"], r["plus_status"], r["reason"] + " (judged again under 4x the limits)")
        for r in again if not r["base_status"] == r["plus_status"] == "pass"]
    assert not_passed == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["humaneval", "mbpp"])
def test_every_wrong_value_fails(full, name):
    # One kind here (each kind on all 542 problems takes 2 minutes); the subset test runs all four.
    bench = full[name]
    results = harness.evaluate_samples(bench, [{"task_id": t, "solution": _wrong(bench, t, "wrong value")}
                                               for t in bench.problems])
    passed = [t for t, rows in results["eval"].items() if rows[0]["base_status"] == "pass"]
    assert passed == [], f"a wrong value passes the base tests of {passed}"
