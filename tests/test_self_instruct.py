"""The self-instruct variant (`repro run --variant self-instruct`): the paper's baseline from the
same teacher. Requests carry a few tasks of a fixed pool, sampled per item, and no seed code; the
answers parse and clean as OSS-Instruct's; the oss variant's fingerprints and outputs stay.

The teacher is a fake engine that records every request and answers in the two-part format."""

import json
import re

import pyarrow.parquet as pq
import pytest

from repro import cli, config, generate, pipeline
from repro.artifacts import ReproError, RunDir, fingerprint
from repro.config import GenerateConfig
from repro.engine import Completion, Engine, Stats

N = 6
COPIER = "s3"
LANGS = ["python", "java", "cpp", "python", "rust", "shell"]
# Offline and quick: HumanEval alone for decontamination, no near-duplicate pass (the fake
# answers look alike), no similarity analysis.
CLEAN_SETS = ["clean.benchmarks=humaneval", "clean.near_dup_threshold=0", "clean.similarity=false"]
# The generate fingerprints (settings only) and a store key that the code before the variant gave
# (computed with that commit's repro/): the oss variant must keep them. tiny's changed on purpose
# since, with generate.parallel 8 -> 16 (was a9ec8986...), then generate.fill_loops 0 -> 160 (was
# 664492b9...).
OSS_FINGERPRINTS = {"smoke": "52ecac8af722136cd430d51e5f076d636acedff2343329354c468027f3ccfc91",
                    "tiny": "ed4fc4c22ecdcba3427072db5d4bd1701ebe58344d04ada02e61c698505005ce"}
OSS_KEY = "s0/e7acbaa75099"  # store_items(GenerateConfig(), [("s0", "python", "x0 = 0", "f0.py")], "m", oss prompt)


class RecordingTeacher(Engine):  # Engine's __enter__/__exit__
    """Answers each item with its own two-part answer (the same every time), but item COPIER of a
    self-instruct run with its first example task; keeps the requests it saw."""

    seen: list = []

    def __init__(self, cfg):
        self.threads, self.stats, self.tokenizer, self.model_name = 1, Stats(), None, "fake"

    def run(self, requests):
        for r in requests:
            RecordingTeacher.seen.append(r)
            sid = r.key.split("/")[0]
            n = int(sid[1:]) + 1
            first = re.search(r"^- (.+)$", user_text(r), re.M)
            if sid == COPIER and first:  # restates the first example, as small teachers do
                yield Completion(r.key, f"[Problem Description]\n{first.group(1)} Keep it short.\n\n[Solution]\n"
                                 "```python\nprint(1)\n```", "stop", 20, 10, 0.1)
                continue
            text = (f"[Problem Description]\nWrite `count_{sid}(items)`, which returns how many of the items in the "
                    f"list are longer than {n} characters.\n\n[Solution]\n"
                    f"```python\ndef count_{sid}(items):\n    return sum(len(x) > {n} for x in items)\n```\n"
                    "It counts them in one pass.")
            yield Completion(r.key, text, "stop", 20, 10, 0.1)


@pytest.fixture
def teacher(monkeypatch):
    monkeypatch.setattr(generate, "open_teacher", RecordingTeacher)
    monkeypatch.setattr(generate, "teacher_path", lambda cfg: None)
    RecordingTeacher.seen = []
    return RecordingTeacher


def make_seeds(path, order=None):
    import duckdb
    import pyarrow as pa

    rows = [{"seed_id": f"s{i}", "language": LANGS[i], "seed": f"def seedcode_{i}():\n    return {i}\n",
             "path": f"src/f{i}.py"} for i in range(N)]
    rows = [rows[i] for i in (range(N) if order is None else order)]
    path.parent.mkdir(parents=True, exist_ok=True)
    duckdb.from_arrow(pa.Table.from_pylist(rows)).write_parquet(str(path))
    return path


def repro(stage, run, *sets, variant="oss", share=None):
    args = [stage, "--profile", "smoke", "--run-dir", str(run), "--quiet", "--variant", variant]
    args += [x for s in sets for x in ("--set", s)]
    args += ["--share", str(share)] if share else []
    return cli.main(args)


def pool():
    return generate.load_tasks("self_instruct_tasks.txt", 3)


def user_text(r):
    return next(m["content"] for m in r.messages if m["role"] == "user")


def test_the_pool_is_ours_and_large_enough():
    tasks = pool()
    assert 60 <= len(tasks) <= 100 and len(set(tasks)) == len(tasks)
    assert all(10 < len(t) < 200 for t in tasks)  # short, one line each
    system, user = generate.load_prompt("self_instruct.txt", "self_instruct_tasks.txt")
    assert "{snippet}" in user and "{tasks}" not in user and "[Problem Description]" in user and "[Solution]" in user
    assert system == generate.load_prompt("oss_instruct.txt")[0]  # the same teacher persona as OSS-Instruct


