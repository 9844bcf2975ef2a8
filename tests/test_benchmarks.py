import json
from pathlib import Path

import pytest

from repro.artifacts import ReproError
from repro.benchmarks import parse_paths, references, resolve

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_apps_from_its_release_layout(tmp_path):
    for pid, q in (("0000", "Given n, print n squared."), ("0001", "Count the vowels.")):
        (tmp_path / "test" / pid).mkdir(parents=True)
        (tmp_path / "test" / pid / "question.txt").write_text(q)
    refs = references(resolve("apps", parse_paths([f"apps={tmp_path / 'test'}"])))
    assert [(r.task_id, r.kind, r.text) for r in refs] == [("0000", "question", "Given n, print n squared."),
                                                          ("0001", "question", "Count the vowels.")]


@pytest.mark.skipif(not (SHARED / "sanitized-mbpp.json").exists(), reason=f"no {SHARED}")
def test_mbpp_keeps_the_test_split_of_either_release():
    full = references(resolve("mbpp", {"mbpp": str(SHARED / "mbpp.jsonl")}))
    sanitized = references(resolve("mbpp", {"mbpp": str(SHARED / "sanitized-mbpp.json")}))
    for refs in (full, sanitized):
        assert refs and all(11 <= int(r.task_id) <= 510 for r in refs)
    assert len({r.task_id for r in full}) == 500


def test_a_file_of_the_wrong_benchmark_is_one_clear_error(tmp_path):
    f = tmp_path / "ds.jsonl"
    f.write_text(json.dumps({"question": "not a DS-1000 row"}) + "\n")
    with pytest.raises(ReproError, match=r"ds\.jsonl: row 0 has no prompt field"):
        references(resolve("ds1000", {"ds1000": str(f)}))


def test_no_data_means_not_checked_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("REPRO_BENCHMARK_DIR", raising=False)
    src = resolve("gsm8k", {}, str(tmp_path))
    assert not src.checked and references(src) == []
    assert f"no gsm8k-test.jsonl in {tmp_path}" in src.reason and "clean.benchmark_paths gsm8k=FILE" in src.reason
    assert resolve("gsm8k", {}, str(tmp_path), fetch=True).hub == ("openai/gsm8k", "main", "test")
