"""The export stage: merge the LoRA adapter into the student, write GGUFs, quantize them, check the round trip.

No network, apt-get or git at run time (Unsloth's GGUF export does both; we never call it).
The converters are llama.cpp's own `convert_hf_to_gguf.py` and `convert_lora_to_gguf.py` with
their `gguf-py`, taken from the source archive of the *installed* llama-cpp-python version so the
file format matches the llama.cpp that will load it. `repro fetch` (run by `make setup`)
downloads that archive once through the package registry and keeps only the converters in the
cache. Quantization is `llama_cpp.llama_model_quantize`, to any llama.cpp file type by name.

Outputs:
- `model-<quant>.gguf`: the merged student, quantized (what evaluation runs);
- `base-<quant>.gguf`, for a student given as a transformers checkpoint (a folder or a hub id):
  the base student converted and quantized the same way, which evaluation runs as the base;
- `adapter-<outtype>.gguf` (`export.lora_gguf`): the adapter alone, a GGUF LoRA for llama.cpp's
  `--lora` on top of the student's own GGUF;
- `export.json`: sizes, the quantized file's sha256, a greedy load check, and the round trip.

The round trip (`export.json["roundtrip"]`) compares llama.cpp with the merged PyTorch model on
one fixed text (ROUNDTRIP_TEXT, `text_tokens` long): whether each GGUF's tokenizer gives the same
ids as the PyTorch tokenizer (each with its own BOS rule), and, teacher-forced on those ids, the
share of positions where llama.cpp's greedy next token equals PyTorch's, per file: the unquantized
GGUF (`outtype`), each of `{quant} ∪ roundtrip_quants`, and `lora+base` (the LoRA GGUF on the
student's GGUF). Quantization error, not a bug, is what lowers the figure below 1.
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

from repro.artifacts import ReproError, atomic_path, cache_lock, sha256_file
from repro.config import ExportConfig
from repro.models import check_gguf
from repro.models import cache_dir, checkpoint_dir, choose_threads, is_checkpoint, llama_model, load_llama, resolve

CHECK_TEXT = "def fibonacci(n):\n    "
TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json")

# The round trip's fixed text: code with a docstring, numbers, an f-string, runs of spaces, a tab
# and a few non-ASCII characters, so that tokenizer differences would show.
ROUNDTRIP_TEXT = '''import math
from collections import Counter


def top_words(text: str, k: int = 3) -> list[tuple[str, int]]:
    """Return the k most common words of `text`, most common first.

    Ties keep the order in which the words first appear: "naïve café → café" counts café twice.
    >>> top_words("a b a c b a", k=2)
    [('a', 3), ('b', 2)]
    """
    counts = Counter(w.strip(".,;:!?").lower() for w in text.split())
    return counts.most_common(k)


class Circle:
\tdef __init__(self, r: float) -> None:
\t\tself.r = r

    def area(self) -> float:
        return math.pi * self.r ** 2  # 3.14159... × r²

print(f"{Circle(2.5).area():.3f}", top_words("to be or not to be"))
'''

OUTTYPES = ("f16", "bf16", "q8_0", "f32")  # what the converters write and llama.cpp can quantize from
CONVERTERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
KEEP = (*CONVERTERS, "conversion/", "gguf-py/", "LICENSE")  # from the archive's vendor/llama.cpp/


def check_settings(cfg: ExportConfig) -> None:
    if cfg.outtype not in OUTTYPES:
        raise ReproError(f"export.outtype={cfg.outtype!r} is not a type the converter writes; "
                         f"choose one of: {', '.join(OUTTYPES)}")
    file_type(cfg.quant, "export.quant")
    for q in cfg.roundtrip_quants:
        file_type(q, "export.roundtrip_quants")


def file_type(name: str, setting: str = "export.quant") -> int:
    """llama.cpp's file type constant for a name such as q4_k_m; one line if there is none."""
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}", None)
    if ftype is None:
        names = sorted(n.removeprefix("LLAMA_FTYPE_MOSTLY_").lower() for n in dir(llama_cpp)
                       if n.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise ReproError(f"{setting}={name!r} is not a llama.cpp file type; choose one of: {', '.join(names)}")
    return ftype


# ---------------------------------------------------------------------------------------------
# The converters


def converter_dir() -> Path:
    return cache_dir() / f"llama.cpp-convert-{md.version('llama-cpp-python')}"


def has_converter(d: Path | None = None) -> bool:
    """Both converter scripts are present (a cache from before the LoRA export lacks the second)."""
    d = d or converter_dir()
    return all((d / s).is_file() for s in CONVERTERS)


def fetch_converter() -> Path:
    """Download the installed llama-cpp-python's source archive once; keep only the converters."""
    out = converter_dir()
    if has_converter(out):
        return out
    with cache_lock(out):
        if not has_converter(out):
            _download_converter(out)
    return out


def _download_converter(out: Path) -> None:
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
        with atomic_path(out) as dst, tarfile.open(archives[0]) as tar:
            for m in tar.getmembers():
                rel = m.name.removeprefix(prefix)
                if m.name.startswith(prefix) and rel.startswith(KEEP) and (m.isfile() or m.isdir()):
                    m.name = rel
                    tar.extract(m, dst, filter="data")
            if not has_converter(dst):
                raise ReproError(f"export: the llama-cpp-python {version} source archive lacks "
                                 f"{' or '.join(CONVERTERS)} under vendor/llama.cpp/")


def _converter(script: str, args: list[str], out: Path, what: str) -> None:
    conv = fetch_converter()
    # Offline: every input is local, and a converter that reached for the hub would hang or fail later.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(conv / script), *args], capture_output=True, text=True, env=env)
    if r.returncode != 0 or not out.is_file():
        tail = [line for line in (r.stderr or r.stdout).splitlines() if line.strip()][-1:] or ["no output"]
        raise ReproError(f"export: {script} failed on {what}: {tail[0].strip()}")


def convert(hf_dir: Path, out: Path, outtype: str) -> None:
    _converter("convert_hf_to_gguf.py", [str(hf_dir), "--outfile", str(out), "--outtype", outtype], out, str(hf_dir))


def convert_lora(adapter_dir: Path, base_hf: Path, out: Path, outtype: str) -> None:
    """The PEFT adapter alone as a GGUF LoRA; `base_hf` gives the architecture (its config only)."""
    _converter("convert_lora_to_gguf.py", [str(adapter_dir), "--base", str(base_hf), "--outfile", str(out),
                                           "--outtype", outtype], out, str(adapter_dir))


# ---------------------------------------------------------------------------------------------
# Merge and quantize


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

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type(quant)
    params.nthread = os.cpu_count() or 1
    with _stderr_to(log):  # llama.cpp prints a line per tensor
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ReproError(f"export: llama.cpp failed to quantize {src} to {quant} (code {rc})")


def merge(student: str, adapter_dir: Path, out_dir: Path) -> None:
    """Merge the LoRA weights into the student (its checkpoint, or its GGUF dequantized) and save a
    transformers checkpoint."""
    merge_checkpoint(checkpoint_dir(student), adapter_dir, out_dir, f"the student {student}")


def merge_checkpoint(base_dir: Path, adapter_dir: Path, out_dir: Path, base_name: str) -> None:
    """Merge a PEFT adapter into the transformers checkpoint `base_dir`; one line if it does not fit."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ReproError(f"export: {adapter_dir} holds no LoRA adapter (no adapter_config.json); run `repro train`")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    try:
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:  # PEFT: shapes, module names, keys
        lines = [s.strip() for s in str(e).splitlines() if s.strip()] or [type(e).__name__]
        why = next((s for s in lines if "size mismatch" in s), lines[0])
        raise ReproError(f"export: the adapter {adapter_dir} does not fit {base_name} ({why[:240]}); "
                         "retrain it, or set train.student to the model it was trained on") from None
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    # transformers saves tokenizer.json; llama.cpp's converter reads a SentencePiece student's
    # vocabulary from its tokenizer.model (and a BPE one's from vocab.json/merges.txt where it has
    # them), so the base's own tokenizer files come along where the save did not write them.
    for name in TOKENIZER_FILES:
        if (Path(base_dir) / name).is_file() and not (Path(out_dir) / name).exists():
            shutil.copy2(Path(base_dir) / name, Path(out_dir) / name)


# ---------------------------------------------------------------------------------------------
# The round trip


def roundtrip(merged_dir: Path, ggufs: dict[str, Path], lora: tuple[Path, Path] | None = None,
              text: str | None = None, threads: int = 0) -> dict:
    """Tokenizer ids and teacher-forced greedy agreement of each GGUF with the PyTorch model.

    `ggufs` maps a label (the file type) to a model GGUF; `lora` is (base GGUF, LoRA GGUF), shown
    as `lora+base`, and beside it `base`, the base GGUF alone: how far the adapter moves the
    base, so a LoRA that silently did not apply would show. Each file is loaded by llama.cpp
    (that is the load check). Agreement counts every position of the text (default
    ROUNDTRIP_TEXT), the last one's prediction beyond the text included. `threads`: llama.cpp's
    (0 = the cores idle now, measured once for all the loads).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = ROUNDTRIP_TEXT if text is None else text
    threads = choose_threads(threads)  # once: each measure of the idle cores waits 0.5 s
    tok = AutoTokenizer.from_pretrained(merged_dir)
    ids = tok(text)["input_ids"]  # with the tokenizer's own rule for BOS
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
    del model
    out = {"text_tokens": len(ids), "bos": bool(tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id]),
           "reference": "the merged PyTorch model (float32), greedy next token at every position of the text",
           "tokenizer_match": True, "tokenizer": {}, "agreement": {}}
    for label, path in ggufs.items():
        check_gguf(path, "export")
        got = llama_ids(path, text)
        out["tokenizer"][label] = True if got == ids else _first_difference(got, ids)
        out["tokenizer_match"] &= got == ids
        out["agreement"][label] = _agreement(path, ids, ref, threads)
    if lora is not None:
        out["agreement"]["lora+base"] = _agreement(lora[0], ids, ref, threads, lora=lora[1])
        out["agreement"]["base"] = _agreement(lora[0], ids, ref, threads)
    return out


