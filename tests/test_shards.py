"""Generation split over machines: `repro generate --shard I/N` answers a stable 1/N of the seeds into
its own store; `repro merge RUN...` joins the shards into what one unsharded run writes.

The teacher is a fake engine (answers made from the request: its prompt, seed and temperature),
so every run here is deterministic and needs no model."""

import hashlib
import json
import shutil

import pytest

from repro import cli, generate, pipeline
from repro.engine import Completion, Engine, Stats
from builders import seeds_file

N_SEEDS = 12


class FakeTeacher(Engine):  # Engine's __enter__/__exit__
    """An engine that answers each request from its content and seed; seeds whose snippet says
    GARBAGE get an answer without the two sections (a rejection). `reorder` answers each pair of
    requests in reverse, as a batched engine finishes them out of order."""
    calls: list = []
    reorder = False

    def __init__(self):
        self.threads, self.stats, self.tokenizer, self.model_name = 1, Stats(completion_tokens=0, seconds=1.0), None, "fake"

    def answer(self, r):
        text = r.messages[-1]["content"]
        h = hashlib.sha256(f"{text}|{r.seed}|{r.temperature}".encode()).hexdigest()[:10]
        FakeTeacher.calls.append(r.key)
        if "GARBAGE" in text:
            return Completion(r.key, f"no sections here {h}", "stop", 30, 7, 0.25)
        return Completion(r.key, f"[Problem Description]\nTask {h}.\n\n[Solution]\n```python\nx_{h} = 1\n```",
                          "stop", 30, 12, 0.25)

    def run(self, requests):
        held = []
        for r in requests:
            held.append(r)
            if not self.reorder or len(held) == 2:
                yield from (self.answer(x) for x in reversed(held))
                held = []
        yield from (self.answer(x) for x in reversed(held))


@pytest.fixture
def teacher(monkeypatch):
    monkeypatch.setattr(generate, "open_teacher", lambda cfg: FakeTeacher())
    monkeypatch.setattr(generate, "teacher_path", lambda cfg: None)  # no model file is read
    FakeTeacher.calls, FakeTeacher.reorder = [], False
    return FakeTeacher


def snippet(i):
    return f"GARBAGE = {i}\n" if i % 5 == 3 else f"def f{i}(x):\n    return x * {i}\n"


def make_run(path, n=N_SEEDS):
    seeds_file(path / "seeds.parquet", n, snippet)
    return path


def repro(*args, sets=()):
    return cli.main([*args, "--quiet", *[x for s in sets for x in ("--set", s)]])


def gen(run, *extra, sets=()):
    return repro("generate", "--profile", "smoke", "--run-dir", str(run), *extra, sets=sets)


# ---------------------------------------------------------------------------------------------
# The split


def test_shards_are_disjoint_cover_every_seed_and_do_not_change():
    ids = [hashlib.md5(str(i).encode()).hexdigest() for i in range(300)]
    for n in (1, 2, 3, 7):
        parts = [generate.shard_of(x, n) for x in ids]
        assert set(parts) == set(range(1, n + 1))  # every shard gets seeds; each seed exactly one
    # The samples of a seed are in its shard; the hash is sha256 (not Python's salted hash()).
    assert generate.shard_of("abc#3", 4) == generate.shard_of("abc", 4) == \
        int(hashlib.sha256(b"abc").hexdigest()[:16], 16) % 4 + 1
    assert generate.parse_shard("2/4") == (2, 4) and generate.shard_tag("2/4") == "shard-2-of-4"
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(generate.ReproError, match=r"generate.shard=.*give I/N"):
            generate.parse_shard(bad)


@pytest.mark.parametrize("samples", [1, 3])
def test_two_shards_and_merge_give_the_unsharded_run_byte_for_byte(tmp_path, teacher, capsys, samples):
    sets = [f"generate.samples={samples}"] + (["generate.temperature=0.7"] if samples > 1 else [])
    whole, a, b = make_run(tmp_path / "whole"), make_run(tmp_path / "a"), make_run(tmp_path / "b")
    assert gen(whole, sets=sets) == 0
    asked_whole = len(teacher.calls)
    assert asked_whole == N_SEEDS * samples
    # Two machines, one shard each, each in its own run directory with the same seeds.
    assert gen(a, "--shard", "1/2", sets=sets) == 0
    assert gen(b, "--shard", "2/2", sets=sets) == 0
    assert len(teacher.calls) == 2 * asked_whole  # the shards asked each question once between them
    assert not (a / "pairs.jsonl").exists() and (a / "pairs.shard-1-of-2.jsonl").exists()
    assert (a / "manifests" / "generate.shard-1-of-2.json").exists() and not (a / "manifests" / "generate.json").exists()
    shard_keys = [{json.loads(x)["key"] for p in ("pairs", "rejected") for x in
                   (d / f"{p}.shard-{i}-of-2.jsonl").read_text().splitlines()} for i, d in ((1, a), (2, b))]
    assert shard_keys[0] and shard_keys[1] and not shard_keys[0] & shard_keys[1]

    assert repro("merge", str(a), str(b)) == 0
    for name in ("pairs.jsonl", "rejected.jsonl"):
        assert (a / name).read_bytes() == (whole / name).read_bytes(), name
    assert (a / "rejected.jsonl").read_text().count("\n") == sum(1 for i in range(N_SEEDS) if i % 5 == 3) * samples
    if samples > 1:
        ids = [json.loads(x)["seed_id"] for x in (a / "pairs.jsonl").read_text().splitlines()]
        assert ids[:samples] == ["s0", "s0#1", "s0#2"]  # seed by seed, its samples in a row
    # The merged manifest is the unsharded run's: the next stage takes it, generate is up to date.
    m_whole, m_merged = (json.loads((d / "manifests" / "generate.json").read_text()) for d in (whole, a))
    assert m_merged["fingerprint"] == m_whole["fingerprint"] and m_merged["outputs"] == m_whole["outputs"]
    before = len(teacher.calls)
    capsys.readouterr()
    assert cli.main(["generate", "--profile", "smoke", "--run-dir", str(a),
                     *[x for s in sets for x in ("--set", s)]]) == 0
    assert len(teacher.calls) == before and "up to date, skipped" in capsys.readouterr().err


