import time

import pytest

from repro import evaluate, sandbox
from repro.benchmarks import humaneval


@pytest.mark.parametrize("i", [0, 1, 2])
def test_canonical_solutions_pass(i):
    p = humaneval()[i]
    assert sandbox.run_python(evaluate.program(p, p["canonical_solution"])).status == "passed"


def test_wrong_solution_fails():
    p = humaneval()[2]  # truncate_number
    res = sandbox.run_python(evaluate.program(p, "    return number\n"))
    assert res.status == "failed" and "AssertionError" in res.output


def test_infinite_loop_times_out_and_grandchildren_die(tmp_path):
    marker = tmp_path / "alive"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w')"
    code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {child!r}])\nwhile True: pass\n"
    t0 = time.monotonic()
    assert sandbox.run_python(code, timeout_s=1).status == "timeout"
    assert time.monotonic() - t0 < 5
    time.sleep(3.5)
    assert not marker.exists()  # the grandchild was killed with the group


def test_memory_limit_stops_a_memory_bomb():
    res = sandbox.run_python("x = bytearray(8 << 30)", timeout_s=10, mem_bytes=1 << 30)
    assert res.status == "failed" and "MemoryError" in res.output


def test_instruct_prompt_prefills_the_function():
    p = humaneval()[0]
    text, stops = evaluate.build_prompt(p, "instruct")
    assert "@@ Instruction" in text and text.endswith("@@ Response\n```python\n" + p["prompt"])
    assert stops == ["```"]


def test_wilson_interval_brackets_the_rate():
    lo, hi = evaluate.wilson(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    lo, hi = evaluate.wilson(5, 10)
    assert lo < 0.5 < hi