def test_requests_carry_three_pool_tasks_and_no_seed_code_deterministically(tmp_path, teacher):
    run = tmp_path / "si"
    make_seeds(run / "seeds.parquet")
    assert repro("generate", run, variant="self-instruct") == 0
    first = {r.key.split("/")[0]: user_text(r) for r in teacher.seen}
    assert sorted(first) == [f"s{i}" for i in range(N)]  # one request per seed row
    tasks = pool()
    shown = {}
    for sid, text in first.items():
        assert "seedcode_" not in text and "src/f" not in text and "```" not in text  # no seed code, no path
        shown[sid] = [t for t in tasks if t in text]
        assert len(shown[sid]) == 3 and sum(line.startswith("- ") for line in text.splitlines()) == 3
        picked = generate.pick_tasks(tasks, 3, GenerateConfig().seed, sid)  # the item's own sample, in its order
        assert sorted(shown[sid]) == sorted(picked) and generate.task_list(picked) in text
        assert LANGS[int(sid[1:])] in text  # asked for the seed row's language
    assert len({tuple(x) for x in shown.values()}) == N  # items differ
    # Another run, the seed rows in another order: each item gets the same tasks.
    teacher.seen = []
    again = tmp_path / "si2"
    make_seeds(again / "seeds.parquet", order=list(reversed(range(N))))
    assert repro("generate", again, variant="self-instruct") == 0
    assert {r.key.split("/")[0]: user_text(r) for r in teacher.seen} == first
    # Another generate.seed: another sample.
    assert generate.pick_tasks(tasks, 3, 7, "s0") != generate.pick_tasks(tasks, 3, 42, "s0")


def test_pairs_parse_and_clean_like_oss_instruct(tmp_path, teacher):
    run = tmp_path / "si"
    make_seeds(run / "seeds.parquet")
    assert repro("generate", run, variant="self-instruct") == 0
    assert repro("clean", run, *CLEAN_SETS, variant="self-instruct") == 0
    pairs = [json.loads(x) for x in (run / "pairs.jsonl").read_text().splitlines()]
    rejected = [json.loads(x) for x in (run / "rejected.jsonl").read_text().splitlines()]
    assert len(pairs) == N - 1 and [r["seed_id"] for r in rejected] == [COPIER]
    assert rejected[0]["reason"] == "copies a pool task (ROUGE-L >= 0.7)" and rejected[0]["rouge_l"] == 1.0
    assert rejected[0]["copied_task"] in rejected[0]["seed"] and "problem" not in rejected[0]
    assert all(p["path"] == "self_instruct_tasks.txt" and p["seed"].startswith("- ") for p in pairs)
    assert all(p["problem"].startswith("Write `count_") and "```python" in p["solution"] for p in pairs)
    clean = pq.read_table(run / "clean.parquet").to_pylist()
    assert sorted(r["seed_id"] for r in clean) == [f"s{i}" for i in range(N) if f"s{i}" != COPIER]
    assert {r["seed_id"]: r["language"] for r in clean} == {f"s{i}": LANGS[i] for i in range(N) if f"s{i}" != COPIER}
    m = json.loads((run / "manifests" / "generate.json").read_text())
    assert m["config"]["tasks"] == "self_instruct_tasks.txt" and "tasks_hash" in m["config"]
    assert m["config"]["prompt"] == "self_instruct.txt"


def test_a_restated_pool_task_is_a_copy_and_a_new_one_is_not():
    tasks = pool()
    assert generate.rouge_l("a b c d".split(), "a c d e".split()) == 0.75  # LCS 3: 2 * 3 / (4 + 4)
    assert generate.copied_task(tasks[5] + " Then explain it at length, with examples.", tasks) == (tasks[5], 1.0)
    vending = next(t for t in tasks if t.startswith("Simulate a vending machine"))
    copy = generate.copied_task("**Task**: Write a Rust program that simulates a vending machine that accepts coins, "
                                "dispenses an item and returns the change with the fewest coins.\n\nDetails.", tasks)
    assert copy[0] == vending and 0.7 <= copy[1] < 1
    assert generate.copied_task("Write a shell script that takes a directory path and lists the files in it, "
                                "excluding hidden ones. It prints one name a line.", tasks) is None


def test_run_name_stages_and_settings_of_the_variant():
    assert "self-instruct" in config.VARIANTS
    assert pipeline.run_name("tiny", "self-instruct") == "tiny-self-instruct"
    assert config.variant_slug("self-instruct") == "self-instruct" and config.variant_slug("oss") == ""
    assert pipeline.stages_of("self-instruct") == pipeline.stages_of("oss")
    cfg = pipeline.load_config("tiny", [], "self-instruct")
    assert (cfg.generate.prompt, cfg.generate.tasks, cfg.generate.tasks_per_request) == \
        ("self_instruct.txt", "self_instruct_tasks.txt", 3)
    assert pipeline.train_inputs(cfg) == ["clean.parquet"]
    oss = pipeline.load_config("tiny", [])
    for k in ("teacher", "max_tokens", "temperature", "top_p", "n_ctx", "seed", "backend"):  # same teacher, decoding, budget
        assert getattr(cfg.generate, k) == getattr(oss.generate, k)
    # The user's --set still wins over the variant's.
    assert pipeline.load_config("tiny", ["generate.tasks_per_request=4"], "self-instruct").generate.tasks_per_request == 4
    assert "tiny-self-instruct" in {r.path.name for r in pipeline.sibling_runs("tiny", "oss")}


