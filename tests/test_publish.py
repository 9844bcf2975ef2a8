"""`repro export-data` and `repro publish` (issue 22, "Formats"): the formats load with `datasets`,
the dry-run folder passes huggingface_hub's and datasets' own checks and loads, and the push goes
through a recording stand-in for HfApi. No test touches the network: the Hub's caches live in a
temporary directory and HF_HUB_OFFLINE is set, except where a test replaces the offline check.

The run directories are written here in the shapes the stages leave (clean.parquet with clean's
columns, validated.parquet with the same schema, run.json, the export manifest): the stages
themselves are tested elsewhere, and running them would take minutes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from repro import cli, publish  # noqa: E402
from repro.artifacts import RunDir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HUB_ID = "someone/oss-instruct-test"


def repro(*args, env=None):
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _rows(n):
    langs = ["python", "shell", "rust"]
    return [{"seed_id": f"s{i}", "language": langs[i % 3], "path": f"f{i}.py", "seed": f"x{i} = {i}",
             "problem": f"Write a function number {i} that returns {i * 7}.",
             "solution": f"```python\ndef f{i}():\n    return {i * 7}\n```",
             "code_blocks": [{"language": "python", "code": f"def f{i}():\n    return {i * 7}\n"}],
             "syntax_ok": True, "humaneval_similarity": 0.1} for i in range(n)]


def make_run(path: Path, variant: str = "oss", n: int = 5, validated: int = 3, with_model: bool = False) -> RunDir:
    """A run directory as the stages leave it, for `variant`."""
    path.mkdir(parents=True)
    rows = _rows(n)
    pq.write_table(pa.Table.from_pylist(rows), path / "clean.parquet")
    pq.write_table(pa.Table.from_pylist([{**rows[0], "reason": "exact_duplicate"}]), path / "removed.parquet")
    if "validated" in variant:
        pq.write_table(pa.Table.from_pylist(rows[:validated], schema=pq.read_schema(path / "clean.parquet")),
                       path / "validated.parquet")
    (path / "run.json").write_text(json.dumps({"profile": "smoke", "variant": variant, "config": {
        "train": {"student": "embedded:gemma-3-270m-q4_k_m"}}}))
    if with_model:
        (path / "model-q4_k_m.gguf").write_bytes(b"GGUF" + bytes(60))
        (path / "adapter-f16.gguf").write_bytes(b"GGUF" + bytes(30))
        (path / "adapter").mkdir()
        (path / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        (path / "adapter" / "adapter_model.safetensors").write_bytes(bytes(16))
        (path / "export.json").write_text("{}")
        (path / "manifests").mkdir()
        (path / "manifests" / "export.json").write_text(json.dumps({"stage": "export", "outputs": {
            "model-q4_k_m.gguf": "x", "adapter-f16.gguf": "y", "export.json": "z"}}))
    return RunDir(path)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    return str(tmp_path / "hf")


COLUMNS = {"magicoder": ["lang", "index", "seed", "problem", "solution"], "messages": ["messages"],
           "sharegpt": ["conversations"]}


@pytest.mark.parametrize("fmt", publish.FORMATS)
def test_export_data_loads_with_datasets_in_each_schema(tmp_path, hf_cache, fmt):
    from datasets import load_dataset

    run = make_run(tmp_path / "run")
    r = repro("export-data", str(run.path), "--format", fmt)
    assert r.returncode == 0, r.stderr
    out = run / "data" / f"{fmt}.jsonl"
    assert f"5 pairs in the {fmt} format → {out}" in r.stdout
    ds = load_dataset("json", data_files=str(out), cache_dir=hf_cache)["train"]
    assert ds.column_names == COLUMNS[fmt] and ds.num_rows == 5
    first = ds[0]
    if fmt == "magicoder":
        assert ds["index"] == list(range(5)) and ds["lang"][:3] == ["python", "shell", "rust"]
        assert first["seed"] == "x0 = 0" and first["problem"].startswith("Write a function number 0")
    elif fmt == "messages":
        assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
        assert first["messages"][1]["content"].startswith("```python\ndef f0")
    else:
        assert [m["from"] for m in first["conversations"]] == ["human", "gpt"]
        assert first["conversations"][0]["value"].startswith("Write a function number 0")


def test_export_data_takes_the_validated_pairs_of_a_validated_run_and_writes_out(tmp_path, hf_cache):
    from datasets import load_dataset

    run = make_run(tmp_path / "run", variant="oss+validated", validated=2)
    out = tmp_path / "elsewhere" / "pairs.jsonl"
    assert cli.main(["export-data", str(run.path), "--format", "magicoder", "--out", str(out)]) == 0
    ds = load_dataset("json", data_files=str(out), cache_dir=hf_cache)["train"]
    assert ds.num_rows == 2 and ds["seed"] == ["x0 = 0", "x1 = 1"]


def test_export_data_of_a_validated_run_without_validated_parquet_is_one_line(tmp_path):
    run = make_run(tmp_path / "run", variant="oss+validated")
    (run / "validated.parquet").unlink()
    r = repro("export-data", str(run.path), "--format", "messages")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "validated.parquet is missing" in lines[0] and "repro validate" in lines[0]
    assert not (run / "data").exists()


def test_export_data_of_a_missing_run_is_one_line():
    r = repro("export-data", "no-such-run-4e1a", "--format", "magicoder")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("error: repro export-data no-such-run-4e1a: no such run directory")


def _check_with_hub_validators(folder: Path):
    """What huggingface_hub and datasets themselves say of the folder's cards (offline checks)."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, ModelCard, metadata_load
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(HUB_ID)
    card = DatasetCard.load(folder / "dataset" / "README.md", ignore_metadata_errors=False)
    assert metadata_load(folder / "dataset" / "README.md") == card.data.to_dict()
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    for c in configs.values():
        for f in c["data_files"]:
            assert (folder / "dataset" / f["path"]).is_file(), f
    if (folder / "model").exists():
        ModelCard.load(folder / "model" / "README.md", ignore_metadata_errors=False)
    return card, configs


