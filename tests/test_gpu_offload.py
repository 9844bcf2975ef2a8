"""llama.cpp on the GPU (repro/gpu.py and its plumbing), tested without a GPU: a fake nvidia-smi,
GGUF headers written here, and a monkeypatched answer to "can this llama.cpp offload"."""

import os
import re
import stat
import sys
from pathlib import Path

import pytest

from repro import config, gpu, models
from repro.artifacts import ReproError

MIB = 1 << 20


def write_model_gguf(path: Path, arch: str = "qwen2", *, blocks: int = 24, heads: int = 14, heads_kv=2,
                     embd: int = 896, key_len: int | None = None, value_len: int | None = None,
                     vocab: int = 5, size: int = 0) -> Path:
    """A GGUF header with the attention metadata kv_bytes reads (and one small tensor); `size` > 0
    makes the file that long (sparse), as big weights would."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(blocks)
    w.add_embedding_length(embd)
    w.add_head_count(heads)
    if heads_kv is not None:
        w.add_head_count_kv(heads_kv)
    if key_len is not None:
        w.add_key_length(key_len)
    if value_len is not None:
        w.add_value_length(value_len)
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_tensor("t0", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if size:
        with open(path, "r+b") as f:
            f.truncate(size)
    return path


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """Put an `nvidia-smi` that prints the given text (and exits with the given code) first on PATH."""
    d = tmp_path / "bin"
    d.mkdir()

    def install(text: str, rc: int = 0):
        exe = d / "nvidia-smi"
        exe.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}\nEOF\nexit {rc}\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ.get('PATH', '')}")
    return install


# ---------------------------------------------------------------------------------------------
# kv_bytes


def test_kv_bytes_from_head_counts(tmp_path):
    # Qwen2.5-0.5B's shape: 24 layers x 2 KV heads x (64 + 64) x 2 bytes = 12,288 bytes a token
    # (llama.cpp reports 24 MiB for 2,048 cells of the real model).
    p = write_model_gguf(tmp_path / "q.gguf")
    assert gpu.kv_bytes(p, 2048) == 24 * MIB
    assert gpu.kv_bytes(p, 2048, type_k="f32") == 48 * MIB
    assert gpu.kv_bytes(p, 2048, type_k="q8_0") == 2048 * 24 * 2 * 128 * 34 // 32


def test_kv_bytes_from_key_and_value_lengths(tmp_path):
    # Gemma-3-270M's shape (key/value length 256 > embedding / heads): llama.cpp reports
    # 6 + 30 MiB (full-size sliding-window cache) for 2,048 cells of the real model.
    p = write_model_gguf(tmp_path / "g.gguf", "gemma3", blocks=18, heads=4, heads_kv=1, embd=640,
                         key_len=256, value_len=256)
    assert gpu.kv_bytes(p, 2048) == 36 * MIB


def test_kv_bytes_per_layer_heads_and_no_kv_key(tmp_path):
    p = write_model_gguf(tmp_path / "a.gguf", "llama", blocks=3, heads=4, heads_kv=[1, 2, 4], embd=64)
    assert gpu.kv_bytes(p, 10) == 10 * (1 + 2 + 4) * (16 + 16) * 2
    p = write_model_gguf(tmp_path / "b.gguf", "llama", blocks=2, heads=4, heads_kv=None, embd=64)
    assert gpu.kv_bytes(p, 10) == 10 * 2 * 4 * 32 * 2  # no head_count_kv: as many as query heads


def test_kv_bytes_refuses_a_gguf_without_the_keys(tmp_path):
    from tests.builders import write_gguf

    with pytest.raises(ReproError, match="cannot size its KV cache"):
        gpu.kv_bytes(write_gguf(tmp_path / "m.gguf"), 2048)
    (tmp_path / "x.gguf").write_text("nope")
    with pytest.raises(ReproError, match="not a GGUF"):
        gpu.kv_bytes(tmp_path / "x.gguf", 1)


def test_metadata_gives_long_arrays_as_their_length(tmp_path):
    p = write_model_gguf(tmp_path / "q.gguf", vocab=5000)
    meta = models.gguf_metadata(p)
    assert meta["tokenizer.ggml.tokens"] == 5000 and isinstance(meta["tokenizer.ggml.tokens"], models.Unread)
    assert meta["qwen2.block_count"] == 24
    models.check_gguf(p, "x")  # the shared header reader still accepts a whole file


# ---------------------------------------------------------------------------------------------
# cuda_devices


def test_cuda_devices_parses_nvidia_smi(fake_smi):
    fake_smi("NVIDIA GeForce RTX 3090, 24576, 6144\nNVIDIA H200, 143771, 140000")
    assert gpu.cuda_devices() == [("NVIDIA GeForce RTX 3090", 24576 * MIB, 6144 * MIB),
                                  ("NVIDIA H200", 143771 * MIB, 140000 * MIB)]


@pytest.mark.parametrize("text,rc", [("No devices were found", 0), ("GPU, [N/A], [N/A]", 0),
                                     ("", 0), ("NVIDIA H200, 143771, 140000", 9)])
def test_cuda_devices_is_empty_on_odd_output(fake_smi, text, rc):
    fake_smi(text, rc)
    assert gpu.cuda_devices() == []


def test_cuda_devices_without_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu.cuda_devices() == []


def test_llama_offload_answers_on_this_build():
    assert gpu.llama_offload() in (True, False)


# ---------------------------------------------------------------------------------------------
# check_fit


def test_check_fit_refuses_in_one_line_naming_settings(tmp_path, fake_smi, monkeypatch):
    monkeypatch.setattr(gpu, "llama_offload", lambda: True)
    fake_smi("NVIDIA GeForce RTX 3090, 24576, 6144")
    p = write_model_gguf(tmp_path / "t.gguf", "qwen2", blocks=28, heads=28, heads_kv=4, embd=3584,
                         vocab=1000, size=int(4.4 * (1 << 30)))
    with pytest.raises(ReproError) as e:
        gpu.check_fit(p, 64 * 4096, -1, "generate", parallel=64)
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith("generate: t.gguf needs ~")
    for setting in ("generate.parallel", "generate.n_ctx", "generate.n_gpu_layers"):
        assert setting in line
    assert "for 64 × 4096 tokens" in line and "6.0 GiB is free on NVIDIA GeForce RTX 3090" in line
    figures = dict(re.findall(r"(weights|KV cache) (\d+\.\d) GiB", line))
    assert float(figures["weights"]) == 4.4 and float(figures["KV cache"]) > 0  # 14.0 GiB here
    assert float(re.search(r"needs ~(\d+\.\d) GiB", line).group(1)) > 18


def test_check_fit_passes_what_fits_and_scales_partial_offload(tmp_path, fake_smi, monkeypatch):
    monkeypatch.setattr(gpu, "llama_offload", lambda: True)
    fake_smi("NVIDIA H200, 143771, 140000")
    p = write_model_gguf(tmp_path / "t.gguf", blocks=28, heads=28, heads_kv=4, embd=3584,
                         size=4 * (1 << 30))
    assert gpu.check_fit(p, 64 * 4096, -1, "evaluate", parallel=64) is None
    fake_smi("Small GPU, 4096, 3000")
    assert gpu.check_fit(p, 1024, 5, "evaluate") is None  # 5 of 28 layers: ~0.7 GiB + buffers
    with pytest.raises(ReproError, match=r"\(20 of 28 layers\).*evaluate\.n_gpu_layers"):
        gpu.check_fit(p, 1024, 20, "evaluate")


def test_check_fit_does_nothing_without_offload_or_gpu(tmp_path, fake_smi, monkeypatch):
    p = write_model_gguf(tmp_path / "t.gguf", size=8 * (1 << 30))
    monkeypatch.setattr(gpu, "llama_offload", lambda: True)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: nothing to check against
    assert gpu.check_fit(p, 4096, -1, "generate") is None
    fake_smi("Small GPU, 1024, 10")
    assert gpu.check_fit(p, 4096, 0, "generate") is None  # CPU only: nothing is checked


def test_check_fit_on_a_cpu_build_is_a_note_not_an_error(tmp_path, fake_smi, monkeypatch):
    monkeypatch.setattr(gpu, "llama_offload", lambda: False)
    fake_smi("Small GPU, 1024, 10")
    p = write_model_gguf(tmp_path / "t.gguf", size=8 * (1 << 30))
    note = gpu.check_fit(p, 4096, 12, "generate")
    assert note and "generate.n_gpu_layers=12" in note and "CPU build" in note and "\n" not in note
    assert gpu.check_fit(p, 4096, -1, "generate") is None  # the default: silently the CPU


# ---------------------------------------------------------------------------------------------
# settings and plumbing


def test_settings_defaults_and_ranges():
    cfg = config.load("tiny")
    for section in (cfg.generate, cfg.evaluate):
        assert (section.n_gpu_layers, section.flash_attn) == (-1, "auto")
    assert config.load("tiny", ["generate.n_gpu_layers=0", "evaluate.n_gpu_layers=12"]).evaluate.n_gpu_layers == 12
    for key in ("generate", "evaluate"):
        with pytest.raises(ReproError, match=rf"{key}\.n_gpu_layers=-2: must be >= -1 \(the default is -1\)"):
            config.load("tiny", [f"{key}.n_gpu_layers=-2"])
    with pytest.raises(ReproError, match=r"evaluate\.flash_attn='fast' is unknown; use one of: auto, on, off"):
        gpu.check_settings("evaluate", -1, "fast")


def test_open_engine_checks_flash_attn_before_loading():
    from repro.engine import open_engine

    with pytest.raises(ReproError, match=r"generate\.flash_attn='yes'"):
        open_engine("llama-batched", Path("/nonexistent.gguf"), flash_attn="yes", section="generate")


@pytest.mark.parametrize("backend,total", [("llama-batched", 3 * 300), ("llama", 300)])
def test_engines_check_the_fit_before_loading(monkeypatch, backend, total):
    from repro.engine import open_engine

    seen = []

    def refuse(gguf, n_ctx_total, n_gpu_layers, prefix, **kw):
        seen.append((n_ctx_total, n_gpu_layers, prefix, kw.get("parallel")))
        raise ReproError("refused")

    monkeypatch.setattr(gpu, "check_fit", refuse)
    with pytest.raises(ReproError, match="refused"):  # before llama.cpp opens the (missing) file
        open_engine(backend, Path("/nonexistent.gguf"), n_ctx=300, parallel=3, n_gpu_layers=7, section="evaluate")
    assert seen == [(total, 7, "evaluate", 3 if backend == "llama-batched" else 1)]


def test_generate_and_evaluate_pass_their_settings(tmp_path, monkeypatch):
    import repro.engine
    from repro import generate
    from repro.eval import evaluate

    seen = []

    def fake_open(*a, **k):
        seen.append(k)
        raise ReproError("stop here")

    monkeypatch.setattr(repro.engine, "open_engine", fake_open)
    cfg = config.load("tiny", ["generate.n_gpu_layers=5", "generate.flash_attn=off",
                               "evaluate.n_gpu_layers=0", "evaluate.flash_attn=on"])
    monkeypatch.setattr(generate, "teacher_path", lambda c: tmp_path / "t.gguf")
    with pytest.raises(ReproError, match="stop here"):
        generate.open_teacher(cfg.generate)
    problem = {"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f"}
    with pytest.raises(ReproError, match="stop here"):
        evaluate.generate("teacher", tmp_path / "t.gguf",
                          [("humaneval", {"HumanEval/0": problem}, ["HumanEval/0"], "chat", tmp_path / "a.jsonl")],
                          cfg.evaluate)
    assert [(k["n_gpu_layers"], k["flash_attn"], k["section"]) for k in seen] == \
        [(5, "off", "generate"), (0, "on", "evaluate")]


@pytest.mark.e2e
def test_all_layers_on_a_cpu_build_still_decodes_as_the_reference(capfd):
    """n_gpu_layers=-1 (the default) on this CPU build: the batched engine decodes, and gives the
    reference's greedy text (flash attention stays off without offloading)."""
    from repro.engine import Request, open_engine

    if gpu.llama_offload():
        pytest.skip("this llama.cpp can offload: the CPU-build path is not what runs here")
    student = models.resolve("embedded:gemma-3-270m-q4_k_m")
    reqs = [Request(f"r{i}", prompt=p, max_tokens=12) for i, p in enumerate(["def add(a, b):\n", "import os\n"])]
    out = {}
    for backend, layers in (("llama-batched", -1), ("llama", 0), ("llama", 8)):
        with open_engine(backend, student, n_ctx=256, parallel=2, threads=1, n_gpu_layers=layers,
                         section="evaluate") as e:
            out[backend, layers] = [c.text for c in sorted(e.run(list(reqs)), key=lambda c: c.key)]
    assert all(out[("llama-batched", -1)]) and out[("llama-batched", -1)] == out[("llama", 0)] == out[("llama", 8)]
    err = capfd.readouterr().err
    assert "evaluate.n_gpu_layers=8: this llama.cpp is a CPU build" in err


def test_doctor_reports_offload_and_gpus(fake_smi, monkeypatch, capsys):
    from repro import cli

    fake_smi("NVIDIA H200, 143771, 140000")
    monkeypatch.setattr(gpu, "llama_offload", lambda: False)
    cli.cmd_doctor(None)
    out = capsys.readouterr().out
    assert "llama.cpp GPU offload: no (a CPU build)" in out
    assert "GPU (nvidia-smi): NVIDIA H200, 136.7 of 140.4 GiB free" in out
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    cli.cmd_doctor(None)
    assert "no NVIDIA GPU found" in capsys.readouterr().out
