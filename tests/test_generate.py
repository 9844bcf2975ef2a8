import json

import duckdb
import pyarrow as pa
import pytest

from repro import generate
from repro.artifacts import ReproError, read_jsonl
from repro.config import GenerateConfig


@pytest.mark.parametrize("text", [
    "[Problem Description]\nAdd two numbers.\n\n[Solution]\n```python\ndef add(a, b):\n    return a + b\n```",
    "### [Problem Description]\nAdd two numbers.\n### [Solution]\n```python\ndef add(a, b):\n    return a + b\n```",
    "### Problem Description\n\nAdd two numbers.\n\n### Solution\n\n```python\ndef add(a, b):\n    return a + b\n```",
    "**Problem Description:**\nAdd two numbers.\n**Solution:**\n```python\ndef add(a, b):\n    return a + b\n```",
])
def test_parse_finds_both_sections(text):
    problem, solution = generate.parse(text)
    assert problem == "Add two numbers."
    assert solution.startswith("```python") and "return a + b" in solution


@pytest.mark.parametrize("text", [
    "[Problem Description]\nAdd two numbers.",                     # no solution
    "[Solution]\nx = 1\n[Problem Description]\nAdd two numbers.",  # wrong order
    "[Problem Description]\n\n[Solution]\n   ",                    # empty sections
    "Here is a problem about the solution of equations.",         # words in prose are not headings
])
def test_parse_rejects_incomplete_answers(text):
    assert generate.parse(text) is None


def test_snippet_braces_survive_rendering():
    system, user = generate.load_prompt("oss_instruct.txt")
    out = generate.render(user, "rust", "fn f() { let x = {a}; }")
    assert "fn f() { let x = {a}; }" in out and "```rust" in out and system


def test_bad_template_is_a_user_error(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("no separator here {snippet}")
    with pytest.raises(ReproError, match="---"):
        generate.load_prompt(str(p))


def _seeds_file(tmp_path, n):
    path = tmp_path / "seeds.parquet"
    rows = [{"seed_id": f"s{i}", "language": "python", "seed": f"x{i} = {i}", "path": f"f{i}.py"} for i in range(n)]
    duckdb.from_arrow(pa.Table.from_pylist(rows)).write_parquet(str(path))
    return path


def test_rerun_skips_answered_seeds_and_repairs_a_torn_line(tmp_path):
    """A killed run leaves answered seeds and maybe half a line; the rerun answers only the rest."""
    seeds = _seeds_file(tmp_path, 2)
    pairs, rejected = tmp_path / "pairs.jsonl", tmp_path / "rejected.jsonl"
    (tmp_path / "generate.resume").write_text("fp1")
    pairs.write_text(json.dumps({"seed_id": "s0", "problem": "p", "solution": "s"}) + "\n" + '{"seed_id": "s1", "pro')
    cfg = GenerateConfig(max_tokens=8)  # too short to finish: the real teacher's answer is rejected fast
    stats = generate.run(cfg, seeds, pairs, rejected, fp="fp1")
    assert stats["resumed_from"] == 1 and stats["generated"] == 1
    assert [r["seed_id"] for r in read_jsonl(pairs)] == ["s0"]
    assert [(r["seed_id"], r["reason"]) for r in read_jsonl(rejected)] == [("s1", "finish_reason=length")]


def test_other_settings_start_over(tmp_path):
    seeds = _seeds_file(tmp_path, 1)
    pairs, rejected = tmp_path / "pairs.jsonl", tmp_path / "rejected.jsonl"
    (tmp_path / "generate.resume").write_text("old")
    pairs.write_text(json.dumps({"seed_id": "s0", "problem": "p", "solution": "s"}) + "\n")
    stats = generate.run(GenerateConfig(max_tokens=8), seeds, pairs, rejected, fp="new")
    assert stats["resumed_from"] == 0 and stats["generated"] == 1