def test_publish_dry_run_writes_a_folder_the_hub_and_datasets_accept(tmp_path, hf_cache):
    from datasets import load_dataset

    run = make_run(tmp_path / "run", variant="oss+validated", validated=3)
    r = repro("publish", str(run.path), "--to", HUB_ID, "--dry-run")
    assert r.returncode == 0, r.stderr
    folder = run / "publish"
    assert f"dry run: what is pushed to {HUB_ID} → {folder}" in r.stdout
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == sorted(["publish.json", "dataset/README.md", "dataset/clean.parquet", "dataset/clean.jsonl",
                            "dataset/removed.parquet", "dataset/validated.parquet",
                            *(f"dataset/data/{f}.{x}" for f in publish.FORMATS for x in ("jsonl", "parquet"))])
    for f in files:
        if f != "publish.json":
            assert f"  {f}  (" in r.stdout  # the file list
    card, configs = _check_with_hub_validators(folder)
    assert set(configs) == {"default", "removed", "validated", "magicoder", "messages", "sharegpt"}
    assert f'load_dataset("{HUB_ID}", "messages")' in card.text and "runs/" not in card.text.split("## Size")[0]
    d = str(folder / "dataset")
    assert load_dataset(d, cache_dir=hf_cache)["train"].num_rows == 5                      # clean.parquet
    assert load_dataset(d, "validated", cache_dir=hf_cache)["train"].num_rows == 3
    for fmt in publish.FORMATS:
        ds = load_dataset(d, fmt, cache_dir=hf_cache)["train"]
        assert ds.num_rows == 3 and ds.column_names == COLUMNS[fmt]
        as_json = load_dataset("json", data_files=f"{d}/data/{fmt}.jsonl", cache_dir=hf_cache)["train"]
        assert as_json.to_list() == ds.to_list()
    assert json.loads((folder / "publish.json").read_text())["to"] == HUB_ID


def test_publish_with_model_adds_the_model_folder_and_its_card(tmp_path):
    from huggingface_hub import ModelCard

    run = make_run(tmp_path / "run", with_model=True)
    out = tmp_path / "pub"
    assert cli.main(["publish", str(run.path), "--to", HUB_ID, "--with-model", "--dry-run", "--out", str(out)]) == 0
    model = sorted(str(p.relative_to(out / "model")) for p in (out / "model").rglob("*") if p.is_file())
    assert model == ["README.md", "adapter-f16.gguf", "adapter/adapter_config.json",
                     "adapter/adapter_model.safetensors", "export.json", "model-q4_k_m.gguf"]
    _check_with_hub_validators(out)
    mc = ModelCard.load(out / "model" / "README.md")
    assert mc.data.base_model == "google/gemma-3-270m" and mc.data.datasets == [HUB_ID]
    assert mc.data.license == "gemma" and "gguf" in mc.data.tags
    assert (out / "model" / "model-q4_k_m.gguf").read_bytes() == (run / "model-q4_k_m.gguf").read_bytes()
    # Published again, the folder is replaced as a whole.
    assert cli.main(["publish", str(run.path), "--to", HUB_ID, "--dry-run", "--out", str(out)]) == 0
    assert not (out / "model").exists()