def llama_ids(path: Path, text: str) -> list[int]:
    """llama.cpp's token ids for `text`, with the GGUF's own rule for BOS (a vocabulary-only load)."""
    vocab = llama_model(path, vocab_only=True, what="read its vocabulary")
    try:
        return vocab.tokenize(text.encode("utf-8"), add_bos=vocab.add_bos_token(), special=True)
    finally:
        vocab.close()


def _first_difference(a: list[int], b: list[int]) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"differs at token {i} ({len(a)} tokens in llama.cpp, {len(b)} in PyTorch)"


def _agreement(path: Path, ids: list[int], ref: list[int], threads: int, lora: Path | None = None) -> float:
    import numpy as np

    n_ctx = -(-len(ids) // 64) * 64
    try:  # all layers on the GPU where llama.cpp was built for one (a CPU build ignores it)
        llm = load_llama(path, n_ctx=n_ctx, threads=threads, logits_all=True, n_gpu_layers=-1,
                         lora_path=str(lora) if lora else None)
    except RuntimeError as e:  # llama-cpp-python raises this when a LoRA does not apply
        raise ReproError(f"export: llama.cpp could not apply the LoRA {lora} to {path} ({e})") from None
    try:
        llm.eval(ids)
        got = np.asarray(llm.scores[:len(ids)]).argmax(-1)
    finally:
        llm.close()
    return round(float((got == np.asarray(ref)).mean()), 4)


# ---------------------------------------------------------------------------------------------
# The stage


def run(cfg: ExportConfig, student: str, adapter_dir: Path, out_gguf: Path, work: Path,
        base_out: Path | None = None) -> dict:
    """Write `out_gguf` (and the LoRA GGUF beside it); return what goes into export.json.

    A transformers-checkpoint student (a folder or a hub id) has no GGUF of its own: `base_out`
    receives it, converted and quantized exactly as the fine-tuned model, so that evaluation
    compares the two at the same quantization; it is also the base of the LoRA GGUF's round trip.
    Intermediates (the merged checkpoint, the unquantized GGUF, the round trip's extra quants)
    live under `work` and are deleted unless `keep_intermediate`.
    """
    check_settings(cfg)
    if not is_checkpoint(student):
        check_gguf(resolve(student), "train.student")  # before any work
    work.mkdir(parents=True, exist_ok=True)
    log = work / "quantize.log"
    if is_checkpoint(student):
        if base_out is None:
            raise AssertionError("a checkpoint student needs base_out")
        base_unquantized = work / f"base-{cfg.outtype}.gguf"
        with atomic_path(base_unquantized) as tmp:
            convert(checkpoint_dir(student), tmp, cfg.outtype)
        with atomic_path(base_out) as tmp:
            quantize(base_unquantized, tmp, cfg.quant, log)
            check_gguf(tmp, "export")
        if not cfg.keep_intermediate:
            base_unquantized.unlink()
        student_gguf = base_out
    else:
        student_gguf = resolve(student)
    merged = work / "merged-hf"
    unquantized = work / f"model-{cfg.outtype}.gguf"
    with atomic_path(merged) as tmp:
        merge(student, adapter_dir, tmp)
    with atomic_path(unquantized) as tmp:
        convert(merged, tmp, cfg.outtype)
    with atomic_path(out_gguf) as tmp:
        quantize(unquantized, tmp, cfg.quant, log)
        check_gguf(tmp, "export")
        threads = choose_threads(0)  # the cores idle now, for this load and the round trip's
        llm = load_llama(tmp, n_ctx=256, threads=threads, n_gpu_layers=-1)
        text = llm(CHECK_TEXT, max_tokens=16, temperature=0.0)["choices"][0]["text"]
        llm.close()
    ggufs = {cfg.outtype: unquantized, cfg.quant.lower(): out_gguf}
    extra = []  # quantized only for the round trip
    for q in cfg.roundtrip_quants:
        if q.lower() not in ggufs:
            ggufs[q.lower()] = work / f"model-{q.lower()}.gguf"
            extra.append(ggufs[q.lower()])
            with atomic_path(extra[-1]) as tmp:
                quantize(unquantized, tmp, q, log)
    lora = out_gguf.parent / f"adapter-{cfg.outtype}.gguf"
    if cfg.lora_gguf:
        with atomic_path(lora) as tmp:
            convert_lora(adapter_dir, checkpoint_dir(student), tmp, cfg.outtype)
    rt = roundtrip(merged, ggufs, (student_gguf, lora) if cfg.lora_gguf else None, threads=threads)
    stats = {"quant": cfg.quant, "outtype": cfg.outtype, "bytes_unquantized": unquantized.stat().st_size,
             "bytes": out_gguf.stat().st_size, "sha256": sha256_file(out_gguf),
             "load_check_prompt": CHECK_TEXT, "load_check_text": text,
             "lora_gguf": lora.name if cfg.lora_gguf else None,
             "lora_bytes": lora.stat().st_size if cfg.lora_gguf else None,
             "lora_base": student_gguf.name if cfg.lora_gguf else None,
             "base_gguf": base_out.name if base_out is not None else None,
             "base_sha256": sha256_file(base_out) if base_out is not None else None,
             "roundtrip": rt}
    if not cfg.keep_intermediate:
        shutil.rmtree(merged, ignore_errors=True)
        for p in [unquantized, *extra]:
            if p != out_gguf:
                p.unlink(missing_ok=True)
    return stats
