"""The whole pipeline on the `smoke` profile with the real embedded models (a few minutes)."""

import json
import subprocess
import sys

import duckdb
import pytest

from repro.cli import STAGES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    r = subprocess.run([sys.executable, "-m", "repro.cli", "run", "--profile", "smoke", "--run-dir", str(run_dir)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def test_every_stage_leaves_its_artifact_and_manifest(smoke_run):
    for name in ["seeds.parquet", "pairs.jsonl", "clean.parquet", "adapter/adapter_model.safetensors",
                 "train_log.jsonl", "model-q4_k_m.gguf", "eval/base.jsonl", "eval/finetuned.jsonl",
                 "eval/results.json", "report.md"]:
        assert (smoke_run / name).is_file(), name
    for stage in STAGES[:-1]:
        assert json.loads((smoke_run / "manifests" / f"{stage}.json").read_text())["stage"] == stage


def test_the_teacher_made_parsed_pairs_that_were_trained_on(smoke_run):
    n_clean = duckdb.sql(f"SELECT count(*) FROM read_parquet('{smoke_run / 'clean.parquet'}')").fetchone()[0]
    train = json.loads((smoke_run / "manifests" / "train.json").read_text())["stats"]
    assert n_clean >= 1 and train["examples"] == n_clean and train["steps"] == 2


def test_report_has_counts_and_a_pass_at_1_table_for_both_students(smoke_run):
    report = (smoke_run / "report.md").read_text()
    results = json.loads((smoke_run / "eval" / "results.json").read_text())
    assert "| seeds | " in report and "| clean | " in report
    for label in ("base", "finetuned"):
        r = results["models"][label]
        assert r["n"] == 3
        assert f"| {label} student | {r['prompt_style']} | {r['passed']}/3 |" in report


def test_exported_model_answers_in_llama_cpp(smoke_run):
    export = json.loads((smoke_run / "export.json").read_text())
    assert export["load_check_text"].strip()


def test_second_run_skips_every_stage(smoke_run):
    r = subprocess.run([sys.executable, "-m", "repro.cli", "run", "--profile", "smoke", "--run-dir", str(smoke_run)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in STAGES[:-1]:
        assert f"{stage}: up to date, skipped" in r.stderr
