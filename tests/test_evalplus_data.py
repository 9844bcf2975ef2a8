import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from repro import evalplus_data as ed
from repro.artifacts import ReproError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HE, MBPP = SHARED / ed.RELEASES["humaneval"].file_name, SHARED / ed.RELEASES["mbpp"].file_name
needs_data = pytest.mark.skipif(not (HE.exists() and MBPP.exists()),
                                reason=f"no EvalPlus release files in {SHARED} (see its README.md)")


@pytest.fixture(autouse=True)
def no_user_data(tmp_path, monkeypatch):
    """Every test starts with an empty cache and no $REPRO_BENCHMARK_DIR."""
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REPRO_BENCHMARK_DIR", raising=False)


def _dir_with(tmp_path: Path, name: str, *files: Path) -> Path:
    d = tmp_path / name
    d.mkdir(parents=True)
    for f in files:
        shutil.copy(f, d / f.name)
    return d


def _damaged(tmp_path: Path, src: Path) -> Path:
    d = tmp_path / "damaged"
    d.mkdir(exist_ok=True)
    (d / src.name).write_bytes(src.read_bytes() + b"\0")
    return d


@needs_data
def test_release_files_have_every_problem_and_their_hashes():
    he, mbpp = ed.load("humaneval", path=str(HE)), ed.load("mbpp", path=str(MBPP))
    assert (len(he.problems), len(mbpp.problems)) == (164, 378)
    assert he.sha256 == ed.RELEASES["humaneval"].sha256 and mbpp.sha256 == ed.RELEASES["mbpp"].sha256
    assert he.md5 == hashlib.md5(HE.read_bytes()).hexdigest()  # EvalPlus's "hash" for this file
    assert he.plus and mbpp.plus and (he.version, mbpp.version) == ("v0.1.10", "v0.2.0")
    assert {p["atol"] for p in he.problems.values()} == {0, 1e-6, 1e-4}


@needs_data
def test_a_file_with_another_hash_is_one_line_naming_the_setting(tmp_path):
    bad = _damaged(tmp_path, MBPP) / MBPP.name
    with pytest.raises(ReproError) as e:
        ed.load("mbpp", path=str(bad))
    msg = str(e.value)
    assert "\n" not in msg and "MBPP+ v0.2.0's af43697e8791" in msg and msg.endswith("set evaluate.mbpp_path")
    with pytest.raises(ReproError, match=r"set evaluate\.benchmark_dir$"):
        ed.load("mbpp", benchmark_dir=str(bad.parent))


@needs_data
def test_an_explicit_path_beats_the_folder(tmp_path):
    folder = _damaged(tmp_path, HE)
    assert ed.load("humaneval", path=str(HE), benchmark_dir=str(folder)).path == str(HE)


@needs_data
def test_the_folder_setting_beats_the_environment(tmp_path, monkeypatch):
    good = _dir_with(tmp_path, "good", MBPP)
    monkeypatch.setenv("REPRO_BENCHMARK_DIR", str(_damaged(tmp_path, MBPP)))
    assert ed.load("mbpp", benchmark_dir=str(good)).path == str(good / MBPP.name)
    with pytest.raises(ReproError, match=r"set \$REPRO_BENCHMARK_DIR$"):
        ed.load("mbpp")  # without the setting, the environment's folder is used


@needs_data
def test_the_cache_is_used_when_no_folder_has_the_file(tmp_path):
    cached = _dir_with(tmp_path / "cache", "benchmarks", MBPP)  # where REPRO_CACHE points
    assert ed.load("mbpp", benchmark_dir=str(tmp_path)).path == str(cached / MBPP.name)


@needs_data
def test_an_uncompressed_release_file_is_accepted(tmp_path):
    plain = tmp_path / MBPP.name.removesuffix(".gz")
    plain.write_bytes(gzip.decompress(MBPP.read_bytes()))
    bench = ed.load("mbpp", benchmark_dir=str(tmp_path))
    assert bench.path == str(plain) and len(bench.problems) == 378
    assert bench.md5 == hashlib.md5(plain.read_bytes()).hexdigest()


def test_no_mbpp_file_is_one_line_naming_the_settings(tmp_path):
    with pytest.raises(ReproError) as e:
        ed.load("mbpp", benchmark_dir=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "MbppPlus-v0.2.0.jsonl.gz" in msg
    assert "evaluate.mbpp_path" in msg and "evaluate.benchmark_dir" in msg


def test_a_missing_explicit_path_is_one_line(tmp_path):
    with pytest.raises(ReproError, match=r"^evaluate\.humaneval_path=.*: no such file"):
        ed.load("humaneval", path=str(tmp_path / "nope.jsonl.gz"))


def test_without_humaneval_plus_the_wheel_gives_base_only_humaneval(tmp_path):
    bench = ed.load("humaneval", benchmark_dir=str(tmp_path))
    assert not bench.plus and len(bench.problems) == 164 and "no HumanEval+" in bench.note
    p = bench.problems["HumanEval/0"]
    assert "def check(candidate)" in p["test"] and p["base_input"] == p["plus_input"] == []


@needs_data
def test_mbpp_inputs_get_back_their_tuples_sets_and_complex_numbers():
    probs = ed.load("mbpp", path=str(MBPP)).problems
    assert all(type(a) is tuple for a in probs["Mbpp/2"]["base_input"][0])  # two tuples
    x, z = probs["Mbpp/124"]["base_input"][0]
    assert type(x) is float and type(z) is complex
    assert type(probs["Mbpp/252"]["base_input"][0][0]) is complex
    assert all(type(v) is tuple for v in probs["Mbpp/722"]["base_input"][0][0].values())
    assert type(probs["Mbpp/580"]["base_input"][0]) is tuple  # every nested list, the argument list too
    assert probs["Mbpp/793"]["plus_input"] == []  # stored as {}; EvalPlus runs no plus test


@needs_data
@pytest.mark.parametrize("task_id", ["Mbpp/124", "Mbpp/252", "Mbpp/2"])
def test_serialized_inputs_are_json_and_come_back_the_same(task_id):
    inputs = ed.load("mbpp", path=str(MBPP)).problems[task_id]["plus_input"][:5]
    text = json.dumps(ed.serialize_inputs("mbpp", task_id, inputs))
    assert ed.deserialize_inputs("mbpp", task_id, json.loads(text)) == inputs


def test_a_benchmark_dir_that_is_not_a_folder_is_one_line(tmp_path):
    with pytest.raises(ReproError, match=r"^evaluate\.benchmark_dir=.* is not a directory"):
        ed.load("humaneval", benchmark_dir=str(tmp_path / "typo"))  # not a silent fall-back to the wheel
