"""`repro curve` (nested subsets, base rows, cached sizes) and the control row's words. The curve
runs on the smoke profile with the tiny Gemma-3 checkpoint of tests/builders.py: no download."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builders import write_clean
from repro import curve, train
from repro.artifacts import ReproError
from repro.report.effects import control_sentences

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"problem": f"Write a function that returns {i} plus its argument.",
         "solution": f"def add_{i}(x):\n    return x + {i}"} for i in range(4)]
SETTINGS = ["train.max_steps=0", "train.epochs=1", "train.batch_size=1", "train.lr=0.01", "train.lora_r=4",
            "train.lora_alpha=8", "train.precision=fp32", "train.device=cpu", "train.max_len=256",
            "train.threads=1", "train.warmup_steps=0", "export.quant=q8_0", "export.roundtrip_quants=q8_0",
            "evaluate.benchmarks=humaneval", "evaluate.limit=3", "evaluate.max_tokens=8", "evaluate.multilingual=",
            "evaluate.parallel=2"]


def repro(*args, env=None):
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env)


def test_subsets_of_one_seed_are_nested_and_in_order():
    rows = list(range(50))
    prev: set = set()
    for k in range(1, 51):
        cur = train.subset(rows, k, 7)
        assert cur == sorted(cur) and len(cur) == k and prev <= set(cur)
        prev = set(cur)
    assert train.subset(rows, 10, 7) != train.subset(rows, 10, 8)  # the seed chooses


def test_sizes_and_settings_are_checked_in_one_line(tmp_path):
    assert curve.parse_sizes("100, 0,50,50") == [0, 50, 100]
    for bad in ("", "a,b", "-1,5"):
        with pytest.raises(ReproError, match="--sizes"):
            curve.parse_sizes(bad)
    with pytest.raises(ReproError, match="run.json"):
        curve.from_run(tmp_path, [])
    (tmp_path / "run.json").write_text(json.dumps({"profile": "smoke", "variant": "oss", "config": {}}))
    with pytest.raises(ReproError, match="only train., export. and evaluate."):
        curve.from_run(tmp_path, ["generate.max_tokens=5"])
    cfg = curve.from_run(tmp_path, ["evaluate.limit=3"])
    assert (cfg.evaluate.stride, cfg.evaluate.limit, cfg.evaluate.multilingual) == (1, 3, [])


@pytest.mark.slow  # about two minutes of train/export/evaluate: make test-all and CI run it
def test_curve_on_smoke_trains_nested_sizes_reuses_them_and_reports(tmp_path, hf_student):
    run = tmp_path / "run"
    write_clean(run / "clean.parquet", ROWS)
    common = ["--profile", "smoke", "--run-dir", str(run), "--set", f"train.student={hf_student}",
              *[x for s in SETTINGS for x in ("--set", s)]]
    for stage in ("train", "export"):  # the run itself: its settings (run.json) and base GGUF
        r = repro(stage, *common)
        assert r.returncode == 0, f"{stage}: {r.stderr[-3000:]}"
    # The curve's default is every problem; three here.
    r = repro("curve", str(run), "--sizes", "0,1", "--set", "evaluate.limit=3")
    assert r.returncode == 0, r.stderr[-3000:]
    first = json.loads((run / "curve" / "curve.json").read_text())
    assert first["pool"] == 4 and first["benchmarks"] == {"humaneval": 3}
    rows = {(p["row"], p["benchmark"]) for p in first["points"]}
    assert {("base", "HumanEval"), ("base-instruct", "HumanEval"), ("1", "HumanEval+")} <= rows
    assert first["train"]["1"]["pairs"] == 1 and first["train"]["1"]["steps"] == 1  # one epoch of one pair
    assert {(d["pairs"], d["vs"]) for d in first["vs_base"]} == {(1, "base"), (1, "base-instruct")}
    assert not first["slopes"] and "at least two sizes" in first["conclusion"]

    # A larger size later: the smaller ones are up to date, their answers reused; the new one trains
    # on a superset of the smaller one's pairs (the same permutation).
    r = repro("curve", str(run), "--sizes", "0,1,3", "--set", "evaluate.limit=3")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert out.count("up to date, skipped") >= 4  # size 0: evaluate; size 1: train, export, evaluate
    c = json.loads((run / "curve" / "curve.json").read_text())
    assert c["train"]["3"]["steps"] == 3 and set(c["slopes"]) == {"HumanEval", "HumanEval+"}
    log1 = [json.loads(x) for x in (run / "curve" / "1" / "train_log.jsonl").read_text().splitlines()]
    assert log1 and (run / "curve" / "curve.png").stat().st_size > 1000
    assert "Learning curve" in (run / "curve" / "curve.md").read_text()

    # The run's report shows the curve.
    r = repro("report", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    text = (run / "report.md").read_text()
    assert "## Learning curve" in text and "curve.png" not in text.split("## Learning curve")[0][-200:]
    assert "0 (base, instruction prompt)" in text

    # Sizes beyond the pairs: one line, nothing trained.
    r = repro("curve", str(run), "--sizes", "0,9", "--set", "evaluate.limit=3")
    assert r.returncode == 2 and "has 4 training pairs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (run / "curve" / "9").exists()


def _ev(diffs: dict) -> dict:
    """An evaluation's comparisons from {(a, b): (diff, lo, hi)} on HumanEval's base split."""
    rate = {"pass@1": 0.3, "ci95": [0.2, 0.4], "passed": 3}
    return {"benchmarks": {"humaneval": {"n": 10}},
            "models": {m: {"humaneval": {"base": rate}} for m in ("base", "base-instruct", "finetuned")},
            "comparisons": [{"a": a, "b": b, "benchmark": "humaneval", "split": "base", "diff": d, "ci95": [lo, hi]}
                            for (a, b), (d, lo, hi) in diffs.items()]}


def test_the_control_row_says_which_effect_the_run_shows():
    nothing = control_sentences(_ev({("base-instruct", "base"): (0.0, -0.1, 0.1),
                                     ("finetuned", "base"): (0.05, -0.05, 0.15),
                                     ("finetuned", "base-instruct"): (0.05, -0.05, 0.15)}))
    assert "Control on HumanEval" in nothing[0] and "Neither effect is measurable" in nothing[-1]
    trained = " ".join(control_sentences(_ev({("base-instruct", "base"): (-0.2, -0.3, -0.1),
                                              ("finetuned", "base"): (0.05, -0.05, 0.15),
                                              ("finetuned", "base-instruct"): (0.25, 0.1, 0.4)})))
    assert "effect of the training on HumanEval" in trained and "does not follow that format" in trained
    fmt = " ".join(control_sentences(_ev({("base-instruct", "base"): (0.1, 0.02, 0.2),
                                          ("finetuned", "base"): (0.12, 0.02, 0.2),
                                          ("finetuned", "base-instruct"): (0.02, -0.05, 0.1)})))
    assert "the prompt and format, not better coding" in fmt and "instruction prompt alone helps" in fmt
    # The comparison may be stored in either order: b − a is read as −(a − b).
    flipped = " ".join(control_sentences(_ev({("base", "base-instruct"): (0.2, 0.1, 0.3),
                                              ("base-instruct", "finetuned"): (0.2, 0.1, 0.3)})))
    assert "worse than the base student on the same prompt" in flipped and "does not follow" in flipped
