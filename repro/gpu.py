"""llama.cpp on an NVIDIA GPU: can this build offload, which GPUs are there, will a model fit.

Plain functions, used by the llama.cpp engines (repro/engine/llama_backend.py) before they create a
context, and by `repro doctor`. They estimate; they do not allocate anything on a GPU, do not
import torch, and know only NVIDIA GPUs (through `nvidia-smi`): on a ROCm, Vulkan or Metal build
of llama.cpp no GPU is found here and nothing is checked (llama.cpp then reports what fails).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from repro.artifacts import ReproError

MIB = 1 << 20
GIB = 1 << 30
# llama.cpp's compute buffers beside weights and KV cache: a stated allowance, not a measurement.
# Their largest part is the logits of a whole batch (n_batch x vocabulary x 4 bytes: 512 MiB for
# Gemma 3's 262K tokens at n_batch 512, measured on the CPU build); the rest (activations, CUDA's
# own workspace) gets BUFFER_BYTES.
BUFFER_BYTES = 256 * MIB


def llama_offload() -> bool:
    """Whether the installed llama.cpp can put layers on a GPU (a CUDA, ROCm, Vulkan or Metal
    build). Never raises: False where llama-cpp-python is missing or does not say. It does not
    say whether a GPU is present (see cuda_devices)."""
    try:
        import llama_cpp.llama_cpp as C

        return bool(C.llama_supports_gpu_offload())
    except Exception:  # an import error, a library built without the symbol
        return False


def cuda_devices() -> list[tuple[str, int, int]]:
    """The NVIDIA GPUs `nvidia-smi` lists: (name, total bytes, free bytes) each.

    [] where nvidia-smi is not on PATH, fails, takes over 10 s or prints something unexpected. Never
    raises. It does not look at CUDA_VISIBLE_DEVICES, and does not ask llama.cpp which device
    it would use.
    """
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    devices = []
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.rsplit(",", 2)]  # a name may hold a comma; the numbers do not
        try:
            name, total, free = parts[0], int(float(parts[1])), int(float(parts[2]))
        except (IndexError, ValueError, OverflowError):
            return []
        if not name or total <= 0 or free < 0:
            return []
        devices.append((name, total * MIB, free * MIB))
    return devices


def _bytes_per_element(type_name: str) -> float:
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType[type_name.upper()]
    except KeyError:
        raise ReproError(f"KV cache type {type_name!r} is unknown; use f16, bf16, f32, q8_0 or q4_0") from None
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return size / block


def _per_layer(value, n_layer: int) -> list[int]:
    if isinstance(value, tuple):
        return list(value[:n_layer]) + [value[-1] if value else 0] * max(0, n_layer - len(value))
    return [int(value)] * n_layer


def kv_bytes(gguf_path: Path, n_ctx_total: int, type_k: str = "f16", meta: dict | None = None) -> int:
    """The KV cache's size for `n_ctx_total` tokens (all sequences together), from the GGUF's metadata.

    Per layer: tokens x KV heads x (key length + value length) x bytes per element (K and V both of
    `type_k`, llama.cpp's default f16). Key/value lengths come from `<arch>.attention.key_length` /
    `value_length`, else embedding_length / head_count. Sliding-window layers (Gemma 3) are counted
    at full size: exact with llama.cpp's default `swa_full`, otherwise an upper bound. It does not
    model MLA (DeepSeek-V2's compressed cache; an overestimate there), recurrent state (Mamba,
    RWKV) or llama.cpp's padding of the context. Raises ReproError on a GGUF without these keys.
    `meta`: the GGUF's metadata if already read (repro.models.gguf_metadata).
    """
    from repro.models import gguf_metadata

    meta = gguf_metadata(gguf_path) if meta is None else meta
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ReproError(f"{gguf_path}: no general.architecture in its metadata; cannot size its KV cache")

    def key(name):
        return meta.get(f"{arch}.{name}")

    n_layer = key("block_count")
    heads = key("attention.head_count")
    heads_kv = key("attention.head_count_kv")
    if heads_kv is None:
        heads_kv = heads
    if not isinstance(n_layer, int) or n_layer <= 0 or heads_kv is None:
        raise ReproError(f"{gguf_path}: no {arch}.block_count or attention head counts in its metadata; "
                         "cannot size its KV cache")
    k_len, v_len = key("attention.key_length"), key("attention.value_length")
    if k_len is None or v_len is None:
        n_embd = key("embedding_length")
        h = max(_per_layer(heads, n_layer)) if heads is not None else 0
        if not isinstance(n_embd, int) or h <= 0:
            raise ReproError(f"{gguf_path}: no {arch}.attention.key_length nor embedding_length/head_count "
                             "in its metadata; cannot size its KV cache")
        k_len = k_len if k_len is not None else n_embd // h
        v_len = v_len if v_len is not None else n_embd // h
    per_token = sum(_per_layer(heads_kv, n_layer)) * (k_len + v_len) * _bytes_per_element(type_k)
    return int(n_ctx_total * per_token)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def buffer_bytes(gguf: Path, n_batch: int = 512, meta: dict | None = None) -> int:
    """The allowance for llama.cpp's compute buffers: BUFFER_BYTES + a batch's logits (n_batch x
    vocabulary size x 4 bytes). Not a measurement of llama.cpp's graph; 0 for the logits when the
    GGUF names no vocabulary."""
    from repro.models import gguf_metadata

    n_vocab = (gguf_metadata(gguf) if meta is None else meta).get("tokenizer.ggml.tokens")
    return BUFFER_BYTES + (n_batch * int(n_vocab) * 4 if isinstance(n_vocab, int) else 0)


def check_fit(gguf: Path, n_ctx_total: int, n_gpu_layers: int, setting_prefix: str, *,
              parallel: int = 1, n_batch: int = 512, type_k: str = "f16") -> str | None:
    """Refuse, in one line, a model and KV cache that will not fit the free GPU memory.

    Applies only when offloading is asked for (n_gpu_layers != 0), llama.cpp can offload and
    nvidia-smi lists a GPU; then weights (the GGUF's size, times the share of layers offloaded; a
    slight overestimate, as llama.cpp keeps the input embeddings in CPU memory) +
    KV cache (the same share; all of it with all layers, as the engine offloads the KV cache with
    its layers) + buffer_bytes() must be at most the free memory of all listed GPUs together (llama.cpp
    splits layers across them), else ReproError naming the figures and the settings to lower. A GGUF
    whose KV cache kv_bytes cannot size is checked on weights and buffers alone.

    Returns a note for the caller to print when n_gpu_layers > 0 was asked of a CPU build (the
    layers stay on the CPU: not an error), else None. It does not allocate, so another process
    can still take the memory first, and it does not check a non-NVIDIA GPU.
    """
    if n_gpu_layers == 0:
        return None
    if not llama_offload():
        if n_gpu_layers > 0:
            return (f"{setting_prefix}.n_gpu_layers={n_gpu_layers}: this llama.cpp is a CPU build (it cannot "
                    "offload), so every layer stays on the CPU; install a CUDA build of llama-cpp-python "
                    "(docs/gpu.md) to use the GPU")
        return None
    devices = cuda_devices()
    if not devices:
        return None
    from repro.models import gguf_metadata

    meta = gguf_metadata(gguf)
    n_layer = meta.get(f"{meta.get('general.architecture')}.block_count")
    share = 1.0
    if n_gpu_layers > 0 and isinstance(n_layer, int) and n_layer > 0 and n_gpu_layers < n_layer:
        share = n_gpu_layers / n_layer
    weights = Path(gguf).stat().st_size * share
    try:
        kv = kv_bytes(gguf, n_ctx_total, type_k, meta) * share
    except ReproError:  # an architecture whose cache the metadata does not size (recurrent models)
        kv = 0
    buffers = buffer_bytes(gguf, n_batch, meta)
    need = weights + kv + buffers
    free = sum(d[2] for d in devices)
    if need <= free:
        return None
    where = devices[0][0] if len(devices) == 1 else f"{len(devices)} GPUs ({', '.join(d[0] for d in devices)})"
    tokens = f"{parallel} × {n_ctx_total // max(1, parallel)} tokens" if parallel > 1 else f"{n_ctx_total} tokens"
    layers = "" if share == 1.0 else f" ({n_gpu_layers} of {n_layer} layers)"
    raise ReproError(
        f"{setting_prefix}: {Path(gguf).name} needs ~{_gib(need)} of GPU memory{layers} (weights {_gib(weights)} "
        f"+ KV cache {_gib(kv)} for {tokens} + {_gib(buffers)} buffers) but {_gib(free)} is free on "
        f"{where}; lower {setting_prefix}.parallel or {setting_prefix}.n_ctx, or offload fewer layers "
        f"({setting_prefix}.n_gpu_layers)")


FLASH_ATTN = ("auto", "on", "off")


def check_settings(section: str, n_gpu_layers: int, flash_attn: str) -> None:
    """One line for a bad `<section>.n_gpu_layers` (below -1) or `<section>.flash_attn` (not auto,
    on or off). It does not look at the GPU (check_fit does)."""
    if n_gpu_layers < -1:
        raise ReproError(f"{section}.n_gpu_layers={n_gpu_layers}: use -1 (all layers on the GPU), 0 (CPU only) "
                         "or a number of layers")
    if flash_attn not in FLASH_ATTN:
        raise ReproError(f"{section}.flash_attn={flash_attn!r} is unknown; use one of: {', '.join(FLASH_ATTN)}")
