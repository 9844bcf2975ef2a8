"""The Evol-Instruct stage: harder problems from the clean ones, answered, then cleaned."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from repro import clean, evol
from repro.config import CleanConfig, EvolConfig, GenerateConfig

PROBLEMS = {
    "a": "Write a Python function `add(a, b)` that returns the sum of two integers.",
    "b": "Write a function that reverses a string.",
    "c": "Write a shell script that prints the square of its one argument.",
}


def clean_file(path, problems=PROBLEMS):
    rows = [{"seed_id": k, "language": "python", "path": f"{k}.py", "seed": f"{k} = 1", "problem": p,
             "solution": "```python\npass\n```"} for k, p in problems.items()]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("text,ok,want", [
    ("[New Problem]\nWrite add(a, b) for integers that also rejects floats with a TypeError.", True,
     "Write add(a, b) for integers that also rejects floats with a TypeError."),
    ("Sure! Here it is.\n[New Problem]\n**Task**: Reverse a string in O(1) extra space.\n\n**Solution**\n```python\n...",
     True, "**Task**: Reverse a string in O(1) extra space."),
    ("[Problem]\nWrite a Python function `add(a, b)` that returns the sum of two integers.", False, "nearly unchanged"),
    ("[New Problem]\n", False, "empty"),
])
def test_rewrites_are_cut_to_the_new_problem(text, ok, want):
    good, p = evol.evolved_problem(text, PROBLEMS["a"])
    assert good is ok and want in p


def test_a_rewrite_cut_at_the_limit_is_kept_only_if_it_had_ended():
    looping = "[New Problem]\nReverse a string, keeping the case.\n\n[New Problem Statement]\nReverse a string, keep"
    assert evol.evolved_problem(looping, PROBLEMS["b"], truncated=True) == (True, "Reverse a string, keeping the case.")
    assert evol.evolved_problem("[New Problem]\nReverse a string and the", PROBLEMS["b"], truncated=True)[0] is False


def test_choice_of_problems_and_heuristics_is_fixed_by_the_seed():
    rows = [{"seed_id": f"s{i}", "problem": f"p{i}"} for i in range(40)]
    a, b = evol.choose(rows, EvolConfig(num=10)), evol.choose(list(reversed(rows)), EvolConfig(num=10))
    assert [(r["seed_id"], h) for r, h in a] == [(r["seed_id"], h) for r, h in b] and len(a) == 10
    assert {h for _, h in evol.choose(rows, EvolConfig())} == set(evol.HEURISTICS) and len(evol.HEURISTICS) == 5
    assert [r["seed_id"] for r, _ in evol.choose(rows, EvolConfig(num=10, seed=1))] != [r["seed_id"] for r, _ in a]


def test_pairs_are_in_generates_format_and_clean_takes_them(tmp_path, monkeypatch):
    def ask(cfg, requests, store, progress=None, label=""):
        out = {}
        for r in requests:
            kind, sid = r.key.split("/")[:2]
            text = {"evolve": f"[New Problem]\nHarder {sid}: also handle empty input.",
                    "answer": {"evol-a": "```python\ndef add(a, b):\n    return a + b\n```\nIt adds the two.",
                               "evol-b": "```python\ndef rev(s):\n    return s[::-1] if s else ''\n```\nA slice "
                                         "walks the string backwards."}.get(sid, "")}[kind]
            if kind == "evolve" and sid == "c":
                text = "[New Problem]\n" + PROBLEMS["c"]  # unchanged: rejected
            out[r.key] = {"key": r.key, "text": text, "finish_reason": "stop", "completion_tokens": 5}
        return out, {"asked": len(requests), "reused": 0, "completion_tokens": 5 * len(requests), "prompt_tokens": 0,
                     "seconds": 1.0, "tokens_per_second": 5.0}
    monkeypatch.setattr(evol, "ask", ask)
    src = clean_file(tmp_path / "clean.parquet")
    stats = evol.run(EvolConfig(), GenerateConfig(), src, tmp_path / "p.jsonl", tmp_path / "r.jsonl", tmp_path / "s.jsonl")
    assert (stats["evolved"], stats["pairs"], stats["rejected"]) == (3, 2, 1)
    rej = json.loads((tmp_path / "r.jsonl").read_text())
    assert rej["parent"] == "c" and "nearly unchanged" in rej["reason"]
    c = clean.run(CleanConfig(benchmarks=["humaneval"], syntax_check=False, similarity=False), tmp_path / "p.jsonl",
                  tmp_path / "evol.parquet", tmp_path / "removed.parquet")
    assert c["kept"] == 2
    rows = pq.read_table(tmp_path / "evol.parquet").to_pylist()
    assert {r["seed_id"] for r in rows} == {"evol-a", "evol-b"} and rows[0]["problem"].startswith("Harder")


@pytest.mark.e2e
def test_real_teacher_evolves_and_answers(tmp_path):
    src = clean_file(tmp_path / "clean.parquet", {k: PROBLEMS[k] for k in ("a", "b")})
    stats = evol.run(EvolConfig(max_tokens=384), GenerateConfig(threads=0, parallel=4), src, tmp_path / "p.jsonl",
                     tmp_path / "r.jsonl", tmp_path / "s.jsonl")
    assert stats["evolved"] == 2 and stats["pairs"] + stats["rejected"] == 2
    for line in (tmp_path / "p.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["problem"] != row["parent_problem"] and row["heuristic"] in evol.HEURISTICS and row["solution"]
    for line in (tmp_path / "r.jsonl").read_text().splitlines():
        assert json.loads(line)["reason"]
