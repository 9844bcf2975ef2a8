"""Diversity measures (repro/diversity.py) and `repro compare` (repro/report/compare.py): hand-made
data sets of known diversity — one template repeated with small substitutions, one varied — rank
the right way round on every measure with separated intervals; compare writes its page and figures;
a run without clean.parquet is one line."""

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from repro import cli, diversity
from repro.artifacts import write_json

N = 60
TOPICS = [  # (opening, words of one of the ten categories)
    ("Given a graph,", "binary search tree traversal linked list stack queue heap recursion"),
    ("Compute the", "prime factorial fibonacci geometry matrix equation probability formula"),
    ("Write a SQL query", "select insert join group table rows columns schema index transaction sqlite"),
    ("Design a plugin", "services modules interfaces configuration logging message kernel driver"),
    ("Encrypt the password", "authentication authorization hash decrypt token certificate permission"),
    ("Profile this code", "speed memory profiling concurrency thread parallel async lock benchmark"),
    ("Build a Flask route", "http request response rest endpoint jsonify server url html browser"),
    ("Simulate a bank", "finance science physics biology chemistry game audio music midi"),
    ("Create a GUI window", "button widget event click handler layout menu dialog mobile desktop"),
    ("Load a pandas dataframe", "dataset numpy statistics train model neural network regression plot csv"),
]


def template_set(n=N):
    rng = random.Random(1)
    things = ["list", "string", "array", "tuple"]
    return [f"Write a function that returns the sum of the {rng.choice(things)} of numbers number {i % 7}."
            for i in range(n)]


def varied_set(n=N):
    rng = random.Random(2)
    out = []
    for i in range(n):
        head, vocab = TOPICS[i % len(TOPICS)]
        w = vocab.split()
        out.append(f"{head} {' '.join(rng.sample(w, 6))} {rng.choice(['quickly', 'safely', 'twice', 'lazily'])} "
                   f"case {i} {rng.choice(['alpha', 'beta', 'gamma', 'delta', 'omega'])}")
    return out


def _measures(problems, sims, seed):
    found = diversity.cheap(problems, sims, resamples=400, seed=seed)
    vecs, labels, method = diversity.vectors_and_labels(problems, "tfidf")
    assert method == "tfidf"
    found.update(diversity.embedded(vecs, labels, resamples=400, seed=seed))
    return found


def test_every_measure_ranks_the_sets_and_the_intervals_separate_them():
    rng = random.Random(3)
    tmpl = _measures(template_set(), [0.3 + rng.random() * 0.05 for _ in range(N)], 0)
    var = _measures(varied_set(), [0.1 + rng.random() * 0.05 for _ in range(N)], 1)
    assert set(tmpl) == set(var) == set(diversity.MEASURES)
    for k, (_, better) in diversity.MEASURES.items():
        a, b = var[k], tmpl[k]  # A = varied: more diverse on every measure
        d = diversity.difference(a, b)
        assert d["holds"], (k, a["value"], b["value"], d)
        assert (d["value"] > 0) == (better == "higher"), (k, d)
        apart = a["ci95"][0] > b["ci95"][1] if better == "higher" else a["ci95"][1] < b["ci95"][0]
        assert apart, (k, a["ci95"], b["ci95"])
        for m in (a, b):
            assert m["ci95"][0] <= m["value"] <= m["ci95"][1] + 1e-9
    assert tmpl["opening_share"]["opening"] == "write a function that" and tmpl["opening_share"]["value"] == 1.0


def test_definitions_on_a_tiny_set():
    m = diversity.cheap(["a b a", "a b c d e"], resamples=50)
    # 8 words; distinct 1-grams a b c d e = 5; 2-grams ab ba bc cd de = 5 (ab twice); 3-grams aba abc bcd cde = 4
    assert m["distinct_1"]["value"] == pytest.approx(5 / 8 * 1000)
    assert m["distinct_2"]["value"] == pytest.approx(5 / 8 * 1000)
    assert m["distinct_3"]["value"] == pytest.approx(4 / 8 * 1000)
    assert m["opening_share"]["value"] == 0.5
    e = diversity.embedded([[1, 0], [0, 1], [1, 0]], ["x", "y", None], resamples=50)
    assert e["cosine_distance"]["value"] == pytest.approx(4 / 6)  # 2 of 3 unordered pairs orthogonal
    assert e["category_entropy"]["value"] == pytest.approx(1.0)