def test_publish_with_model_but_no_export_is_one_line_and_writes_nothing(tmp_path):
    run = make_run(tmp_path / "run")
    r = repro("publish", str(run.path), "--to", HUB_ID, "--with-model", "--dry-run")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "repro export" in lines[0], r.stderr
    assert not (run / "publish").exists()


@pytest.mark.parametrize("bad", ["no spaces allowed/x", "a/b/c", "-lead/x"])
def test_a_bad_hub_id_is_one_line(tmp_path, bad):
    run = make_run(tmp_path / "run")
    r = repro("publish", str(run.path), f"--to={bad}", "--dry-run")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: --to {bad}:"), r.stderr
    assert not (run / "publish").exists()


def test_publish_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    run = make_run(tmp_path / "run")
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    r = repro("publish", str(run.path), "--to", HUB_ID, "--dry-run", "--out", str(other))
    assert r.returncode == 2 and "is not a folder `repro publish` wrote" in r.stderr
    assert (other / "keep.txt").read_text() == "mine"


def test_offline_publish_writes_the_folder_and_says_so_in_one_line(tmp_path):
    run = make_run(tmp_path / "run")
    r = repro("publish", str(run.path), "--to", HUB_ID, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"publish: offline (HF_HUB_OFFLINE is set): nothing was pushed; {run / 'publish'} holds exactly what would "
        "be; rerun online to push it"]
    assert (run / "publish" / "dataset" / "README.md").is_file()


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the calls and what each uploaded folder held."""
    calls: list = []

    def create_repo(self, repo_id, **kw):
        RecordingApi.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        RecordingApi.calls.append(("upload_folder", repo_id, {**kw, "files": files}))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    RecordingApi.calls = []
    validated = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(publish, "offline_reason", lambda: None)
    monkeypatch.setattr(publish, "hub_validate", lambda readme, repo_type: validated.append((readme.name, repo_type)))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    return validated


def test_the_push_creates_the_repos_and_uploads_each_folder_once(tmp_path, fake_hub, capsys):
    run = make_run(tmp_path / "run", with_model=True)
    assert cli.main(["publish", str(run.path), "--to", HUB_ID, "--with-model", "--private"]) == 0
    calls = RecordingApi.calls
    assert [(c[0], c[1], c[2].get("repo_type")) for c in calls] == [
        ("create_repo", HUB_ID, "dataset"), ("upload_folder", HUB_ID, "dataset"),
        ("create_repo", HUB_ID, "model"), ("upload_folder", HUB_ID, "model")]
    assert calls[0][2]["private"] is True and calls[0][2]["exist_ok"] is True
    assert calls[1][2]["files"] == sorted(str(p.relative_to(run / "publish" / "dataset"))
                                          for p in (run / "publish" / "dataset").rglob("*") if p.is_file())
    assert "README.md" in calls[3][2]["files"] and "model-q4_k_m.gguf" in calls[3][2]["files"]
    assert "publish.json" not in calls[1][2]["files"] + calls[3][2]["files"]
    assert fake_hub == [("README.md", "dataset"), ("README.md", "model")]
    out = capsys.readouterr().out
    assert f"pushed → https://huggingface.co/datasets/{HUB_ID}" in out and f"pushed → https://huggingface.co/{HUB_ID}" in out


def test_a_failed_push_is_one_line_naming_the_repo_and_the_folder(tmp_path, fake_hub, monkeypatch, capsys):
    class Refused(RecordingApi):
        def upload_folder(self, **kw):
            raise PermissionError("403 Forbidden: you cannot write to this repo")

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", Refused)
    run = make_run(tmp_path / "run")
    assert cli.main(["publish", str(run.path), "--to", HUB_ID]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pushing to https://huggingface.co/datasets/{HUB_ID} failed" in err[0]
    assert str(run / "publish") in err[0]


def test_no_token_is_one_line_before_anything_is_created(tmp_path, fake_hub, monkeypatch, capsys):
    import huggingface_hub
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    run = make_run(tmp_path / "run")
    assert cli.main(["publish", str(run.path), "--to", HUB_ID]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err and RecordingApi.calls == []


def test_offline_reason_reads_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert publish.offline_reason() == "HF_HUB_OFFLINE is set"
