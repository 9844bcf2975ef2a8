import gzip
import json
import time

import duckdb
import pytest

from repro import clean, cli, languages, sandbox
from repro.artifacts import ReproError
from repro.data.benchmarks import BENCH_DIR, humaneval
from repro.config import CleanConfig
from builders import stdlib_pairs



def _pairs(tmp_path, rows, name="pairs.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps({"language": "python", "path": "f.py", **r}) + "\n" for r in rows))
    return p


def _run(tmp_path, rows, **cfg):
    cfg = {"benchmarks": ["humaneval"], "syntax_check": False, "similarity": False, **cfg}
    stats = clean.run(CleanConfig(**cfg), _pairs(tmp_path, rows), tmp_path / "clean.parquet", tmp_path / "removed.parquet")
    kept = [r[0] for r in duckdb.sql(f"SELECT seed_id FROM read_parquet('{tmp_path / 'clean.parquet'}')").fetchall()]
    rem = duckdb.sql(f"SELECT seed_id, reason, duplicate_of, task_id, method FROM read_parquet('{tmp_path / 'removed.parquet'}')")
    return stats, kept, {r[0]: r[1:] for r in rem.fetchall()}


# ---------------------------------------------------------------------------------------------
# Planted contamination, against every benchmark file in data/benchmarks/


MBPP_REWORDED = {  # task id -> a light rewording of its problem text
    "31": "Implement a routine that can find the top k integers that occur most frequently from given lists "
          "of sorted and distinct integers, using a heap queue algorithm.",
    "39": "Create a function that checks if the letters of a given string can be rearranged so that two "
          "characters that are adjacent to each other are different!",
}
GSM8K_REWORDED = ("Kylar went to the shop to buy glasses for his new flat. One glass costs $5, but every second "
                  "glass costs only 60% of the price. Kylar wants to buy 16 glasses. How much must he pay for them?")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    he = humaneval()
    mbpp = {str(r["task_id"]): r for r in map(json.loads, (BENCH_DIR / "mbpp.jsonl").open())}
    ds = [json.loads(x) for x in gzip.open(BENCH_DIR / "ds1000.jsonl.gz", "rt")]
    rows = stdlib_pairs(40)
    doc0 = he[0]["prompt"].split('"""')[1].strip()
    planted = {
        "exact-he": {"problem": doc0, "solution": "pass"},
        "case-mbpp": {"problem": mbpp["11"]["text"].upper(), "solution": "```python\npass\n```"},
        "inside-he": {"problem": "Background. " + he[2]["prompt"].split('"""')[1].strip() + "\nAlso handle errors.",
                      "solution": "Here it is:\n```python\n" + he[2]["canonical_solution"] + "```\nDone."},
        "reworded-mbpp-31": {"problem": MBPP_REWORDED["31"], "solution": "```python\nimport heapq\n```"},
        "reworded-mbpp-39": {"problem": MBPP_REWORDED["39"], "solution": "```python\nfrom collections import Counter\n```"},
        "reworded-gsm8k": {"problem": GSM8K_REWORDED, "solution": "Pay 64 dollars."},
        "half-ds1000": {"problem": ds[0]["prompt"][:400], "solution": "df.iloc[List]"},
    }
    rows += [{"seed_id": k, "seed": k, **v} for k, v in planted.items()]
    cfg = CleanConfig(syntax_check=False, similarity=False)  # every benchmark, from data/benchmarks/
    stats = clean.run(cfg, _pairs(tmp, rows), tmp / "clean.parquet", tmp / "removed.parquet")
    report = json.loads((tmp / "decontamination.json").read_text())
    flags: dict[str, set] = {}
    for f in report["flagged"]:
        flags.setdefault(f["seed_id"], set()).add((f["method"], f["bench"], f["task_id"]))
    return stats, report, flags, tmp


def test_substring_catches_exact_case_changed_and_embedded_copies(planted):
    _, _, flags, _ = planted
    assert ("substring", "humaneval", "HumanEval/0") in flags["exact-he"]
    assert ("substring", "mbpp", "11") in flags["case-mbpp"]
    assert ("substring", "humaneval", "HumanEval/2") in flags["inside-he"]


def test_ngram_also_catches_reworded_and_partial_copies_that_substring_misses(planted):
    _, _, flags, _ = planted
    for sid, bench, task in [("reworded-mbpp-31", "mbpp", "31"), ("reworded-mbpp-39", "mbpp", "39"),
                             ("reworded-gsm8k", "gsm8k", "5"), ("half-ds1000", "ds1000", "0")]:
        assert ("ngram", bench, task) in flags[sid], sid
        assert not any(m == "substring" for m, _, _ in flags[sid]), sid
    for sid in ("exact-he", "case-mbpp", "inside-he"):
        assert any(m == "ngram" for m, _, _ in flags[sid]), sid


def test_clean_corpus_text_is_not_flagged_and_every_plant_is_removed(planted, tmp_path):
    stats, report, flags, tmp = planted
    assert set(flags) == {"exact-he", "case-mbpp", "inside-he", "reworded-mbpp-31", "reworded-mbpp-39",
                          "reworded-gsm8k", "half-ds1000"}
    removed = duckdb.sql(f"SELECT seed_id, reason, task_id, match FROM read_parquet('{tmp / 'removed.parquet'}')").fetchall()
    assert {r[0] for r in removed} == set(flags) and all(r[1].startswith("contaminated_") and r[3] for r in removed)
    assert stats["kept"] == 40


def test_report_marks_apps_not_checked_and_names_the_data(planted):
    _, report, _, tmp = planted
    assert report["benchmarks"]["apps"]["status"] == "not checked"
    assert report["benchmarks"]["mbpp"]["sha256"] and report["benchmarks"]["mbpp"]["problems"] == 500
    md = (tmp / "decontamination.md").read_text()
    assert "| apps | not checked |" in md and "reworded-gsm8k" in md


# ---------------------------------------------------------------------------------------------
# Duplicates


def test_whitespace_insensitive_duplicates_name_the_kept_pair(tmp_path):
    rows = [{"seed_id": "a", "seed": "x = 1", "problem": "Sort a list.", "solution": "sorted(xs)"},
            {"seed_id": "b", "seed": "y = 2", "problem": "Sort  a\nlist.", "solution": "other()"},
            {"seed_id": "c", "seed": "x=1", "problem": "Something else.", "solution": "z()"}]
    stats, kept, removed = _run(tmp_path, rows)
    assert kept == ["a"]
    assert removed["c"][:2] == ("duplicate_seed", "a") and removed["b"][:2] == ("duplicate_problem", "a")
    assert stats["removed_by_reason"] == {"duplicate_problem": 1, "duplicate_seed": 1}


def test_near_duplicates_are_removed_naming_the_kept_pair(tmp_path):
    base = stdlib_pairs(3)
    twin = dict(base[0], seed_id="twin", seed="other seed", problem=base[0]["problem"] + " Please.",
                solution=base[0]["solution"].replace("\n```", "\n# one more comment\n```"))
    stats, kept, removed = _run(tmp_path, base + [twin])
    assert removed == {"twin": ("near_duplicate", base[0]["seed_id"], None, None)}
    assert kept == [r["seed_id"] for r in base]
    _, kept, _ = _run(tmp_path, base + [twin], near_dup_threshold=0.0)
    assert "twin" in kept


# ---------------------------------------------------------------------------------------------
# Syntax column


def test_syntax_column_per_language(tmp_path, monkeypatch):
    cases = {
        "py-ok": ("python", "```python\ndef f(x):\n    return x\n```", "ok"),
        "py-bad": ("python", "```python\ndef f(x)\n    return x\n```", "error (python)"),
        "sh-bad": ("shell", "```bash\nif true; then echo\n```", "error (shell)"),
        "js-ok": ("javascript", "```\nconst f = (x) => x + 1;\nexport default f;\n```", "ok"),
        "cpp-bad": ("cpp", "```cpp\nint main() { return 0 }\n```", "error (cpp)"),
        "java-bad": ("java", "```java\nclass A { void f() { int x = ; } }\n```", "error (java)"),
        "java-ok": ("java", "```java\nclass A { List<String> f() { return new ArrayList<>(); } }\n```", "ok"),
        "c-bad": ("c", "```c\nint main(void) { return 0 }\n```", "error (c)"),
        "rs-ok": ("rust", "```rust\npub fn f(x: i32) -> i32 { x + 1 }\n```", "ok"),
        "rs-bad": ("rust", "```rust\npub fn f(x: i32) -> i32 { x + }\n```", "error (rust)"),
        "none": ("python", "Just prose.", "skipped: no code block"),
        "other": ("python", "```text\noutput\n```", "skipped: no checker for text"),
    }
    blocks = [clean.code_blocks(sol, lang) for lang, sol, _ in cases.values()]
    got = dict(zip(cases, clean.check_syntax(blocks, timeout=60)))
    for k, (lang, _, want) in cases.items():
        checker = languages.syntax_checker(lang)
        missing = sandbox.missing(checker[0]) if checker else []
        if missing and want != "skipped: no code block":
            assert got[k][0] == f"skipped: {missing[0]} not installed"
        else:
            assert got[k][0].startswith(want), (k, got[k])
    assert got["py-ok"][1] is True and got["py-bad"][1] is False and got["none"][1] is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no tools at all
    assert clean.check_syntax([clean.code_blocks("```rust\nfn main() {}\n```", "rust")], 10) == \
        [("skipped: rustc not installed", None)]


def test_a_hostile_block_cannot_hang_or_exhaust_a_compiler():
    """g++ reading /dev/zero grows until the sandbox's limits stop it; the stage goes on."""
    if sandbox.missing(["g++"]):
        pytest.skip("g++ not installed")
    t0 = time.monotonic()
    [(status, ok)] = clean.check_syntax([clean.code_blocks('```cpp\n#include "/dev/zero"\n```', "cpp")], 5)
    assert time.monotonic() - t0 < 30 and ok is not True, status


def test_paper_mode_keeps_syntax_errors_and_the_flag_drops_them(tmp_path):
    rows = [{"seed_id": "bad", "seed": "s1", "problem": "P one.", "solution": "```python\ndef f(:\n```"},
            {"seed_id": "good", "seed": "s2", "problem": "P two.", "solution": "```python\nx = 1\n```"}]
    _, kept, _ = _run(tmp_path, rows, syntax_check=True)
    assert kept == ["bad", "good"]
    syn = duckdb.sql(f"SELECT syntax_ok FROM read_parquet('{tmp_path / 'clean.parquet'}') ORDER BY seed_id").fetchall()
    assert syn == [(False,), (True,)]
    _, kept, removed = _run(tmp_path, rows, syntax_check=True, drop_syntax_errors=True)
    assert kept == ["good"] and removed["bad"][0] == "syntax_error"


def test_similarity_to_humaneval_per_pair_and_its_mean(tmp_path):
    p = humaneval()[5]
    rows = [{"seed_id": "near", "seed": "s1", "problem": "Solve it.", "solution": p["prompt"] + p["canonical_solution"]},
            {"seed_id": "far", "seed": "s2", "problem": "Parse an HTTP header line into a name and a value.",
             "solution": "```python\ndef parse(line):\n    name, _, value = line.partition(':')\n    return name, value\n```"}]
    stats, _, _ = _run(tmp_path, rows, similarity=True, methods=[])
    sim = dict(duckdb.sql(f"SELECT seed_id, humaneval_similarity FROM read_parquet('{tmp_path / 'clean.parquet'}')").fetchall())
    assert sim["near"] > 0.9 > 0.3 > sim["far"]
    assert stats["humaneval_similarity_mean"] == pytest.approx((sim["near"] + sim["far"]) / 2, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_humaneval_docstring_is_caught_case_insensitively(tmp_path):
    p = humaneval()[0]
    doc = p["prompt"].split('"""')[1].strip()
    rows = [{"seed_id": "leak", "seed": "s1", "problem": "Task:\n" + doc.upper(), "solution": "pass"},
            {"seed_id": "ok", "seed": "s2", "problem": "Reverse a linked list.", "solution": "def rev(h): ..."}]
    _, kept, removed = _run(tmp_path, rows)
    assert kept == ["ok"]
    assert removed["leak"] == ("contaminated_humaneval", None, p["task_id"], "substring")


def test_either_method_alone(tmp_path):
    doc = humaneval()[0]["prompt"].split('"""')[1].strip()
    rows = [{"seed_id": "leak", "seed": "s1", "problem": doc, "solution": "pass"}]
    for method in ("substring", "ngram"):
        _, kept, removed = _run(tmp_path, rows, methods=[method])
        assert kept == [] and removed["leak"][3] == method


def test_generic_one_line_solutions_are_not_contamination(tmp_path):
    rows = [{"seed_id": "a", "seed": "s", "problem": "Add two numbers.", "solution": "def add(x, y):\n    return x + y"}]
    _, kept, _ = _run(tmp_path, rows)
    assert kept == ["a"]


def test_no_pairs_gives_empty_outputs_and_a_note(tmp_path):
    stats, kept, removed = _run(tmp_path, [])
    assert stats["kept"] == 0 and kept == [] and removed == {}
    assert "has no pairs" in stats["notes"][0]


def test_missing_benchmark_file_is_reported_not_checked(tmp_path):
    rows = [{"seed_id": "a", "seed": "s", "problem": "Reverse a list.", "solution": "xs[::-1]"}]
    stats, kept, _ = _run(tmp_path, rows, benchmarks=["humaneval", "mbpp"],
                          benchmark_paths=[f"mbpp={tmp_path / 'nope.jsonl'}"])
    assert kept == ["a"] and stats["benchmarks"]["mbpp"] == "not checked"
    assert len(stats["notes"]) == 1 and "nope.jsonl does not exist" in stats["notes"][0]
    report = json.loads((tmp_path / "decontamination.json").read_text())
    assert report["benchmarks"]["mbpp"]["status"] == "not checked"


def test_damaged_benchmark_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "gsm.jsonl"
    bad.write_text('{"question": "ok"}\nnot json\n')
    with pytest.raises(ReproError, match=r"gsm\.jsonl: cannot read it as gsm8k data \(line 2 is not JSON\)"):
        _run(tmp_path, [], benchmarks=["gsm8k"], benchmark_paths=[f"gsm8k={bad}"])


def test_malformed_pairs(tmp_path):
    rows = [{"seed_id": "a", "seed": "s", "problem": "P.", "solution": "S."},
            {"seed_id": "b", "seed": "t", "problem": "Q."},
            {"seed_id": "c", "seed": "u", "problem": "R.", "solution": "T.",
             "raw": "[Solution]\nT.\n[Problem Description]\nR."},
            {"seed_id": "a", "seed": "v", "problem": "P2.", "solution": "S2."}]
    _, kept, removed = _run(tmp_path, rows)
    assert kept == ["a"]
    assert {k: v[0] for k, v in removed.items()} == {"b": "invalid", "c": "invalid", "a": "duplicate_seed_id"}
    # A line that is not JSON: one error naming the file and line; nothing written.
    p = tmp_path / "broken" / "pairs.jsonl"
    p.parent.mkdir()
    p.write_text('{"seed_id": "a", "problem": "P", "solution": "S"}\n{"seed_id": \n')
    with pytest.raises(ReproError, match=r"pairs\.jsonl: line 2 is not a JSON object"):
        clean.run(CleanConfig(benchmarks=["humaneval"]), p, p.parent / "clean.parquet", p.parent / "removed.parquet")
    assert sorted(x.name for x in p.parent.iterdir()) == ["pairs.jsonl"]


def test_bad_settings_fail_before_anything_is_written(tmp_path, capsys):
    for setting, msg in [("clean.methods=fuzzy", "clean.methods: 'fuzzy' is unknown"),
                         ("clean.benchmarks=humaneval,leetcode", "clean.benchmarks: 'leetcode' is unknown"),
                         ("clean.benchmark_paths=mbpp", "clean.benchmark_paths: 'mbpp' is not name=path")]:
        run_dir = tmp_path / setting.split("=")[0]
        assert cli.main(["clean", "--run-dir", str(run_dir), "--set", setting]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and msg in err
        assert not run_dir.exists()


def test_a_benchmark_file_of_ones_own_is_used(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "gsm8k.jsonl").write_text(json.dumps({"question": GSM8K_REWORDED}) + "\n")
    rows = [{"seed_id": "a", "seed": "s", "problem": GSM8K_REWORDED.lower(), "solution": "64"}]
    stats, kept, removed = _run(tmp_path, rows, benchmarks=["gsm8k"],
                                benchmark_paths=[f"gsm8k={tmp_path / 'b' / 'gsm8k.jsonl'}"])
    assert kept == [] and removed["a"][0] == "contaminated_gsm8k"
    assert str(tmp_path / "b") in json.loads((tmp_path / "decontamination.json").read_text())[
        "benchmarks"]["gsm8k"]["source"]


def test_a_benchmark_file_that_is_nowhere_leaves_it_unchecked_with_a_note(tmp_path, no_benchmark_files):
    rows = [{"seed_id": "a", "seed": "s", "problem": "Reverse a list.", "solution": "xs[::-1]"}]
    stats, kept, _ = _run(tmp_path, rows, benchmarks=["humaneval", "gsm8k"], fetch_benchmarks=False)
    assert kept == ["a"] and stats["benchmarks"]["gsm8k"] == "not checked"
    assert "git checkout -- data/benchmarks/gsm8k-test.jsonl" in stats["notes"][0]
