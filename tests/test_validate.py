"""The validation stage: tests the teacher writes, run against each solution in the sandbox."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from repro import validate
from repro.artifacts import ReproError
from repro.config import GenerateConfig, ValidateConfig
from builders import validate_clean_file

ADD = "```python\ndef add(a, b):\n    return a + b\n```\nIt adds."
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
LOOP = "```python\ndef add(a, b):\n    while True:\n        pass\n```"


CUT = "<cut at max_tokens>"


def fake_ask(answers: dict[str, str]):
    """An `ask` that answers from `answers` by the request's item (tests/<id>, solve/<id>/<k>)."""
    def ask(cfg, requests, store, progress=None, label=""):
        out = {}
        for r in requests:
            item = r.key.rsplit("/", 1)[0]
            text = answers.get(item, "")
            cut = text.endswith(CUT)  # an answer that ran into the token limit
            out[r.key] = {"key": r.key, "text": text.removesuffix(CUT), "finish_reason": "length" if cut else "stop",
                          "completion_tokens": 10}
        return out, {"asked": len(requests), "reused": 0, "completion_tokens": 10 * len(requests),
                     "prompt_tokens": 0, "seconds": 1.0, "tokens_per_second": 10.0}
    return ask


GOOD_TESTS = "```python\nassert add(2, 3) == 5\nassert add(-1, 1) == 0\n```"


def run(tmp_path, monkeypatch, solutions, answers, **cfg):
    monkeypatch.setattr(validate, "ask", fake_ask(answers))
    src = validate_clean_file(tmp_path / "clean.parquet", solutions)
    stats = validate.run(ValidateConfig(timeout_s=3, **cfg), GenerateConfig(), src, tmp_path / "validated.parquet",
                         tmp_path / "validation.jsonl", tmp_path / "store.jsonl")
    kept = {r["seed_id"]: r for r in pq.read_table(tmp_path / "validated.parquet").to_pylist()}
    log = {r["seed_id"]: r for r in map(json.loads, (tmp_path / "validation.jsonl").read_text().splitlines())}
    return stats, kept, log


