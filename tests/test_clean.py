import json

import duckdb

from repro import clean
from repro.benchmarks import humaneval
from repro.config import CleanConfig


def _run(tmp_path, rows):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"language": "python", "path": "f.py", **r}) + "\n" for r in rows))
    stats = clean.run(CleanConfig(), pairs, tmp_path / "clean.parquet", tmp_path / "removed.parquet")
    kept = [r[0] for r in duckdb.sql(f"SELECT seed_id FROM read_parquet('{tmp_path / 'clean.parquet'}')").fetchall()]
    removed = {r[0]: r[1:] for r in duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path / 'removed.parquet'}')").fetchall()}
    return stats, kept, removed


def test_whitespace_insensitive_duplicates_name_the_kept_pair(tmp_path):
    rows = [{"seed_id": "a", "seed": "x = 1", "problem": "Sort a list.", "solution": "sorted(xs)"},
            {"seed_id": "b", "seed": "y = 2", "problem": "Sort  a\nlist.", "solution": "other()"},
            {"seed_id": "c", "seed": "x=1", "problem": "Something else.", "solution": "z()"}]
    stats, kept, removed = _run(tmp_path, rows)
    assert kept == ["a"]
    assert removed == {"c": ("duplicate_seed", "a"), "b": ("duplicate_problem", "a")}
    assert stats["removed_by_reason"] == {"duplicate_problem": 1, "duplicate_seed": 1}


def test_humaneval_docstring_is_caught_case_insensitively(tmp_path):
    p = humaneval()[0]
    doc = p["prompt"].split('"""')[1].strip()
    rows = [{"seed_id": "leak", "seed": "s1", "problem": "Task:\n" + doc.upper(), "solution": "pass"},
            {"seed_id": "ok", "seed": "s2", "problem": "Reverse a linked list.", "solution": "def rev(h): ..."}]
    _, kept, removed = _run(tmp_path, rows)
    assert kept == ["ok"]
    assert removed["leak"] == ("contaminated_humaneval", f"{p['task_id']} (docstring)")


def test_generic_one_line_solutions_are_not_contamination(tmp_path):
    rows = [{"seed_id": "a", "seed": "s", "problem": "Add two numbers.", "solution": "def add(x, y):\n    return x + y"}]
    _, kept, _ = _run(tmp_path, rows)
    assert kept == ["a"]


def test_no_pairs_gives_empty_outputs(tmp_path):
    stats, kept, removed = _run(tmp_path, [])
    assert stats["kept"] == 0 and kept == [] and removed == {}
