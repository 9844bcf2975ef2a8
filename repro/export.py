"""Step 5a: merge the LoRA adapter into the student, write a GGUF, quantize it, check it loads.

No network, apt-get or git at run time (Unsloth's GGUF export does both; we never call it).
The converter is llama.cpp's own `convert_hf_to_gguf.py` with its `gguf-py`, taken from the
source archive of the *installed* llama-cpp-python version so the file format matches the
llama.cpp that will load it. `repro fetch` (run by `make setup`) downloads that archive once
through the package registry and keeps only the converter in the cache. Quantization is
`llama_cpp.llama_model_quantize`.

Outputs: `model-<quant>.gguf` and `export.json` (sizes, the load check's greedy text).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from repro.artifacts import ReproError, atomic_path
from repro.config import ExportConfig
from repro.models import cache_dir, hf_checkpoint, load_llama

CHECK_TEXT = "def fibonacci(n):\n    "


def converter_dir() -> Path:
    return cache_dir() / f"llama.cpp-convert-{md.version('llama-cpp-python')}"


def fetch_converter() -> Path:
    """Download the installed llama-cpp-python's source archive once; keep only the converter."""
    out = converter_dir()
    if (out / "convert_hf_to_gguf.py").is_file():
        return out
    version = md.version("llama-cpp-python")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={version}", "-d", tmp],
                           capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if r.returncode or not archives:
            raise ReproError(f"export: could not download the llama-cpp-python {version} source archive "
                             "for its GGUF converter (needs the package registry once); run `repro fetch` "
                             "on a machine with network access")
        prefix = f"{archives[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
        with atomic_path(out) as dst, tarfile.open(archives[0]) as tar:
            for m in tar.getmembers():
                rel = m.name.removeprefix(prefix)
                if m.name.startswith(prefix) and rel.startswith(keep) and (m.isfile() or m.isdir()):
                    m.name = rel
                    tar.extract(m, dst, filter="data")
    return out


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send the process's stderr (file descriptor 2, where C code writes) to `path` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quantize(src: Path, dst: Path, quant: str, log: Path) -> None:
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if ftype is None:
        names = sorted(n.removeprefix("LLAMA_FTYPE_MOSTLY_").lower() for n in dir(llama_cpp)
                       if n.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise ReproError(f"export.quant={quant!r} is not a llama.cpp file type; choose one of: {', '.join(names)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    with _stderr_to(log):  # llama.cpp prints a line per tensor
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ReproError(f"export: llama.cpp failed to quantize {src} to {quant} (code {rc})")


def merge(student: str, adapter_dir: Path, out_dir: Path) -> None:
    """Merge the LoRA weights into the dequantized student and save a transformers checkpoint."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = hf_checkpoint(student)
    base = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(ckpt).save_pretrained(out_dir)


def convert(hf_dir: Path, out: Path, outtype: str) -> None:
    conv = converter_dir()
    if not (conv / "convert_hf_to_gguf.py").is_file():
        fetch_converter()
    r = subprocess.run([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(hf_dir),
                        "--outfile", str(out), "--outtype", outtype],
                       capture_output=True, text=True)
    if r.returncode != 0 or not out.is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ReproError(f"export: convert_hf_to_gguf.py failed on {hf_dir}: {tail[0]}")


def run(cfg: ExportConfig, student: str, adapter_dir: Path, out_gguf: Path, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    merged = work / "merged-hf"
    f16 = work / f"model-{cfg.outtype}.gguf"
    with atomic_path(merged) as tmp:
        merge(student, adapter_dir, tmp)
    with atomic_path(f16) as tmp:
        convert(merged, tmp, cfg.outtype)
    with atomic_path(out_gguf) as tmp:
        quantize(f16, tmp, cfg.quant, work / "quantize.log")
        llm = load_llama(tmp, n_ctx=256)
        text = llm(CHECK_TEXT, max_tokens=16, temperature=0.0)["choices"][0]["text"]
        del llm
    stats = {"quant": cfg.quant, "outtype": cfg.outtype, "bytes_unquantized": f16.stat().st_size,
             "bytes": out_gguf.stat().st_size, "load_check_prompt": CHECK_TEXT, "load_check_text": text}
    if not cfg.keep_intermediate:
        shutil.rmtree(merged, ignore_errors=True)
        f16.unlink(missing_ok=True)
    return stats