def test_passing_kept_failing_removed_timeout_recorded_untested_kept(tmp_path, monkeypatch):
    stats, kept, log = run(tmp_path, monkeypatch, {
        "good": ("python", ADD), "wrong": ("python", WRONG), "loop": ("python", LOOP),
        "java": ("java", "```java\nclass A {}\n```"), "none": ("python", "no code at all")},
        {"tests/good": GOOD_TESTS, "tests/wrong": GOOD_TESTS, "tests/loop": GOOD_TESTS})
    assert {k: v["status"] for k, v in log.items()} == {
        "good": "passed", "wrong": "failed", "loop": "timeout", "java": "not_run", "none": "not_run"}
    assert "AssertionError" in log["wrong"]["detail"]
    assert set(kept) == {"good", "java", "none"}
    assert kept["good"]["solution"] == ADD  # the schema and the text are clean.parquet's
    assert pq.read_schema(tmp_path / "validated.parquet") == pq.read_schema(tmp_path / "clean.parquet")
    assert (stats["passed"], stats["failed"], stats["timeout"], stats["not_run"], stats["kept"]) == (1, 1, 1, 2, 3)
    assert stats["per_language"]["python"]["pass_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert stats["per_language"]["java"]["not_run"] == 1 and stats["programs_run"] == 3


def test_untested_drop_and_no_tests(tmp_path, monkeypatch):
    stats, kept, log = run(tmp_path, monkeypatch, {
        "good": ("python", ADD), "noassert": ("python", ADD), "copy": ("python", ADD),
        "java": ("java", "```java\nclass A {}\n```")},
        {"tests/good": GOOD_TESTS, "tests/noassert": "```python\nprint(add(1, 2))\n```",
         # the teacher copies a wrong add into its tests: the copy is dropped, the solution's own is tested
         "tests/copy": "```python\ndef add(a, b):\n    return 0\nassert add(2, 3) == 5\n```"},
        untested="drop")
    assert log["noassert"]["status"] == "no_tests" and "no assertion" in log["noassert"]["detail"]
    assert log["copy"]["status"] == "passed" and "def add" not in log["copy"]["tests"]
    assert set(kept) == {"good", "copy"}


def test_main_guard_does_not_run_and_test_functions_do(tmp_path, monkeypatch):
    sol = "```python\ndef add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n```"
    _, kept, log = run(tmp_path, monkeypatch, {"guard": ("python", sol), "fn": ("python", WRONG)},
                       {"tests/guard": GOOD_TESTS, "tests/fn": "```python\ndef test_add():\n    assert add(2, 3) == 5\n```"})
    assert log["guard"]["status"] == "passed"   # input() in the demo would have failed it
    assert log["fn"]["status"] == "failed"      # a pytest-style test function is called


def test_truncated_tests_keep_their_complete_statements(tmp_path, monkeypatch):
    cut = "```python\nassert add(2, 3) == 5\nassert add(1, 1) == 2\nassert add(4,"
    _, kept, log = run(tmp_path, monkeypatch, {"cut": ("python", ADD)}, {"tests/cut": cut})
    assert log["cut"]["status"] == "no_tests"  # an answer that stopped by itself is taken as it is
    _, kept, log = run(tmp_path, monkeypatch, {"cut": ("python", ADD)}, {"tests/cut": cut + CUT})
    assert log["cut"]["status"] == "passed" and log["cut"]["tests"].count("assert") == 2


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_console_assert_fails_and_copies_are_refused(tmp_path, monkeypatch):
    js = "```javascript\nfunction add(a, b) { return a - b; }\n```"
    ok = "```javascript\nexport function add(a, b) { return a + b; }\n```"
    _, kept, log = run(tmp_path, monkeypatch, {"wrong": ("javascript", js), "ok": ("javascript", ok),
                                               "copy": ("javascript", ok)},
                       {"tests/wrong": "```js\nconsole.assert(add(2, 3) === 5);\n```",
                        "tests/ok": "```js\nassert.strictEqual(add(2, 3), 5);\n```",
                        "tests/copy": "```js\nfunction add(a, b) { return 5; }\nassert(add(2, 3) === 5);\n```"})
    assert log["wrong"]["status"] == "failed"  # console.assert only prints in Node; here it throws
    assert log["ok"]["status"] == "passed"     # an ES-module solution runs as plain definitions
    assert log["copy"]["status"] == "no_tests" and "again" in log["copy"]["detail"]


def test_samples_keep_the_first_passing_candidate(tmp_path, monkeypatch):
    stats, kept, log = run(tmp_path, monkeypatch, {"wrong": ("python", WRONG), "hopeless": ("python", WRONG)},
                           {"tests/wrong": GOOD_TESTS, "tests/hopeless": GOOD_TESTS,
                            "solve/wrong/1": WRONG, "solve/wrong/2": ADD, "solve/hopeless/1": LOOP,
                            "solve/hopeless/2": WRONG}, samples=3)
    assert log["wrong"]["status"] == "passed" and log["wrong"]["candidate"] == 2
    assert kept["wrong"]["solution"] == ADD.strip() and "hopeless" not in kept
    assert stats["rescued_by_sampling"] == 1


def test_bad_settings_are_one_line(tmp_path):
    with pytest.raises(ReproError, match="validate.untested='maybe'"):
        validate.check(ValidateConfig(untested="maybe"))
    with pytest.raises(ReproError, match="validate.prompt='nope.txt'"):
        validate.check(ValidateConfig(prompt="nope.txt"))


# ---------------------------------------------------------------------------------------------
# With the real teacher (smoke settings): it writes the tests, they run.


@pytest.mark.e2e
def test_real_teacher_keeps_a_passing_pair_and_removes_a_failing_one(tmp_path):
    src = validate_clean_file(tmp_path / "clean.parquet", {"good": ("python", ADD), "wrong": ("python", WRONG),
                                                  "loop": ("python", LOOP)})
    gen = GenerateConfig(threads=0, parallel=4)
    cfg = ValidateConfig(max_tokens=256, timeout_s=5)
    store = tmp_path / "store.jsonl"
    stats = validate.run(cfg, gen, src, tmp_path / "validated.parquet", tmp_path / "validation.jsonl", store)
    log = {r["seed_id"]: r for r in map(json.loads, (tmp_path / "validation.jsonl").read_text().splitlines())}
    kept = {r["seed_id"] for r in pq.read_table(tmp_path / "validated.parquet").to_pylist()}
    assert log["good"]["status"] == "passed", log["good"]
    assert log["wrong"]["status"] == "failed", log["wrong"]
    assert log["loop"]["status"] == "timeout", log["loop"]
    assert kept == {"good"} and stats["teacher"]["tests"]["asked"] == 3
    # A rerun asks the teacher nothing: its answers are in the store.
    again = validate.run(cfg, gen, src, tmp_path / "v2.parquet", tmp_path / "v2.jsonl", store)
    assert again["teacher"]["tests"]["asked"] == 0 and again["passed"] == 1
