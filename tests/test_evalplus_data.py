import gzip
import hashlib
import json

import pytest

from repro.eval import evalplus_data as ed
from repro.artifacts import ReproError
from repro.data.benchmarks import BENCH_DIR, FILES, Missing

HE, MBPP = BENCH_DIR / FILES["humaneval+"].name, BENCH_DIR / FILES["mbpp+"].name


def test_release_files_have_every_problem_and_their_hashes():
    he, mbpp = ed.load("humaneval"), ed.load("mbpp")
    assert (len(he.problems), len(mbpp.problems)) == (164, 378)
    assert he.sha256 == FILES["humaneval+"].sha256[0] and mbpp.sha256 == FILES["mbpp+"].sha256[0]
    assert he.md5 == hashlib.md5(HE.read_bytes()).hexdigest()  # EvalPlus's "hash" for this file
    assert he.plus and mbpp.plus and (he.version, mbpp.version) == ("v0.1.10", "v0.2.0")
    assert {p["atol"] for p in he.problems.values()} == {0, 1e-6, 1e-4}


def test_an_ungzipped_copy_gives_the_same_problems_and_its_own_md5(tmp_path):
    plain = tmp_path / "MbppPlus-v0.2.0.jsonl"
    plain.write_bytes(gzip.decompress(MBPP.read_bytes()))
    bench = ed.load("mbpp", path=str(plain))
    assert bench.path == str(plain) and bench.problems == ed.load("mbpp").problems
    assert bench.md5 == hashlib.md5(plain.read_bytes()).hexdigest()


def test_without_mbpp_plus_anywhere_the_error_names_the_ways_out(no_benchmark_files):
    with pytest.raises(Missing) as e:
        ed.load("mbpp", fetch=False)
    msg = str(e.value)
    assert "\n" not in msg and "MbppPlus-v0.2.0.jsonl.gz" in msg
    assert "evaluate.mbpp_path=FILE" in msg and "evaluate.fetch=true" in msg


def test_without_humaneval_plus_anywhere_the_wheel_gives_base_only_humaneval(no_benchmark_files):
    bench = ed.load("humaneval", fetch=False)
    assert not bench.plus and len(bench.problems) == 164 and "no HumanEval+" in bench.note
    p = bench.problems["HumanEval/0"]
    assert "def check(candidate)" in p["test"] and p["base_input"] == p["plus_input"] == []


def test_a_damaged_humaneval_plus_is_an_error_not_the_wheel(no_benchmark_files):
    (no_benchmark_files / HE.name).write_bytes(HE.read_bytes()[:-1])
    with pytest.raises(ReproError, match="git checkout -- data/benchmarks/HumanEvalPlus-v0.1.10.jsonl.gz"):
        ed.load("humaneval")


def test_mbpp_inputs_get_back_their_tuples_sets_and_complex_numbers():
    probs = ed.load("mbpp").problems
    assert all(type(a) is tuple for a in probs["Mbpp/2"]["base_input"][0])  # two tuples
    x, z = probs["Mbpp/124"]["base_input"][0]
    assert type(x) is float and type(z) is complex
    assert type(probs["Mbpp/252"]["base_input"][0][0]) is complex
    assert all(type(v) is tuple for v in probs["Mbpp/722"]["base_input"][0][0].values())
    assert type(probs["Mbpp/580"]["base_input"][0]) is tuple  # every nested list, the argument list too
    assert probs["Mbpp/793"]["plus_input"] == []  # stored as {}; EvalPlus runs no plus test


@pytest.mark.parametrize("task_id", ["Mbpp/124", "Mbpp/252", "Mbpp/2"])
def test_serialized_inputs_are_json_and_come_back_the_same(task_id):
    inputs = ed.load("mbpp").problems[task_id]["plus_input"][:5]
    text = json.dumps(ed.serialize_inputs("mbpp", task_id, inputs))
    assert ed.deserialize_inputs("mbpp", task_id, json.loads(text)) == inputs