@pytest.mark.parametrize("variant", ["self-instruct+validated", "self-instruct+evol", "oss+self-instruct"])
def test_combinations_are_refused_in_one_line(variant):
    with pytest.raises(ReproError) as e:
        pipeline.load_config("smoke", [], variant)
    assert "\n" not in str(e.value) and "self-instruct runs alone" in str(e.value)


def test_a_task_pool_outside_the_variant_or_a_bad_pool_is_one_line(tmp_path):
    cfg = pipeline.load_config("smoke", ["generate.tasks=self_instruct_tasks.txt", "generate.prompt=self_instruct.txt"])
    with pytest.raises(ReproError, match="use --variant self-instruct"):
        pipeline.check(cfg, ["generate"])
    with pytest.raises(ReproError, match="tasks_per_request=200"):
        generate.load_tasks("self_instruct_tasks.txt", 200)
    with pytest.raises(ReproError, match="no such task pool"):
        generate.load_tasks(str(tmp_path / "none.txt"), 3)
    with pytest.raises(ReproError, match=r"\{tasks\}"):  # a pool with the snippet prompt
        generate.load_prompt("oss_instruct.txt", "self_instruct_tasks.txt")


def test_the_oss_variant_keeps_its_fingerprints_and_outputs(tmp_path, teacher):
    for profile, fp in OSS_FINGERPRINTS.items():
        cfg = pipeline.load_config(profile, [])
        settings = pipeline._generate_settings(cfg)
        assert not {"tasks", "tasks_per_request", "tasks_hash"} & set(settings)
        assert fingerprint("generate", settings) == fp, profile
    system, user = generate.load_prompt("oss_instruct.txt")
    assert list(generate.store_items(GenerateConfig(), [("s0", "python", "x0 = 0", "f0.py")], "m", system, user)) == [OSS_KEY]
    # A run with the default settings, then a self-instruct run beside it: the oss run's files and
    # manifests are untouched, and rerunning it finds every stage up to date.
    oss, si = tmp_path / "oss", tmp_path / "si"
    make_seeds(oss / "seeds.parquet")
    for stage in ("generate", "clean"):
        assert repro(stage, oss, *CLEAN_SETS) == 0
    oss_requests = [user_text(r) for r in teacher.seen]
    assert all("seedcode_" in t for t in oss_requests)  # the oss prompt still carries the seed
    files = {p.name: p.read_bytes() for p in [oss / "pairs.jsonl", oss / "clean.parquet",
                                              oss / "manifests" / "generate.json", oss / "manifests" / "clean.json"]}
    make_seeds(si / "seeds.parquet")
    for stage in ("generate", "clean"):
        assert repro(stage, si, *CLEAN_SETS, variant="self-instruct", share=oss) == 0
    gen = {d: json.loads((d / "manifests" / "generate.json").read_text()) for d in (oss, si)}
    assert gen[oss]["fingerprint"] != gen[si]["fingerprint"] and "reused_from" not in gen[si]
    teacher.seen = []
    for stage in ("generate", "clean"):
        assert repro(stage, oss, *CLEAN_SETS) == 0
    assert teacher.seen == []  # nothing asked again
    assert {name: (oss / ("manifests/" if name.endswith(".json") else "") / name).read_bytes()
            for name in files} == files
    # The oss run's answers made again from scratch are byte for byte the same (the fake teacher
    # is deterministic; `seconds` is its fixed 0.1).
    again = tmp_path / "oss2"
    make_seeds(again / "seeds.parquet")
    assert repro("generate", again) == 0
    assert (again / "pairs.jsonl").read_bytes() == files["pairs.jsonl"]
    assert RunDir(again).manifest("generate")["fingerprint"] == gen[oss]["fingerprint"]


@pytest.mark.e2e
def test_real_teacher_answers_a_self_instruct_request_in_the_two_part_format(tmp_path):
    """The embedded teacher, two seed rows: each gets an answer; the kept ones parse and clean."""
    run = tmp_path / "si"
    make_seeds(run / "seeds.parquet", order=[0, 1])
    sets = ["generate.max_tokens=384", "generate.parallel=2", *CLEAN_SETS]
    assert repro("generate", run, *sets, variant="self-instruct") == 0
    answers = [json.loads(x) for p in ("pairs.jsonl", "rejected.jsonl") for x in (run / p).read_text().splitlines()]
    assert sorted(a["seed_id"] for a in answers) == ["s0", "s1"]
    assert all("seedcode_" not in a["raw"] for a in answers)
    kept = [a for a in answers if "problem" in a]
    assert all(generate.parse(a["raw"]) == (a["problem"], a["solution"]) for a in kept)
    assert repro("clean", run, *sets, variant="self-instruct") == 0
    assert pq.read_table(run / "clean.parquet").num_rows <= len(kept)
