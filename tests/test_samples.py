"""Several samples: generate.samples=k answers per seed (validate keeps one that passes its tests),
and evaluate.samples=n answers per problem (pass@k with the unbiased estimator).

The teacher and the evaluated model are fake engines (answers chosen per request); the programs
run in the real sandbox."""

import json
from math import comb

import pyarrow.parquet as pq
import pytest

from repro import cli, generate, pipeline, validate
from repro.config import EvaluateConfig, GenerateConfig
from repro.engine import Completion, Engine, Stats
from repro.eval import evaluate
from repro.eval.stats import pass_at_k
from builders import seeds_file

# ---------------------------------------------------------------------------------------------
# The estimator


def test_pass_at_k_is_the_unbiased_estimator_on_a_hand_computed_case():
    # n = 5 samples, c = 2 correct: 1 - C(3, k) / C(5, k)
    assert pass_at_k(5, 2, 1) == pytest.approx(1 - 3 / 5)    # 0.4: the fraction correct
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)   # 0.7: 3 of the 10 pairs have no correct one
    assert pass_at_k(5, 2, 5) == 1.0                          # all 5 drawn: the 2 correct are among them
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    for n, c, k in [(10, 3, 4), (20, 1, 10), (200, 7, 100), (200, 0, 100)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)


def test_rate_k_averages_the_estimator_over_problems():
    r = evaluate._rate_k([[True, True, False, False, False], [False] * 5, [True] * 5])
    assert r["pass@k"] == {"1": pytest.approx((0.4 + 0 + 1) / 3)}  # k = 10, 100 > n are not reported
    assert r["pass@1"] == r["pass@k"]["1"] and r["correct"] == [2, 0, 5] and r["passed"] == 7
    assert r["per_task"] == [0.4, 0.0, 1.0] and r["ci95"][0] <= r["pass@1"] <= r["ci95"][1]


def test_one_sample_keeps_the_cached_answers_key():
    class Bench:
        sha256 = "0" * 64

    key = evaluate.answer_key("m", Bench, "instruct", EvaluateConfig())
    assert evaluate.answer_key("m", Bench, "instruct", EvaluateConfig(temperature=0.2)) == key  # greedy: unused
    sampled = evaluate.answer_key("m", Bench, "instruct", EvaluateConfig(samples=10))
    assert sampled != key and evaluate.answer_key("m", Bench, "instruct", EvaluateConfig(samples=20)) == sampled
    cfg = pipeline.load_config("smoke", [])
    assert "samples" not in pipeline._evaluate_settings(cfg)


# ---------------------------------------------------------------------------------------------
# evaluate.samples = n through the stage


class SampleEngine(Engine):  # Engine's __enter__/__exit__
    """Answers sample j of a problem right when j < RIGHT[task id], else wrong; j from the seed."""

    def __init__(self, right: dict[str, int], canonical: dict[str, str], n: int):
        self.threads, self.stats = 1, Stats(completion_tokens=1, seconds=1.0)
        self.right, self.canonical = right, canonical
        self.j = {(evaluate.sample_seed(t, j)): (t, j) for t in right for j in range(n)}
        self.requests = []

    def run(self, requests):
        for r in requests:
            self.requests.append(r)
            t, j = self.j[r.seed]
            text = self.canonical[t] if j < self.right[t] else "    return None\n"
            yield Completion(r.key, text, "stop", 10, 5, 0.1)


