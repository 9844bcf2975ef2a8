"""A student given as a transformers checkpoint (a local folder, or a hub model id online):
train → export → evaluate, the base student evaluated from its own GGUF at the fine-tuned one's
quantization. The checkpoint is a two-layer Gemma-3 made here (tests/builders.py), no download."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builders import write_clean
from repro import models
from repro.artifacts import ReproError

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"problem": "Write a function that adds two numbers.", "solution": "def add(x, y):\n    return x + y"},
        {"problem": "Write a function that reverses a string.", "solution": "def reverse(s):\n    return s[::-1]"}]
SETTINGS = ["train.max_steps=2", "train.batch_size=1", "train.lr=0.01", "train.lora_r=4", "train.lora_alpha=8",
            "train.precision=fp32", "train.device=cpu", "train.max_len=256", "train.threads=1",
            "export.quant=q8_0", "export.roundtrip_quants=q8_0",
            "evaluate.models=base,finetuned", "evaluate.benchmarks=humaneval", "evaluate.limit=2",
            "evaluate.max_tokens=8", "evaluate.multilingual=", "evaluate.cache=false", "evaluate.parallel=2"]


def repro(*args):
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_specs_say_which_are_checkpoints(tmp_path, hf_student):
    assert models.is_checkpoint(str(hf_student)) and models.is_checkpoint("Qwen/Qwen2.5-Coder-1.5B@main")
    for gguf_spec in ("embedded:gemma-3-270m-q4_k_m", "hf://org/repo/f.gguf", "runs/x/model.gguf", ""):
        assert not models.is_checkpoint(gguf_spec)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").write_text("a file named like a hub id is a GGUF path")
    assert not models.is_checkpoint(str(tmp_path / "a" / "b"))
    # A folder's identity follows its files; a hub id's is the id (its revision included).
    assert models.model_id(str(hf_student)) == models.model_id(str(hf_student))
    assert models.model_id("org/name@v1") != models.model_id("org/name")
    with pytest.raises(ReproError, match="is a transformers checkpoint, not a GGUF file"):
        models.resolve(str(hf_student))


def test_a_folder_without_config_and_an_unreachable_hub_id_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReproError, match="a folder without config.json"):
        models.checkpoint_dir(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the hub: nothing is cached
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ReproError) as e:
        models.checkpoint_dir("nobody-here/no-such-model")
    msg = str(e.value)
    assert "\n" not in msg and "train.student=nobody-here/no-such-model" in msg and "huggingface.co" in msg


def test_a_checkpoint_student_trains_exports_and_is_evaluated_from_its_own_gguf(tmp_path, hf_student):
    run = tmp_path / "run"
    write_clean(run / "clean.parquet", ROWS)
    common = ["--profile", "smoke", "--run-dir", str(run), "--set", f"train.student={hf_student}",
              *[x for s in SETTINGS for x in ("--set", s)]]
    for stage in ("train", "export", "evaluate"):
        r = repro(stage, *common)
        assert r.returncode == 0, f"{stage}: {r.stderr[-3000:]}"
    ex = json.loads((run / "export.json").read_text())
    assert ex["base_gguf"] == "base-q8_0.gguf" and (run / "base-q8_0.gguf").is_file()
    assert ex["lora_base"] == "base-q8_0.gguf" and ex["roundtrip"]["tokenizer_match"]
    models.check_gguf(run / "base-q8_0.gguf", "export")
    res = json.loads((run / "eval" / "results.json").read_text())
    # Both students ran through llama.cpp from GGUFs of the same quantization (their hashes differ:
    # the adapter changed the weights), on the same problems.
    assert res["models"]["base"]["sha256"] == ex["base_sha256"] != res["models"]["finetuned"]["sha256"]
    assert res["models"]["finetuned"]["sha256"] == ex["sha256"]
    assert res["benchmarks"]["humaneval"]["n"] == 2
    # A second export is skipped: the student folder's identity has not changed.
    r = repro("export", *common)
    assert r.returncode == 0 and "skipped" in (r.stdout + r.stderr).lower()