def test_merge_puts_answers_in_request_order_whatever_order_they_finished(tmp_path, teacher):
    whole, a, b = make_run(tmp_path / "whole"), make_run(tmp_path / "a"), make_run(tmp_path / "b")
    teacher.reorder = True  # as a batched engine: the file is in the order answers finished
    assert gen(whole) == 0 and gen(a, "--shard", "1/2") == 0 and gen(b, "--shard", "2/2") == 0
    assert repro("merge", str(a), str(b)) == 0
    merged, unsharded = (d.joinpath("pairs.jsonl").read_text().splitlines() for d in (a, whole))
    assert merged != unsharded and sorted(merged) == sorted(unsharded)
    assert [json.loads(x)["seed_id"] for x in merged] == [f"s{i}" for i in range(N_SEEDS) if i % 5 != 3]


def test_shards_copied_into_one_run_merge_there(tmp_path, teacher):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    assert gen(a, "--shard", "1/2") == 0 and gen(b, "--shard", "2/2") == 0
    for name in ("pairs.shard-2-of-2.jsonl", "rejected.shard-2-of-2.jsonl", "manifests/generate.shard-2-of-2.json"):
        shutil.copy2(b / name, a / name)
    assert repro("merge", str(a)) == 0
    assert (a / "pairs.jsonl").read_text().count("\n") == N_SEEDS - 2


# ---------------------------------------------------------------------------------------------
# Refusals: one line, exit status 2, nothing written


def one_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], err[0]
    return err[0]


def test_merge_refuses_shards_of_other_settings(tmp_path, teacher, capsys):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    assert gen(a, "--shard", "1/2", sets=["generate.max_tokens=64"]) == 0
    assert gen(b, "--shard", "2/2", sets=["generate.max_tokens=128"]) == 0
    capsys.readouterr()
    assert repro("merge", str(a), str(b)) == 2
    one_line(capsys, "generate.max_tokens=128", "64", "shard 2/2", "rerun")
    assert not (a / "pairs.jsonl").exists() and not (a / "manifests" / "generate.json").exists()


def test_merge_refuses_shards_of_other_seeds(tmp_path, teacher, capsys):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", n=N_SEEDS + 1)  # another machine made other seeds
    assert gen(a, "--shard", "1/2") == 0 and gen(b, "--shard", "2/2") == 0
    capsys.readouterr()
    assert repro("merge", str(a), str(b)) == 2
    one_line(capsys, "another seeds.parquet", "shard 2/2")
    assert not (a / "pairs.jsonl").exists()


def test_merge_reports_seeds_no_shard_answered(tmp_path, teacher, capsys):
    a = make_run(tmp_path / "a")
    assert gen(a, "--shard", "1/3") == 0 and gen(a, "--shard", "3/3") == 0
    capsys.readouterr()
    assert repro("merge", str(a)) == 2
    missing = sum(generate.shard_of(f"s{i}", 3) == 2 for i in range(N_SEEDS))
    one_line(capsys, f"{missing} seeds have no answer", "shard 2/3", "--shard 2/3")
    assert not (a / "pairs.jsonl").exists()
    assert gen(a, "--shard", "2/3") == 0 and repro("merge", str(a)) == 0  # the fix the line gives
    assert (a / "pairs.jsonl").exists()


def test_a_changed_shard_store_is_refused(tmp_path, teacher, capsys):
    a = make_run(tmp_path / "a")
    assert gen(a, "--shard", "1/1") == 0
    with open(a / "pairs.shard-1-of-1.jsonl", "a") as f:
        f.write("{}\n")
    capsys.readouterr()
    assert repro("merge", str(a)) == 2
    one_line(capsys, "pairs.shard-1-of-1.jsonl", "changed")


@pytest.mark.parametrize("args, words", [
    (["generate", "--shard", "3/2"], ["generate.shard='3/2'", "I/N"]),
    (["clean", "--set", "generate.shard=1/2"], ["generate.shard=1/2", "repro merge"]),
    (["merge"], None),
])
def test_bad_shard_use_is_one_line(tmp_path, teacher, capsys, args, words):
    run = make_run(tmp_path / "r")
    if words is None:  # merge of a run without shards
        assert repro("merge", str(run)) == 2
        one_line(capsys, "no finished shard", "--shard I/N")
    else:
        assert cli.main([*args, "--profile", "smoke", "--run-dir", str(run)]) == 2
        one_line(capsys, *words)
    assert sorted(p.name for p in run.iterdir()) in (["seeds.parquet"], ["log.txt", "seeds.parquet"])


def test_defaults_leave_the_generate_fingerprint_as_it_was():
    """Runs made before samples and shards stay up to date: the new settings at their defaults are
    not in generate's settings."""
    cfg = pipeline.load_config("smoke", [])
    settings = pipeline._generate_settings(cfg)
    assert "samples" not in settings and "shard" not in settings
    assert pipeline.generate_outputs(cfg) == ["pairs.jsonl", "rejected.jsonl"]
    assert pipeline.manifest_name("generate", cfg) == "generate"
    three = pipeline.load_config("smoke", ["generate.samples=3", "generate.temperature=0.7"])
    assert pipeline._generate_settings(three)["samples"] == 3
