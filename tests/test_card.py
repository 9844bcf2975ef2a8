"""The dataset card, `repro report RUN`, `--quiet` and log.txt (issue 9).

One small run directory is made by the real stages: seeds from two files (one MIT, one without a
licence), teacher answers written in generate's format (the teacher itself is too slow here), a
HumanEval copy among them, and clean against HumanEval and APPS (whose data is not given, so not
checked). Loading goes through the installed `datasets` and `huggingface_hub`, offline, with their
caches in a temporary directory.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from repro import card, cli, config, console, pipeline  # noqa: E402
from repro.artifacts import RunDir, digest  # noqa: E402
from repro.models import EMBEDDED  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEACHER = EMBEDDED["qwen2.5-coder-0.5b-instruct-q4_k_m"]


def repro(*args):
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _sources(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "stack.py").write_text("# SPDX-License-Identifier: MIT\n" + "".join(
        f"def op{i}(a, b):\n    return a * {i} + b\n\n" for i in range(12)))
    (d / "loop.sh").write_text("#!/bin/bash\n" + "".join(f'echo "step {i}"\nsleep 0\n' for i in range(10)))
    return d


def _fake_generate(run: RunDir) -> None:
    """pairs.jsonl and the generate manifest as the generate stage writes them, answers made up."""
    import duckdb

    from repro.data.benchmarks import humaneval

    cfg = config.load("smoke")
    seeds = duckdb.sql(f"SELECT seed_id, language, path, seed FROM read_parquet('{run / 'seeds.parquet'}')").fetchall()
    he = humaneval()[0]
    answers = [(sid, lang, path, seed, f"Write {lang} function number {i}, which returns {i * 7} for the input {i}.",
                "```" + (f"python\ndef f(x):\n    return {i}\n" if lang == "python" else f"bash\necho {i}\n") + "```")
               for i, (sid, lang, path, seed) in enumerate(seeds)]
    answers.append(("he-0", "python", "x.py", "x", he["prompt"], "```python\n" + he["canonical_solution"] + "```"))
    with open(run / "pairs.jsonl", "w") as f:
        for sid, lang, path, seed, problem, solution in answers:
            f.write(json.dumps({"key": f"{sid}/0", "seed_id": sid, "language": lang, "path": path, "prompt_hash": "p",
                                "model": TEACHER.sha256, "params_hash": "h", "seed": seed, "seed_truncated": False,
                                "max_tokens": 512, "backend": "llama-batched",
                                "raw": f"[Problem Description]\n{problem}\n\n[Solution]\n{solution}",
                                "finish_reason": "stop", "prompt_tokens": 90, "completion_tokens": 40,
                                "seconds": 1.5, "problem": problem, "solution": solution}) + "\n")
    (run / "rejected.jsonl").write_text("")
    settings, inputs, outputs = pipeline.stage_plan("generate", cfg)
    stats = {"seeds": len(seeds), "resumed_from": 0, "generated": len(answers), "failed": 0, "truncated": 0,
             "backend": "llama-batched", "parallel": 8, "threads": 2, "model": TEACHER.sha256,
             "completion_tokens": 40 * len(answers), "prompt_tokens": 90 * len(answers), "decode_seconds": 6.0,
             "tokens_per_second": 12.5, "pairs": len(answers), "rejected": 0, "rejected_by_reason": {},
             "wall_seconds": 7.0}
    run.write_manifest("generate", "made-up", settings, {n: digest(run / n) for n in inputs}, outputs, stats, 7.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    tmp = tmp_path_factory.mktemp("card")
    src = _sources(tmp / "src")
    run = RunDir(tmp / "run")
    common = ["--profile", "smoke", "--run-dir", str(run.path), "--quiet"]
    assert cli.main(["seeds", *common, "--set", f"seeds.source={src}", "--set", "seeds.quotas=python=4,shell=2",
                     "--set", "seeds.num_seeds=6"]) == 0
    _fake_generate(run)
    # report.categories=tfidf: recorded in run.json, it spares `repro report` the teacher's embeddings.
    assert cli.main(["clean", *common, "--set", "clean.benchmarks=humaneval,apps",
                     "--set", "report.categories=tfidf"]) == 0
    card.write_card(run)  # what the report stage does after report.md (whose own cost is not ours)
    return run


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    return str(tmp_path / "hf")


def _kept(run: RunDir) -> int:
    return run.manifest("clean")["stats"]["kept"]


def test_the_dataset_loads_with_the_parquet_and_json_loaders(run, hf_cache):
    from datasets import load_dataset

    via_parquet = load_dataset("parquet", data_files=str(run / "clean.parquet"), cache_dir=hf_cache)["train"]
    via_json = load_dataset("json", data_files=str(run / "clean.jsonl"), cache_dir=hf_cache)["train"]
    assert via_parquet.num_rows == via_json.num_rows == _kept(run) == 6
    assert {"seed_id", "language", "seed", "problem", "solution", "code_blocks"} <= set(via_parquet.column_names)
    assert via_json.column_names == via_parquet.column_names
    assert via_json["problem"] == via_parquet["problem"] and via_json["code_blocks"] == via_parquet["code_blocks"]


def test_the_run_directory_loads_through_the_cards_configs(run, hf_cache):
    from datasets import load_dataset

    assert load_dataset(str(run.path), cache_dir=hf_cache)["train"].num_rows == _kept(run)
    removed = load_dataset(str(run.path), "removed", cache_dir=hf_cache)["train"]
    assert removed["seed_id"] == ["he-0"] and removed["reason"] == ["contaminated_humaneval"]


def test_the_card_parses_and_names_the_data_files(run):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(run / "README.md")
    assert card.data.configs[0] == {"config_name": "default", "default": True,
                                    "data_files": [{"split": "train", "path": "clean.parquet"}]}
    assert card.data.size_categories == ["n<1K"] and {"python", "shell"} <= set(card.data.tags)


def test_the_card_names_the_teacher_and_its_sha256(run):
    text = (run / "README.md").read_text()
    assert TEACHER.title in text and TEACHER.sha256 in text and "Apache-2.0" in text


def test_the_card_counts_languages_and_seed_licences(run):
    _, facts = card.build(run)
    assert facts["rows"] == 6 and facts["languages"] == {"python": 4, "shell": 2}
    assert facts["licences"] == ["MIT", "unknown"]
    text = (run / "README.md").read_text()
    assert "| python | 4 | 4 |" in text and "| shell | 2 | 2 |" in text
    assert "| MIT |" in text and "`stack.py`" in text and "`loop.sh`" in text


def test_the_card_reports_each_benchmark_checked_or_not_and_what_was_removed(run):
    _, facts = card.build(run)
    assert facts["decontamination"]["humaneval"] == {"status": "checked", "flagged": 1, "removed": 1}
    assert facts["decontamination"]["apps"] == {"status": "not checked", "flagged": None, "removed": None}
    text = (run / "README.md").read_text()
    assert "| apps | not checked |" in text and "clean.benchmark_paths apps=FILE" in text
    assert "OSS-Instruct (paper) | 0.105" in text and "Magicoder: Empowering Code Generation" in text


def test_repro_report_run_rebuilds_the_report_and_card_and_reruns_nothing(run):
    (run / "README.md").unlink()
    (run / "clean.jsonl").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in [*(run.path / "manifests").iterdir(), run / "run.json",
                                                     run / "clean.parquet", run / "seeds.parquet"]}
    r = repro("report", str(run.path))
    assert r.returncode == 0, r.stderr
    assert f"dataset card → {run / 'README.md'}" in r.stderr
    assert (run / "README.md").exists() and (run / "clean.jsonl").exists() and (run / "report.md").exists()
    after = {p.name: p.stat().st_mtime_ns for p in [*(run.path / "manifests").iterdir(), run / "run.json",
                                                    run / "clean.parquet", run / "seeds.parquet"]}
    assert after == before


def test_repro_report_of_a_missing_run_is_one_line():
    r = repro("report", "no-such-run-9f3c")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: repro report no-such-run-9f3c: no such run directory")


def test_quiet_prints_nothing_and_log_txt_has_the_stages_lines(tmp_path):
    src = _sources(tmp_path / "src")
    r = repro("seeds", "--profile", "smoke", "--set", f"seeds.source={src}", "--run-dir", str(tmp_path / "run"),
              "--quiet")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr
    log = (tmp_path / "run" / "log.txt").read_text()
    for words in ("$ repro seeds --profile smoke", "→ seeds: started", "seeds: found per language",
                  "seeds: read the sources, cut seeds: done", "✓ seeds", "done in"):
        assert words in log, log
    assert all(line[:4].isdigit() for line in log.splitlines()), "every line starts with its timestamp"


def test_a_failing_run_writes_its_error_line_to_log_txt(tmp_path):
    (tmp_path / "run").mkdir()
    r = repro("clean", "--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--quiet")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stdout == ""
    assert r.stderr.strip() in (tmp_path / "run" / "log.txt").read_text()


def test_progress_goes_to_the_log_periodically_and_at_the_end(tmp_path):
    lines = []

    class Sink:
        def write(self, text):
            lines.append(text)

    with console.LoggedProgress(log=Sink(), every=0.05, disable=True) as progress:
        task = progress.add_task("generate", total=4, completed=1)  # one answer from an earlier run
        progress.update(task, advance=1)
        time.sleep(0.2)
        progress.update(task, advance=2)
    assert any("generate: 2/4 done" in x and "eta" in x for x in lines), lines
    assert "generate: 4/4 done" in lines[-1] and "/s" in lines[-1] and "eta" not in lines[-1]
    assert sum("4/4" in x for x in lines) == 1, "the end is logged once"