def test_equal_size_subsamples_the_larger_set_with_a_fixed_seed():
    a, b = diversity.equal_size(10, 4)
    assert len(a) == len(b) == 4 and b == [0, 1, 2, 3] and a == sorted(set(a))
    assert diversity.equal_size(10, 4) == (a, b)


def _run(path, problems, sims, trained=None):
    path.mkdir(parents=True)
    write_json(path / "run.json", {"profile": "tiny", "config": {"report": {"categories": "tfidf"}}})
    pq.write_table(pa.table({"seed_id": [f"s{i}" for i in range(len(problems))], "problem": problems,
                             "solution": ["def f(x):\n    return x"] * len(problems),
                             "humaneval_similarity": pa.array(sims, pa.float64())}), path / "clean.parquet")
    if trained is not None:
        (path / "manifests").mkdir()
        (path / "eval").mkdir()
        write_json(path / "manifests" / "train.json", {"stats": {"examples": trained}})
        write_json(path / "eval" / "results.json", {"models": {"finetuned": {"humaneval": {
            "base": {"pass@1": 0.1, "ci95": [0.05, 0.2]}, "plus": {"pass@1": 0.08, "ci95": [0.03, 0.15]}}}}})
    return path


def test_compare_writes_the_table_and_the_figures(tmp_path, capsys):
    a = _run(tmp_path / "oss", varied_set(), [0.1] * N, trained=N)
    b = _run(tmp_path / "self", template_set(N + 15), [0.3] * (N + 15), trained=N)
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(a), str(b), "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert "| measure | oss | self | oss − self (95%) | holds |" in md
    for k in diversity.MEASURES:
        assert diversity.MEASURES[k][0] in md, k
    assert "both sets at 60 pairs" in md and "at equal size" in md and "10.0 (5–20)" in md
    for name in ("categories", "similarity"):
        assert (out / "compare-figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert f"(compare-figures/{name}.png)" in md
    facts = json.loads((out / "compare.json").read_text())
    assert facts["pairs"] == 60 and all(v["difference"]["holds"] for v in facts["measures"].values())
    assert "differences that hold" in capsys.readouterr().out


def test_a_run_without_clean_parquet_is_one_line(tmp_path, capsys):
    a = _run(tmp_path / "oss", varied_set(), [0.1] * N)
    (tmp_path / "empty").mkdir()
    assert cli.main(["compare", str(a), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no clean.parquet" in err and "repro clean" in err


def test_the_clean_stage_stats_carry_the_cheap_measures(tmp_path):
    from repro import clean
    from repro.config import CleanConfig

    rows = [{"seed_id": f"s{i}", "seed": f"seed {i}", "problem": p, "solution": f"def f{i}(x):\n    return {i}"}
            for i, p in enumerate(varied_set(20))]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"language": "python", "path": "f.py", **r}) + "\n" for r in rows))
    cfg = CleanConfig(benchmarks=["humaneval"], methods=[], syntax_check=False, similarity=False)
    stats = clean.run(cfg, pairs, tmp_path / "clean.parquet", tmp_path / "removed.parquet")
    d = stats["diversity"]
    assert d["pairs"] == stats["kept"] == 20
    assert set(d["measures"]) == {"distinct_1", "distinct_2", "distinct_3", "opening_share"}  # no similarity: off
    json.dumps(d)  # JSON for the manifest
    m = d["measures"]["distinct_1"]
    assert m["ci95"][0] <= m["value"] <= m["ci95"][1]


def test_a_runs_report_sets_it_beside_its_self_instruct_twin(tmp_path):
    from repro.pipeline import STAGES as NAMES
    from repro.report import build
    from repro.artifacts import RunDir

    a = _run(tmp_path / "tiny", varied_set(), [0.1] * N, trained=N)
    _, sections, _ = build(RunDir(a), NAMES)
    alone = dict(sections)["OSS-Instruct against Self-Instruct"]
    assert "No Self-Instruct twin" in alone[0][1] and "--variant self-instruct" in alone[0][1]
    _run(tmp_path / "tiny-self-instruct", template_set(N + 15), [0.3] * (N + 15), trained=N)
    for run in (a, tmp_path / "tiny-self-instruct"):  # either run's report shows OSS-Instruct first
        blocks = dict(build(RunDir(run), NAMES)[1])["OSS-Instruct against Self-Instruct"]
        tables = [b for b in blocks if b[0] == "table"]
        assert "at 60 pairs each" in blocks[0][1] and tables[1][1][1:3] == ["tiny", "tiny-self-instruct"]
        assert {b[1] for b in blocks if b[0] == "fig"} == {"versus_categories", "versus_similarity"}