def test_pass_at_k_of_the_stage_matches_the_estimator(tmp_path, monkeypatch, capsys):
    import repro.engine
    from repro.eval import evalplus_data

    he = evalplus_data.load("humaneval")
    ids = list(he.problems)[:2]
    n, right = 10, {ids[0]: 2, ids[1]: 0}
    engine = SampleEngine(right, {t: he.problems[t]["canonical_solution"] for t in ids}, n)
    monkeypatch.setattr(repro.engine, "open_engine", lambda *a, **k: engine)
    monkeypatch.setattr(evaluate, "eval_cache", lambda: tmp_path / "cache")
    cfg = EvaluateConfig(limit=2, models=["base"], benchmarks=["humaneval"], multilingual=[], samples=n)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    res = evaluate.run(cfg, {"base": (gguf, "completion")}, tmp_path / "eval")
    assert all(r.temperature == 0.8 for r in engine.requests) and len(engine.requests) == 2 * n
    r = res["models"]["base"]["humaneval"]
    assert r["n"] == 2 and r["samples"] == n and res["samples"] == n and res["temperature"] == 0.8
    for split in ("base", "plus"):
        s = r[split]
        assert s["correct"] == [2, 0]
        # By hand: problem 1 has 2 of 10 right, problem 2 none.
        assert s["pass@k"]["1"] == pytest.approx((2 / 10 + 0) / 2) == s["pass@1"]
        assert s["pass@k"]["10"] == pytest.approx((1 - comb(8, 10) / comb(10, 10) + 0) / 2) == 0.5
        assert "100" not in s["pass@k"]
    samples = [json.loads(x) for x in (tmp_path / "eval" / "base" / "humaneval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * n and [s["sample"] for s in samples[:n]] == list(range(n))
    ev = json.loads((tmp_path / "eval" / "base" / "humaneval" / "eval_results.json").read_text())
    assert [len(v) for v in ev["eval"].values()] == [n, n]  # EvalPlus's shape: every sample of a task
    # The console summary says pass@k.
    line = pipeline._evaluate_summary(res)
    assert "10 samples per problem" in line and "pass@1 10.0%" in line and "pass@10 50.0%" in line
    # A second run decodes nothing: the samples are cached by (problem, sample).
    engine.requests.clear()
    evaluate.run(cfg, {"base": (gguf, "completion")}, tmp_path / "eval2")
    assert engine.requests == []


# ---------------------------------------------------------------------------------------------
# generate.samples = k, then clean and validate: one answer per seed


def test_samples_need_a_temperature_and_sample_zero_is_the_one_sample_answer():
    with pytest.raises(generate.ReproError, match=r"generate.samples=3 with generate.temperature=0 .*0.7"):
        generate.check(GenerateConfig(samples=3))
    one = generate.store_items(GenerateConfig(), [("s0", "python", "x = 1", "f.py")], "model", "sys", "user")
    three = generate.store_items(GenerateConfig(samples=3), [("s0", "python", "x = 1", "f.py")], "model", "sys", "user")
    first = next(iter(one))
    assert list(three)[0] == first and three[first] == one[first] and "sample" not in one[first]
    assert [it["seed_id"] for it in three.values()] == ["s0", "s0#1", "s0#2"]
    assert [it.get("sample", 0) for it in three.values()] == [0, 1, 2]
    assert generate.base_seed_id("s0#2") == "s0" and validate.sample_index("s0#2") == 2


WRONG, RIGHT = "    return a - b", "    return a + b"
# seed -> its three samples' solutions (None: an answer without the two sections, rejected by generate;
# "" a solution without a code block: not testable, kept only when no sample passes).
PLAN = {0: [WRONG, RIGHT, RIGHT], 1: [WRONG, WRONG, WRONG], 2: [RIGHT, WRONG, RIGHT], 3: ["", RIGHT, WRONG],
        4: [WRONG, None, RIGHT]}
CHOSEN = {"s0#1", "s2", "s3#1", "s4#2"}
WORDS = ["alpha", "bravo", "charlie", "delta", "echo"]


class PlanTeacher(Engine):  # Engine's __enter__/__exit__
    """Answers seed i's sample j (known from the request's seed) as PLAN says."""

    def __init__(self, cfg):
        self.threads, self.stats, self.tokenizer, self.model_name = 1, Stats(), None, "fake"
        self.of = {generate.item_seed(cfg.seed + j, f"s{i}"): (i, j) for i in PLAN for j in range(3)}

    def run(self, requests):
        for r in requests:
            i, j = self.of[r.seed]
            body = PLAN[i][j]
            if body is None:
                text = "I cannot."
            else:
                code = f"```python\ndef add_{WORDS[i]}(a, b):\n{body}\n```" if body else "Add them in your head."
                text = (f"[Problem Description]\nWrite `add_{WORDS[i]}(a, b)`, a {WORDS[i]} function returning the sum "
                        f"of two integers (variant {j} of seed {i}: {' '.join(WORDS[:i + 1])}).\n\n[Solution]\n{code}")
            yield Completion(r.key, text, "stop", 20, 10, 0.1)


def teacher_writes_tests(cfg, requests, store, progress=None, label=""):
    """validate's `ask`: the teacher writes, for each answer, a test of that answer's function."""
    out = {}
    for r in requests:
        sid = r.key.split("/")[1]                     # tests/<seed id>/<hash>
        name = WORDS[int(generate.base_seed_id(sid)[1:])]
        out[r.key] = {"key": r.key, "text": f"```python\nassert add_{name}(2, 3) == 5\n```", "finish_reason": "stop",
                      "completion_tokens": 5}
    return out, {"asked": len(requests), "reused": 0, "completion_tokens": 5 * len(requests), "prompt_tokens": 0,
                 "seconds": 1.0, "tokens_per_second": 5.0}


def test_three_samples_then_validate_keep_at_most_one_passing_answer_per_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "open_teacher", PlanTeacher)
    monkeypatch.setattr(generate, "teacher_path", lambda cfg: None)
    monkeypatch.setattr(validate, "ask", teacher_writes_tests)
    run = tmp_path / "run"
    seeds_file(run / "seeds.parquet", len(PLAN), lambda i: f"def seed_{i}():\n    return {i}\n")
    sets = ["generate.samples=3", "generate.temperature=0.7",
            # offline and quick: HumanEval alone for decontamination; no near-duplicate pass (these
            # tiny pairs of different seeds would look alike)
            "clean.benchmarks=humaneval", "clean.near_dup_threshold=0", "clean.similarity=false"]
    for stage in ("generate", "clean", "validate"):
        assert cli.main([stage, "--profile", "smoke", "--run-dir", str(run), "--quiet",
                         *[x for s in sets for x in ("--set", s)]]) == 0, stage
    pairs = [json.loads(x) for x in (run / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 14  # 5 seeds x 3 samples, one rejected
    clean = pq.read_table(run / "clean.parquet").column("seed_id").to_pylist()
    assert sorted(clean) == ["s0", "s1", "s2", "s3", "s4"]  # clean keeps one answer per seed ...
    removed = pq.read_table(run / "removed.parquet").to_pylist()
    assert {r["seed_id"] for r in removed if r["reason"] == "duplicate_seed"} == \
        {p["seed_id"] for p in pairs} - set(clean)    # ... and lists the others, which validate reads
    kept = pq.read_table(run / "validated.parquet").to_pylist()
    ids = [r["seed_id"] for r in kept]
    assert set(ids) == CHOSEN and len({generate.base_seed_id(x) for x in ids}) == len(ids)
    assert all(RIGHT.strip() in r["solution"] for r in kept)
    log = [json.loads(x) for x in (run / "validation.jsonl").read_text().splitlines()]
    assert len(log) == 14 and {x["seed_id"] for x in log if x["kept"]} == CHOSEN
    assert sum(x["status"] == "passed" for x in log) == 6  # s2#2 passed too, but s2 was kept first
    stats = json.loads((run / "manifests" / "validate.json").read_text())["stats"]
    assert (stats["pairs_in"], stats["kept"], stats["answers"], stats["seeds_with_a_pass"]) == (5, 4, 14, 4)
    assert json.loads((run / "manifests" / "validate.json").read_text())["inputs"].keys() == \
        {"clean.parquet", "removed.parquet"}


@pytest.mark.e2e
def test_real_teacher_three_samples_then_validate_keep_at_most_one_per_seed(tmp_path):
    """The smoke profile with the embedded teacher: two seeds, three sampled answers each; validate
    writes tests for every answer that survived clean and keeps at most one per seed."""
    run = tmp_path / "run"
    sets = ["seeds.num_seeds=2", "generate.samples=3", "generate.temperature=0.7", "generate.max_tokens=384",
            "generate.parallel=3", "validate.max_tokens=128", "clean.benchmarks=humaneval"]
    for stage in ("seeds", "generate", "clean", "validate"):
        assert cli.main([stage, "--profile", "smoke", "--run-dir", str(run), "--quiet",
                         *[x for s in sets for x in ("--set", s)]]) == 0, stage
    answers = [json.loads(x) for p in ("pairs.jsonl", "rejected.jsonl") for x in (run / p).read_text().splitlines()]
    seeds = {generate.base_seed_id(a["seed_id"]) for a in answers}
    assert len(answers) == 3 * len(seeds) == 6
    assert len({a["raw"] for a in answers}) > len(seeds)  # sampled: not one answer repeated
    kept = [generate.base_seed_id(x) for x in pq.read_table(run / "validated.parquet").column("seed_id").to_pylist()]
    assert len(kept) == len(set(kept)) <= len(seeds)
    log = [json.loads(x) for x in (run / "validation.jsonl").read_text().splitlines()]
    assert sum(x["kept"] for x in log) == len(kept)
    assert all(x["status"] in ("passed", "not_run") for x in log if x["kept"])
