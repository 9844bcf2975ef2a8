"""MultiPL-E harness self-test: MultiPL-E ships no canonical solutions, so hand-written correct and
wrong completions per language check the verdicts, and an empty completion must fail every problem.

Languages whose toolchain is missing here are skipped with the reason (the evaluation reports them
as "not run" the same way).
"""

import pytest

from repro.eval import multipl_e as me
from repro import sandbox
from repro.artifacts import ReproError
from repro.data.benchmarks import FILES, Missing

# Completions written as a model would: the body, then the function's closing brace (cut by the
# stop tokens where the tests bring their own).
RIGHT = {
    "java": {"HumanEval_2_truncate_number": "\n        return number - (float) Math.floor(number);\n    }\n",
             "HumanEval_53_add": "\n        return x + y;\n    }\n",
             "HumanEval_23_strlen": "\n        return string.length();\n    }\n"},
    "js": {"HumanEval_2_truncate_number": "\n  return number - Math.floor(number);\n}\n",
           "HumanEval_53_add": "\n  return x + y;\n}\n",
           "HumanEval_23_strlen": "\n  return string.length;\n}\n"},
    "cpp": {"HumanEval_2_truncate_number": "\n    return number - (long) number;\n}\n",
            "HumanEval_53_add": "\n    return x + y;\n}\n",
            "HumanEval_23_strlen": "\n    return string.size();\n}\n"},
    "php": {"HumanEval_2_truncate_number": "\n    return $number - floor($number);\n}\n",
            "HumanEval_53_add": "\n    return $x + $y;\n}\n"},
    "rs": {"HumanEval_2_truncate_number": "\n    number - number.floor()\n}\n",
           "HumanEval_53_add": "\n    x + y\n}\n",
           "HumanEval_23_strlen": "\n    string.len() as isize\n}\n"},
}
WRONG = {  # wrong values, and one that does not compile (or parse)
    "java": {"HumanEval_53_add": "\n        return x - y;\n    }\n", "HumanEval_23_strlen": "\n        return string.size()\n    }\n"},
    "js": {"HumanEval_53_add": "\n  return x - y;\n}\n", "HumanEval_23_strlen": "\n  return string.length +;\n}\n"},
    "cpp": {"HumanEval_53_add": "\n    return x - y;\n}\n", "HumanEval_23_strlen": "\n    return string.length() +;\n}\n"},
    "php": {"HumanEval_53_add": "\n    return $x - $y;\n}\n", "HumanEval_2_truncate_number": "\n    return $number -;\n}\n"},
    "rs": {"HumanEval_53_add": "\n    x - y\n}\n", "HumanEval_23_strlen": "\n    string.len() as i8 +\n}\n"},
}


def runnable(lang):
    if why := me.missing_tools(lang):
        pytest.skip(f"MultiPL-E {me.LANGS[lang].title} cannot run here: {why}")
    return me.load(lang)


@pytest.mark.parametrize("lang", list(RIGHT))
def test_right_completions_pass_and_wrong_ones_fail(lang):
    problems = runnable(lang)
    right = me.judge(problems, RIGHT[lang], workers=2)
    assert all(v["status"] == "pass" for v in right.values()), {n: v["reason"] for n, v in right.items()}
    wrong = me.judge(problems, WRONG[lang], workers=2)
    assert all(v["status"] == "fail" for v in wrong.values()), {n: v["reason"] for n, v in wrong.items()}
    reasons = [v["reason"] for v in wrong.values()]
    assert any(r.startswith(("compile error", "syntax error", "exit status")) for r in reasons)


@pytest.mark.parametrize("lang", list(RIGHT))
def test_an_empty_completion_fails_every_problem(lang):
    """Every 40th problem by default (all of them under `slow`): the tests alone never pass."""
    problems = runnable(lang)
    names = me.select(problems, stride=40)
    verdicts = me.judge(problems, {n: "" for n in names}, workers=2)
    assert [n for n, v in verdicts.items() if v["status"] == "pass"] == []


@pytest.mark.slow
@pytest.mark.parametrize("lang", list(RIGHT))
def test_an_empty_completion_fails_every_problem_all(lang):
    problems = runnable(lang)
    verdicts = me.judge(problems, {n: "" for n in problems.rows}, workers=2)
    assert [n for n, v in verdicts.items() if v["status"] == "pass"] == []


def test_an_endless_program_is_a_timeout():
    problems = runnable("js")
    code = me.program(problems.rows["HumanEval_53_add"], "\n  while (true) {}\n}\n")
    v = me.run_program("js", code, timeout_s=2.0)  # MultiPL-E's own 15 s, shortened for the test
    assert v == {"status": "timeout", "reason": "past the 2 s limit"}


def test_files_and_problems_are_the_published_ones():
    counts = {"java": 158, "js": 161, "cpp": 161, "php": 161, "swift": 158, "rs": 156}
    for lang, n in counts.items():
        p = me.load(lang)
        assert len(p.rows) == n and p.sha256 == FILES[f"multipl-e/{lang}"].sha256[0]
        assert not {32, 38, 50} & {me.humaneval_id(name) for name in p.rows}


def test_a_missing_or_changed_file_is_one_line(no_benchmark_files):
    with pytest.raises(Missing, match="git checkout -- data/benchmarks/multipl-e/humaneval-js-reworded.jsonl"):
        me.load("js", fetch=False)
    (no_benchmark_files / "multipl-e").mkdir()
    (no_benchmark_files / "multipl-e" / "humaneval-js-reworded.jsonl").write_text('{"name": "HumanEval_0_x"}\n')
    with pytest.raises(ReproError, match="sha256"):
        me.load("js")
    with pytest.raises(ReproError, match="evaluate.multipl_e_langs: 'go' is unknown"):
        me.load("go")


def test_a_missing_toolchain_is_not_run_with_the_reason(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "swiftc not installed" in me.missing_tools("swift")
    assert "node not installed" in me.missing_tools("js")


@pytest.mark.parametrize("has_toolchain", [True, False])
def test_rustup_without_a_toolchain_is_no_rustc(tmp_path, monkeypatch, has_toolchain):
    """rustup's `rustc` proxy is on PATH, but answers only where rustup has a toolchain for this
    user (a new HOME has none): then Rust is not run, rather than run with a rustc that is not there."""
    sysroot = tmp_path / "toolchain"
    (sysroot / "bin").mkdir(parents=True)
    if has_toolchain:
        (sysroot / "bin" / "rustc").write_text("#!/bin/sh\n")
        (sysroot / "bin" / "rustc").chmod(0o755)
    bin_dir = tmp_path / "cargo-bin"
    bin_dir.mkdir()
    (bin_dir / "rustup").write_text(f"#!/bin/sh\n[ -x {sysroot}/bin/rustc ] || exit 1\necho {sysroot}\n")
    (bin_dir / "rustup").chmod(0o755)
    (bin_dir / "rustc").symlink_to("rustup")
    monkeypatch.setenv("PATH", str(bin_dir))
    if has_toolchain:
        assert me.missing_tools("rs") == "" and sandbox.tool("rustc")[0] == str(sysroot / "bin" / "rustc")
    else:
        assert me.missing_tools("rs").startswith("rustc not installed")


def test_completions_are_cut_at_the_first_stop_token():
    row = {"prompt": "  int f() {\n", "stop_tokens": ["\n}", "\n//"], "tests": "}\nint main() {}"}
    assert me.cut(row, "\n  return 1;\n}\nint g() {}") == "\n  return 1;"
    assert me.program(row, "\n  return 1;\n// more\n}") == "int f() {\n  return 1;\n}\nint main() {}"
