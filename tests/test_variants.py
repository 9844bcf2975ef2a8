"""Variants (`repro run --variant`): two-stage training, shared stages, run names, the ablation."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from repro import ablation, config, pipeline, student, train
from repro.artifacts import ReproError, RunDir, fingerprint

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"problem": "write a function that adds two numbers", "solution": "def add ( x , y ) : return x + y"},
        {"problem": "reverse the string s", "solution": "return s [ :: -1 ]"},
        {"problem": "write a function that returns the string s", "solution": "def f ( s ) : return s"},
        {"problem": "add the two numbers x and y", "solution": "return x + y"},
        {"problem": "reverse s", "solution": "def reverse ( s ) : return s [ :: -1 ]"}]
SETTINGS = ["train.max_steps=3", "train.batch_size=1", "train.lr=0.01", "train.lora_r=4", "train.lora_alpha=8",
            "train.precision=fp32", "train.device=cpu", "train.max_len=256", "train.threads=1"]


def repro(*args):
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True, cwd=ROOT)


def write_pairs(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"problem": [r["problem"] for r in rows], "solution": [r["solution"] for r in rows]}), path)
    return path


def test_variants_choose_their_stages_inputs_and_run_names():
    assert pipeline.stages_of("oss") == ["seeds", "generate", "clean", "train", "export", "evaluate", "report"]
    assert pipeline.stages_of("oss+validated+evol")[2:5] == ["clean", "validate", "evol"]
    assert "evol" not in pipeline.stages_of("oss+validated") and "validate" not in pipeline.stages_of("oss+evol")
    cfg = config.load("smoke")
    for variant, inputs, name in [("oss", ["clean.parquet"], "tiny"),
                                  ("oss+validated", ["validated.parquet"], "tiny-validated"),
                                  ("oss+evol", ["clean.parquet", "evol.parquet"], "tiny-evol"),
                                  ("oss+validated+evol", ["validated.parquet", "evol.parquet"], "tiny-validated-evol")]:
        cfg.variant = variant
        assert pipeline.train_inputs(cfg) == inputs and pipeline.run_name("tiny", variant) == name


def test_an_unknown_variant_is_one_line(tmp_path):
    r = repro("run", "--profile", "smoke", "--variant", "oss+magic", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--variant 'oss+magic' is unknown" in r.stderr
    assert not (tmp_path / "r").exists()


def test_a_variant_stage_without_its_input_names_the_command(tmp_path, student_dir):
    write_pairs(tmp_path / "r" / "clean.parquet", ROWS)
    r = repro("train", "--profile", "smoke", "--variant", "oss+evol", "--set", f"train.student={student_dir}",
              "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and "evol.parquet is missing; run `repro evol --profile smoke --variant oss+evol`" in r.stderr


def test_a_finished_stage_is_copied_from_a_shared_run(tmp_path):
    a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b", share=[RunDir(tmp_path / "a")])
    a.create()
    (a / "out.txt").write_text("made once")
    fp = fingerprint("clean", {"x": 1})
    a.write_manifest("clean", fp, {"x": 1}, {}, ["out.txt"], {"kept": 1}, 1.0)
    assert b.reuse("clean", fingerprint("clean", {"x": 2}), ["out.txt"]) is None  # other settings: not the same
    assert b.reuse("clean", fp, ["out.txt"]).path == a.path
    assert (b / "out.txt").read_text() == "made once" and b.is_done("clean", fp, ["out.txt"])
    assert b.manifest("clean")["reused_from"] == str(a.path)
    (a / "out.txt").write_text("changed since")  # a damaged or edited output is not copied
    c = RunDir(tmp_path / "c", share=[a])
    assert c.reuse("clean", fp, ["out.txt"]) is None


def test_two_stage_training_starts_the_second_from_the_first_adapter(tmp_path, student_dir):
    run = tmp_path / "run"
    write_pairs(run / "clean.parquet", ROWS)
    write_pairs(run / "evol.parquet", ROWS[:2])
    sets = [a for s in [f"train.student={student_dir}", *SETTINGS, "train.max_pairs=4", "evol.train_pairs=1",
                        "train.max_steps=0", "train.epochs=1"] for a in ("--set", s)]
    r = repro("train", "--profile", "smoke", "--variant", "oss+evol", *sets, "--run-dir", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((run / "manifests" / "train.json").read_text())["stats"]
    assert (s["stage1"]["examples"], s["stage1"]["pairs_available"]) == (4, 5)  # train.max_pairs
    assert (s["stage2"]["examples"], s["stage2"]["pairs_available"]) == (1, 2)  # evol.train_pairs
    assert s["steps"] == 4 + 1 and s["examples"] == 5
    assert any("started from the adapter" in n for n in s["notes"])
    assert (run / "adapter-oss" / "adapter_model.safetensors").exists() and (run / "train_log_evol.jsonl").exists()

    # The second stage's model holds the first adapter's weights before it trains.
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    cfg = config.load("smoke", SETTINGS).train
    model = student.add_lora(AutoModelForCausalLM.from_pretrained(student_dir), cfg)
    first = load_file(run / "adapter-oss" / "adapter_model.safetensors")
    train.load_adapter(model, run / "adapter-oss")
    named = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
    assert first and all(torch.equal(named[k], v) for k, v in first.items())
    final = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(final[k], first[k]) for k in first)  # and the second stage moved them

    # Only the second stage again when its output is lost: the first's fingerprint is beside it.
    before = (run / "adapter-oss" / "adapter_model.safetensors").stat().st_mtime_ns
    (run / "manifests" / "train.json").unlink()
    r = repro("train", "--profile", "smoke", "--variant", "oss+evol", *sets, "--run-dir", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    assert (run / "adapter-oss" / "adapter_model.safetensors").stat().st_mtime_ns == before
    again = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(again[k], final[k]) for k in final)


def test_no_evolved_pairs_leaves_the_first_stage_as_the_model_and_says_so(tmp_path, student_dir):
    """The small teacher may rewrite every chosen problem back unchanged: the run goes on, loudly."""
    run = tmp_path / "run"
    write_pairs(run / "clean.parquet", ROWS)
    write_pairs(run / "evol.parquet", [])
    sets = [a for s in [f"train.student={student_dir}", *SETTINGS] for a in ("--set", s)]
    r = repro("train", "--profile", "smoke", "--variant", "oss+evol", *sets, "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert "train (stage 2, Evol-Instruct): skipped:" in " ".join(r.stderr.split())
    s = json.loads((run / "manifests" / "train.json").read_text())["stats"]
    assert "stage2" not in s and s["stage2_skipped"].startswith("skipped:") and s["steps"] == s["stage1"]["steps"] == 3
    from safetensors.torch import load_file
    first = load_file(run / "adapter-oss" / "adapter_model.safetensors")
    final = load_file(run / "adapter" / "adapter_model.safetensors")
    assert first.keys() == final.keys() and all(torch.equal(final[k], first[k]) for k in first)
    assert not (run / "adapter" / "repro-stage.json").exists()

    # The report's section on the variant says so (an evol manifest as the stage writes it for 0 kept).
    from repro.report import sections
    (run / "manifests" / "evol.json").write_text(json.dumps({"stats": {
        "problems": 5, "evolved": 2, "pairs": 0, "kept": 0, "pairs_by_heuristic": {}, "teacher": {}}}))
    text = " ".join(str(x) for x in sections.sec_beyond(sections.RunData(RunDir(run), pipeline.STAGES)))
    assert "No second training stage" in text and "3 steps" in text


def test_an_adapter_of_another_shape_is_one_line(tmp_path, student_dir, tiny_model):
    cfg = config.load("smoke", SETTINGS).train
    model = student.add_lora(tiny_model, cfg)
    model.save_pretrained(tmp_path / "a4")
    from transformers import AutoModelForCausalLM
    other = student.add_lora(AutoModelForCausalLM.from_pretrained(student_dir), config.load("smoke", SETTINGS + ["train.lora_r=8"]).train)
    with pytest.raises(ReproError, match="cannot start from the adapter"):
        train.load_adapter(other, tmp_path / "a4")


def test_subset_is_fixed_and_in_order():
    rows = list(range(20))
    a = train.subset(rows, 7, 42)
    assert a == train.subset(rows, 7, 42) and a == sorted(a) and len(a) == 7 and train.subset(rows, 0, 42) == rows


# ---------------------------------------------------------------------------------------------
# The ablation's sizes and comparison


def test_equal_size_takes_the_smallest_pool_and_half_at_most_from_evol():
    assert ablation.sizes({"oss": 40, "oss+validated": 19}, None) == (19, 0)
    assert ablation.sizes({"oss": 40, "oss+validated": 19, "oss+evol": 40}, 15) == (19, 9)
    assert ablation.sizes({"oss": 40, "oss+evol": 40}, 6) == (40, 6)
    with pytest.raises(ReproError, match="has no training pairs"):
        ablation.sizes({"oss": 40, "oss+validated": 0}, None)
    with pytest.raises(ReproError, match="evol stage kept 0 pairs"):
        ablation.sizes({"oss": 40, "oss+evol": 40}, 0)


def fake_run(path: Path, per_task: dict[str, list[bool]], examples: int, stage2: int = 0, validate=None) -> RunDir:
    run = RunDir(path)
    run.create()
    ids = {b: [f"{b}/{i}" for i in range(len(v))] for b, v in per_task.items()}
    res = lambda v: {"passed": sum(v), "pass@1": sum(v) / len(v), "ci95": [0, 1], "per_task": v}  # noqa: E731
    models = {"finetuned": {b: {"base": res(v), "plus": res(v)} for b, v in per_task.items()},
              "base": {b: {"base": res([False] * len(v))} for b, v in per_task.items()}}
    stats = {"benchmarks": {b: {"plus": True, "task_ids": ids[b], "n": len(ids[b])} for b in per_task}, "models": models}
    run.write_manifest("evaluate", "f", {}, {}, [], stats, 1.0)
    t = {"examples": examples, "steps": examples, "final_loss": 0.5}
    if stage2:
        t["stage2"] = {"examples": stage2}
    run.write_manifest("train", "f", {}, {}, [], t, 1.0)
    if validate:
        run.write_manifest("validate", "f", {}, {}, [], validate, 2.0)
    return run


def test_comparison_is_paired_and_the_conclusion_follows_the_intervals(tmp_path):
    n = 60
    oss = [i % 3 == 0 for i in range(n)]
    better = [True] * n
    same = list(oss)
    val = {"pairs_in": 40, "kept": 19, "passed": 3, "failed": 16, "timeout": 0, "no_tests": 4, "not_run": 17,
           "pass_rate": 0.13, "per_language": {"python": {"passed": 3, "failed": 16, "timeout": 0, "no_tests": 4,
                                                          "not_run": 0, "pass_rate": 0.13}},
           "pairs_per_minute": 12.0, "programs_per_second": 9.0, "rescued_by_sampling": 0, "samples": 1,
           "teacher": {"tokens_per_second": 20.0}}
    runs = {"oss": fake_run(tmp_path / "oss", {"humaneval": oss}, 19),
            "oss+validated": fake_run(tmp_path / "v", {"humaneval": better}, 19, validate=val),
            "oss+evol": fake_run(tmp_path / "e", {"humaneval": same}, 19, stage2=9)}
    r = ablation.compare(runs, {"oss": 40, "oss+validated": 19, "oss+evol": 40}, 19, 9)
    d = {(x["variant"], x["benchmark"]): x for x in r["vs_oss"]}
    assert d["oss+validated", "HumanEval"]["diff"] == pytest.approx(2 / 3, abs=0.01)
    assert d["oss+validated", "HumanEval"]["ci95"][0] > 0 and d["oss+evol", "HumanEval+"]["diff"] == 0
    assert r["conclusion"].startswith("Better than oss beyond chance: oss+validated on HumanEval")
    md = ablation.render(r)
    assert "| oss+evol | 19 (9) |" in md and "## Validation" in md and "| python | 3 | 16 |" in md
    same_only = ablation.compare({k: runs[k] for k in ("oss", "oss+evol")}, {"oss": 40, "oss+evol": 40}, 19, 9)
    assert "no variant differs from oss beyond chance" in same_only["conclusion"]
