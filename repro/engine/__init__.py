"""Text generation behind one small interface, used by `generate` and `evaluate`.

Three backends:
- `llama-batched` (default): one llama.cpp context holding up to `parallel` sequences, each in
  its own KV-cache stream; every step is ONE `llama_decode` for all active sequences, so the
  weights are read once per step for all of them (single-stream decoding on a CPU is bound by
  memory bandwidth, not arithmetic). A finished sequence is replaced by the next request at once
  (continuous batching), and prompt chunks ride along with the decode tokens of the others.
- `llama`: llama-cpp-python's high-level `Llama`, one request at a time: the reference that the
  batched engine is checked against (greedy outputs must match; see tests/test_engine.py).
- `openai`: any OpenAI-compatible servers (vLLM, SGLang, llama.cpp's llama-server, `repro serve`),
  one or several (`base_url` comma-separated), `parallel` requests in flight on each; the
  scale-out path. Retries with backoff and jitter are ours (openai_backend.py), a server that keeps
  failing is taken out of rotation and its requests go to the others. A request that still fails
  comes back as finish reason "error", not as an exception; once no server is left, the requests
  not yet sent fail at once.

Requests and results are plain dataclasses; `Engine.run` yields results as they finish (not in
request order), so callers append each to their store at once and a crash loses at most the
sequences in flight. A request may carry a JSON schema: the answer is then constrained to it by
a llama.cpp grammar (in process) or by the server's `response_format`.
"""

from __future__ import annotations

from pathlib import Path

from repro.artifacts import ReproError
from repro.engine.base import (BACKENDS, LOCAL_BACKENDS, Completion, Engine, Request, Server, Stats,  # noqa: F401
                               check_settings, grammar_of, strict_json_strings)
from repro.engine.llama_backend import BatchedEngine, SerialEngine, Tokenizer, load_vocab  # noqa: F401
from repro.engine.openai_backend import OpenAIEngine, probe  # noqa: F401


def open_engine(backend: str, gguf: Path | None, *, n_ctx: int = 2048, parallel: int = 8, threads: int = 0,
                seed: int = 42, n_batch: int = 512, server: Server | None = None, n_gpu_layers: int = -1,
                flash_attn: str = "auto", section: str = "engine") -> "Engine":
    """`n_ctx` is the context of ONE sequence (prompt + answer).

    For `openai`, `server` says where to send requests and `gguf` (optional) is a local copy of the
    served model, used only to count tokens (`Engine.tokenizer`).

    For the llama backends, `n_gpu_layers` layers go to the GPU (-1 = all, 0 = none) where llama.cpp
    was built with CUDA; a CPU build ignores it. `flash_attn` (auto | on | off) applies only with
    layers on the GPU. Before loading, both llama engines check that weights and KV cache fit the
    free GPU memory (repro/gpu.py), naming `<section>.parallel`, `.n_ctx` and `.n_gpu_layers` when
    they do not; `section` is the config section the settings came from (generate, evaluate). The
    openai backend ignores both (the server decides).
    """
    from repro import gpu

    check_settings("engine", backend, parallel, n_ctx, BACKENDS)
    gpu.check_settings(section, n_gpu_layers, flash_attn)
    if backend == "openai":
        if server is None:
            raise ReproError("engine: the openai backend needs a server (base_url)")
        return OpenAIEngine(server, parallel=parallel, n_ctx=n_ctx, tokenizer_gguf=gguf)
    if gguf is None:
        raise ReproError(f"engine: the {backend} backend needs a GGUF model")
    if backend == "llama-batched":
        return BatchedEngine(gguf, n_ctx=n_ctx, parallel=parallel, threads=threads, n_batch=n_batch,
                             n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, section=section)
    if backend == "llama":
        return SerialEngine(gguf, n_ctx=n_ctx, threads=threads, seed=seed, n_gpu_layers=n_gpu_layers,
                            flash_attn=flash_attn, section=section)
    raise AssertionError(backend)
