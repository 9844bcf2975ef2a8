"""Text generation behind one small interface, used by `generate` and `evaluate`.

Three backends:
- `llama-batched` (default): one llama.cpp context holding up to `parallel` sequences, each in
  its own KV-cache stream; every step is ONE `llama_decode` for all active sequences, so the
  weights are read once per step for all of them (single-stream decoding on a CPU is bound by
  memory bandwidth, not arithmetic). A finished sequence is replaced by the next request at once
  (continuous batching), and prompt chunks ride along with the decode tokens of the others.
- `llama`: llama-cpp-python's high-level `Llama`, one request at a time: the reference that the
  batched engine is checked against (greedy outputs must match; see tests/test_engine.py).
- `openai`: any OpenAI-compatible server (vLLM, SGLang, llama.cpp's llama-server,
  `python -m repro.serve`), `parallel` requests in flight at once; the scale-out path. A request
  that still fails after the client's retries comes back as finish reason "error", not as an
  exception; once the server stops answering, the requests not yet sent fail at once.

Requests and results are plain dataclasses; `Engine.run` yields results as they finish (not in
request order), so callers append each to their store at once and a crash loses at most the
sequences in flight. A request may carry a JSON schema: the answer is then constrained to it by
a llama.cpp grammar (in process) or by the server's `response_format`.
"""

from __future__ import annotations

import abc
import ctypes
import heapq
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from repro.artifacts import ReproError

BACKENDS = ("llama-batched", "llama", "openai")
LOCAL_BACKENDS = ("llama-batched", "llama")


@dataclass
class Request:
    key: str
    prompt: str = ""                      # raw text (a completion) ...
    messages: list[dict] | None = None    # ... or chat messages, rendered with the GGUF's template
    max_tokens: int = 512                 # 0 = up to the end of the context (openai: the server's default)
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0              # 0 = greedy
    top_p: float = 1.0
    seed: int = 0                         # per request, so sampled answers do not depend on batching
    json_schema: dict | None = None       # constrain the answer to JSON of this schema
    prefill: str = ""                     # the answer's start, given (as Magicoder's evaluation prefills
                                          # a code fence); not part of the returned text


@dataclass
class Completion:
    key: str
    text: str
    finish_reason: str                    # stop | length | prompt_too_long | error (openai only)
    prompt_tokens: int
    completion_tokens: int
    seconds: float                        # from admission to finish (overlaps with other requests)
    error: str = ""                       # why, when finish_reason is "error"


@dataclass
class Stats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0                  # time inside run(), not counting the caller's between results
    prompt_seconds: float = 0.0           # spent evaluating prompts (not known for openai)
    prompt_tokens_reused: int = 0         # prompt tokens found in a sequence's cache already
    decode_seconds: float = 0.0           # spent decoding (and sampling) answer tokens (not known for openai)
    errors: int = 0                       # requests that came back as finish reason "error"

    @property
    def tokens_per_second(self) -> float | None:
        """Answer tokens per second of the engine's time, prompts included: what a user waits for."""
        return self.completion_tokens / self.seconds if self.seconds else None

    @property
    def decode_tokens_per_second(self) -> float | None:
        return self.completion_tokens / self.decode_seconds if self.decode_seconds else None

    @property
    def prompt_tokens_per_second(self) -> float | None:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else None


@dataclass
class Server:
    """Where the `openai` backend sends requests, and how patiently."""
    base_url: str
    model: str = ""                       # "" = the first model the server lists
    api_key: str = ""                     # "" = none (local servers need none)
    timeout_s: float = 600.0              # per request, including its wait in the server's queue
    retries: int = 2                      # the client's retries: connection errors, 408, 409, 429, 5xx
    extra_body: dict = field(default_factory=dict)  # server-specific fields sent with every request
    section: str = "generate"             # for error messages: which settings to fix


def check_settings(section: str, backend: str, parallel: int, n_ctx: int,
                   backends: tuple[str, ...] = LOCAL_BACKENDS) -> None:
    if backend not in backends:
        raise ReproError(f"{section}.backend={backend!r} is unknown; use one of: {', '.join(backends)}")
    if parallel < 1:
        raise ReproError(f"{section}.parallel={parallel}: needs at least 1 sequence")
    if n_ctx < 16:
        raise ReproError(f"{section}.n_ctx={n_ctx}: too small for any prompt; the default is 2048")


def check_gguf(path: Path, setting: str) -> None:
    """Fail early, in one line, on a file llama.cpp cannot use as a model (it would say less, or crash).

    Reads the header only (metadata and tensor records; 0.2-0.5 s with a 262K-token vocabulary): not
    a GGUF, a version llama.cpp does not read, a header or tensor data cut short (an interrupted
    download), a LoRA adapter (`general.type` = "adapter"), a file with no tensors (a
    vocabulary-only GGUF). It does not look at the tensor data's values.
    """
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
        if etype in scalar:  # skipped, not read: token scores and types are 262K long
            skip(n * struct.calcsize(scalar[etype]))
        else:
            for _ in range(n):
                value(etype)

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


def open_engine(backend: str, gguf: Path | None, *, n_ctx: int = 2048, parallel: int = 8, threads: int = 0,
                seed: int = 42, n_batch: int = 512, server: Server | None = None) -> "Engine":
    """`n_ctx` is the context of ONE sequence (prompt + answer).

    For `openai`, `server` says where to send requests and `gguf` (optional) is a local copy of the
    served model, used only to count tokens (`Engine.tokenizer`).
    """
    check_settings("engine", backend, parallel, n_ctx, BACKENDS)
    if backend == "openai":
        if server is None:
            raise ReproError("engine: the openai backend needs a server (base_url)")
        return OpenAIEngine(server, parallel=parallel, n_ctx=n_ctx, tokenizer_gguf=gguf)
    if gguf is None:
        raise ReproError(f"engine: the {backend} backend needs a GGUF model")
    if backend == "llama-batched":
        return BatchedEngine(gguf, n_ctx=n_ctx, parallel=parallel, threads=threads, n_batch=n_batch)
    if backend == "llama":
        return SerialEngine(gguf, n_ctx=n_ctx, threads=threads, seed=seed)
    raise AssertionError(backend)


class Engine(abc.ABC):
    threads: int
    stats: Stats
    tokenizer: "Tokenizer | None" = None  # the model's own, where one is at hand
    model_name: str = ""                  # what answers: a GGUF file name, or the server's model id

    @abc.abstractmethod
    def run(self, requests: Iterable[Request]) -> Iterator[Completion]:
        """Answer every request; yield each result as soon as it is finished."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def grammar_of(schema: dict) -> str:
    """llama.cpp's GBNF grammar for JSON matching `schema` (cached: conversion is pure Python)."""
    key = json.dumps(schema, sort_keys=True)
    if key not in _grammars:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        _grammars[key] = strict_json_strings(json_schema_to_gbnf(key))
    return _grammars[key]


def strict_json_strings(gbnf: str) -> str:
    """Put llama.cpp's own JSON string rule (escapes only) into a grammar from llama-cpp-python.

    llama-cpp-python's converter lets a string hold raw control characters (a bare newline),
    which is not JSON: small models then write code with real line breaks, and 8 of 16 answers
    failed a JSON parser (bench/structured.py).
    """
    hex4 = " ".join(["[0-9a-fA-F]"] * 4)
    rule = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ' + hex4 + ")"
    return "\n".join(rule if line.startswith("char ::=") else line for line in gbnf.splitlines())


_grammars: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# tokens: the model's vocabulary and chat template, for prompts and for counting


class Tokenizer:
    """Tokens exactly as the high-level API builds them, from a loaded llama.cpp model.

    Used by the batched engine for its prompts, and by callers to count a prompt before sending
    it (to cut an over-long seed, to size the answer budget). Does not own the model.
    """

    def __init__(self, model):  # llama_cpp._internals.LlamaModel
        import llama_cpp.llama_cpp as C
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.C, self.model, self.vocab = C, model, model.vocab
        self._piece = ctypes.create_string_buffer(256)
        template = model.metadata().get("tokenizer.chat_template")
        self.chat = None
        if template:
            eos, bos = model.token_eos(), model.token_bos()
            # The same formatter (and so the same prompt text) as the high-level API uses.
            self.chat = Jinja2ChatFormatter(template=template,
                                            eos_token=model.token_get_text(eos) if eos != -1 else "",
                                            bos_token=model.token_get_text(bos) if bos != -1 else "")

    def render(self, r: Request) -> tuple[str, bool, list[str]]:
        """A request's prompt text (its prefill included), whether that text already holds the
        BOS token, and the extra stop strings its chat template implies."""
        if r.messages is not None:
            if self.chat is None:
                raise ReproError("engine: chat messages given, but the GGUF has no chat template")
            f = self.chat(messages=r.messages)
            return f.prompt + r.prefill, f.added_special, [f.stop] if isinstance(f.stop, str) else list(f.stop or [])
        return r.prompt + r.prefill, False, []

    def prompt(self, r: Request) -> tuple[list[int], list[str]]:
        """A request's prompt token ids and the extra stop strings its chat template implies."""
        text, has_bos, stops = self.render(r)
        return self.model.tokenize(text.encode("utf-8"), add_bos=not has_bos, special=True), stops

    def tokenize(self, text: str) -> list[int]:
        """Plain text (no BOS, special-token names taken as text): for cutting a snippet."""
        return self.model.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def piece(self, tok: int) -> bytes:
        n = self.C.llama_token_to_piece(self.vocab, tok, self._piece, len(self._piece), 0, False)
        if n < 0:  # a piece longer than the buffer
            self._piece = ctypes.create_string_buffer(-n)
            n = self.C.llama_token_to_piece(self.vocab, tok, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:n]

    def detokenize(self, toks: list[int]) -> str:
        """Text of `toks`; a character cut in half at the end is dropped."""
        return b"".join(self.piece(t) for t in toks).decode("utf-8", errors="ignore")


def load_vocab(gguf: Path):
    """The vocabulary and metadata of a GGUF without its weights (fast): for a Tokenizer."""
    from repro.models import llama_model

    return llama_model(gguf, vocab_only=True, what="read its vocabulary")


# ---------------------------------------------------------------------------------------------
# reference: the high-level API, one request at a time


class SerialEngine(Engine):
    def __init__(self, gguf: Path, *, n_ctx: int, threads: int, seed: int):
        from repro.models import load_llama

        import llama_cpp.llama_cpp as C

        self._C = C
        self.llm = load_llama(gguf, n_ctx=n_ctx, threads=threads, seed=seed)
        C.llama_perf_context_reset(self.llm._ctx.ctx)
        self.threads = self.llm.n_threads
        self.stats = Stats()
        self.tokenizer = Tokenizer(self.llm._model)
        self.model_name = Path(gguf).name

    def run(self, requests: Iterable[Request]) -> Iterator[Completion]:
        from llama_cpp.llama_grammar import LlamaGrammar

        for r in requests:
            t0 = time.perf_counter()
            kw = dict(max_tokens=r.max_tokens or None, temperature=r.temperature, top_p=r.top_p, seed=r.seed,
                      stop=r.stop or None)
            if r.json_schema is not None:
                kw["grammar"] = LlamaGrammar.from_string(grammar_of(r.json_schema), verbose=False)
            try:
                if r.prefill:  # the chat API cannot start the answer: render the prompt ourselves
                    ids, stops = self.tokenizer.prompt(r)
                    out = self.llm.create_completion(ids, **{**kw, "stop": list(r.stop) + stops or None})
                    text = out["choices"][0]["text"]
                elif r.messages is not None:
                    out = self.llm.create_chat_completion(messages=r.messages, **kw)
                    text = out["choices"][0]["message"]["content"] or ""
                else:
                    out = self.llm.create_completion(r.prompt, **kw)
                    text = out["choices"][0]["text"]
            except ValueError:  # the prompt does not fit the context
                yield Completion(r.key, "", "prompt_too_long", 0, 0, 0.0)
                continue
            dt = time.perf_counter() - t0
            u = out["usage"]
            perf = self._C.llama_perf_context(self.llm._ctx.ctx)
            self._C.llama_perf_context_reset(self.llm._ctx.ctx)
            self.stats.prompt_seconds += perf.t_p_eval_ms / 1000
            self.stats.decode_seconds += dt - perf.t_p_eval_ms / 1000
            self.stats.prompt_tokens += u["prompt_tokens"]
            self.stats.completion_tokens += u["completion_tokens"]
            self.stats.seconds += dt
            yield Completion(r.key, text, out["choices"][0]["finish_reason"], u["prompt_tokens"],
                             u["completion_tokens"], dt)

    def close(self) -> None:
        self.llm.close()


# ---------------------------------------------------------------------------------------------
# batched: llama.cpp's low-level API


@dataclass
class _Slot:
    req: Request
    seq: int
    tokens: list[int]                     # the prompt
    max_new: int
    stops: list[bytes]                    # UTF-8, so they are found in the undecoded answer
    t0: float
    fed: int = 0                          # prompt tokens already in the KV cache
    n_decoded: int = 0                    # answer tokens already in the KV cache
    out: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    rng: object = None
    grammar: object = None                # a llama.cpp grammar sampler (structured answers), owned


class BatchedEngine(Engine):
    def __init__(self, gguf: Path, *, n_ctx: int, parallel: int, threads: int, n_batch: int):
        import llama_cpp.llama_cpp as C
        from llama_cpp._utils import suppress_stdout_stderr

        from repro.models import choose_threads, llama_model

        self.C = C
        self.n_seq, self.n_ctx, self.n_batch = parallel, n_ctx, max(n_batch, parallel)
        self.threads = choose_threads(threads)
        self.stats = Stats()
        self.model_name = Path(gguf).name
        self.model = llama_model(gguf)
        cp = C.llama_context_default_params()
        cp.n_ctx = n_ctx * parallel
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.n_seq_max = parallel
        cp.n_threads = cp.n_threads_batch = self.threads
        # One KV stream per sequence: each sequence attends over its own cells only. A unified
        # cache would make every token attend over (and mask) all sequences' cells.
        cp.kv_unified = False
        # As the high-level API (our reference) sets it; the two must give the same greedy text.
        cp.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        # llama.cpp prints notes about the cache layout on fd 2; they are not for our users.
        with suppress_stdout_stderr(disable=False):
            self.ctx = C.llama_init_from_model(self.model.model, cp)
        if not self.ctx:
            raise ReproError(f"{gguf}: llama.cpp could not create a context of {parallel} x {n_ctx} "
                             "tokens; lower engine parallel or n_ctx")
        self.mem = C.llama_get_memory(self.ctx)
        self.vocab = self.model.vocab
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self.batch = C.llama_batch_init(self.n_batch, 0, 1)
        self.cached: dict[int, list[int]] = {}  # sequence -> the tokens its KV cache holds
        self.tokenizer = Tokenizer(self.model)
        self._cand = None                       # candidates for grammar sampling, made on first use

    # -- sampling ----------------------------------------------------------------------------

    def _pick(self, s: _Slot, idx: int) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self.C.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,))
        if s.grammar is not None:
            logits = self._allowed(s, logits)
            if not np.isfinite(logits.max()):
                return -1  # the grammar allows nothing more: end the answer (it fails its parse)
        if s.req.temperature <= 0:
            return int(logits.argmax())
        z = logits.astype(np.float64) / s.req.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        if s.req.top_p < 1.0:
            order = np.argsort(-p)
            keep = order[: int(np.searchsorted(np.cumsum(p[order]), s.req.top_p)) + 1]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            p = q / q.sum()
        return int(s.rng.choice(self.n_vocab, p=p))

    def _allowed(self, s: _Slot, logits):
        """The logits with every token the grammar forbids next set to -inf.

        Greedy first asks the grammar about the argmax alone, as llama.cpp's own sampler does: it
        is allowed most of the time (inside a JSON string almost anything is), and checking one
        token is far cheaper than checking the whole vocabulary. Sampled answers always check
        the whole vocabulary, so their distribution is exactly the constrained one.
        """
        import numpy as np

        C = self.C
        if self._cand is None:
            self._cand = (C.llama_token_data * self.n_vocab)()
            self._cand_np = np.ctypeslib.as_array(self._cand)
            self._cand_np["id"] = np.arange(self.n_vocab, dtype=np.int32)
            self._one = (C.llama_token_data * 1)()
        if s.req.temperature <= 0:
            top = int(logits.argmax())
            self._one[0].id, self._one[0].logit, self._one[0].p = top, float(logits[top]), 0.0
            arr = C.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
            C.llama_sampler_apply(s.grammar, ctypes.byref(arr))
            if self._one[0].logit != float("-inf"):
                return logits
        self._cand_np["logit"] = logits
        self._cand_np["p"] = 0.0
        arr = C.llama_token_data_array(data=self._cand, size=self.n_vocab, selected=-1, sorted=False)
        C.llama_sampler_apply(s.grammar, ctypes.byref(arr))
        return self._cand_np["logit"].copy()

    def _free_grammar(self, s: _Slot) -> None:
        if s.grammar is not None:
            self.C.llama_sampler_free(s.grammar)
            s.grammar = None

    # -- the loop ----------------------------------------------------------------------------

    def run(self, requests: Iterable[Request]) -> Iterator[Completion]:
        import numpy as np

        C, b = self.C, self.batch
        pending = iter(requests)
        free = list(range(self.n_seq))  # a heap
        active: list[_Slot] = []
        exhausted = False
        try:
            while True:
                t_step = time.perf_counter()
                # Admit new requests into free sequences.
                while free and not exhausted:
                    r = next(pending, None)
                    if r is None:
                        exhausted = True
                        break
                    toks, extra_stops = self.tokenizer.prompt(r)
                    room = self.n_ctx - len(toks)
                    if room < 1:
                        yield Completion(r.key, "", "prompt_too_long", len(toks), 0, 0.0)
                        continue
                    grammar = None
                    if r.json_schema is not None:
                        grammar = C.llama_sampler_init_grammar(self.vocab, grammar_of(r.json_schema).encode(),
                                                               b"root")
                        if not grammar:
                            raise ReproError(f"engine: llama.cpp rejected the grammar for {r.key}'s JSON schema")
                    seq = heapq.heappop(free)  # the lowest free id keeps the active ids contiguous
                    stops = [x.encode() for x in list(r.stop) + extra_stops if x]
                    active.append(_Slot(r, seq, toks, min(r.max_tokens or room, room), stops,
                                        time.perf_counter(), fed=self._reuse(seq, toks),
                                        rng=np.random.default_rng(r.seed), grammar=grammar))
                if not active:
                    break
                # One batch: a chunk of ONE newly admitted prompt if there is any, else the next
                # token of every decoding sequence. A prompt is then evaluated exactly as the
                # one-at-a-time reference does it (alone, in one batch up to n_batch tokens); a
                # whole step for it costs little, as prompt tokens go ~20x faster than decoding.
                n, outputs = 0, []
                for s in active:
                    if s.fed < len(s.tokens) and n == 0:
                        take = min(len(s.tokens) - s.fed, self.n_batch)
                        for j in range(s.fed, s.fed + take):
                            last = j == len(s.tokens) - 1
                            self._add(n, s.tokens[j], j, s.seq, last)
                            if last:
                                outputs.append((n, s))
                            n += 1
                        s.fed += take
                prefill_step = n > 0
                if n == 0:
                    # In seq-id order: with one KV stream per sequence llama.cpp splits a batch
                    # into one pass over the weights per run of consecutive sequence ids, so an
                    # unordered batch would cost several passes (measured: 3x slower steps).
                    for s in sorted(active, key=lambda s: s.seq):
                        self._add(n, s.out[-1], len(s.tokens) + len(s.out) - 1, s.seq, True)
                        s.n_decoded = len(s.out)
                        outputs.append((n, s))
                        n += 1
                b.n_tokens = n
                t0 = time.perf_counter()
                rc = C.llama_decode(self.ctx, b)
                if rc != 0:
                    raise ReproError(f"engine: llama_decode failed (code {rc}); lower engine parallel or n_ctx")
                finished = []
                for idx, s in outputs:
                    done = self._accept(s, self._pick(s, idx))
                    if done:
                        text, reason = done
                        self.stats.prompt_tokens += len(s.tokens)
                        self.stats.completion_tokens += len(s.out)
                        finished.append(Completion(s.req.key, text, reason, len(s.tokens), len(s.out),
                                                   time.perf_counter() - s.t0))
                        active.remove(s)
                        self._free_grammar(s)
                        heapq.heappush(free, s.seq)
                        # What the sequence's cache holds now: the prompt and every answer token
                        # that was decoded (the last sampled one was not, unless it ended it).
                        self.cached[s.seq] = s.tokens + s.out[: s.n_decoded]
                dt = time.perf_counter() - t0
                if prefill_step:
                    self.stats.prompt_seconds += dt
                else:
                    self.stats.decode_seconds += dt
                self.stats.seconds += time.perf_counter() - t_step
                yield from finished  # after the clock: the caller's time is not ours
        finally:
            for s in active:  # stopped early (an error, or the caller closed us): forget them
                self._free_grammar(s)
                self.cached[s.seq] = []
                C.llama_memory_seq_rm(self.mem, s.seq, -1, -1)

    def _reuse(self, seq: int, toks: list[int]) -> int:
        """Keep the part of `seq`'s cache that the new prompt starts with; return its length.

        Prompts share a long head (system message, template), and a sequence's previous prompt
        is still in its cache: only the rest needs evaluating. The high-level API does the same
        with its single sequence. At least the prompt's last token is evaluated, for its logits.
        """
        old = self.cached.get(seq, [])
        keep = 0
        for a, b in zip(old, toks[:-1]):
            if a != b:
                break
            keep += 1
        if keep and not self.C.llama_memory_seq_rm(self.mem, seq, keep, -1):
            keep = 0  # a cache that cannot drop a tail (e.g. a sliding window): start over
        if not keep:
            self.C.llama_memory_seq_rm(self.mem, seq, -1, -1)
        self.cached[seq] = toks[:keep]
        self.stats.prompt_tokens_reused += keep
        return keep

    def _add(self, i: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[i] = tok
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def _accept(self, s: _Slot, tok: int) -> tuple[str, str] | None:
        """Record a sampled token; return (text, finish reason) once the sequence is done."""
        if tok < 0 or self.C.llama_vocab_is_eog(self.vocab, tok):
            return s.text.decode("utf-8", errors="ignore"), "stop"
        if s.grammar is not None:
            self.C.llama_sampler_accept(s.grammar, tok)
        s.out.append(tok)
        before = len(s.text)
        s.text += self.tokenizer.piece(tok)
        if s.stops:
            # Search the bytes, from just before the new piece: only it can complete a stop string,
            # and the text is decoded once, at the end, not on every token.
            start = max(0, before - max(map(len, s.stops)) + 1)
            hits = [i for i in (s.text.find(x, start) for x in s.stops) if i >= 0]
            if hits:
                return s.text[: min(hits)].decode("utf-8", errors="ignore"), "stop"
        if len(s.out) >= s.max_new:
            return s.text.decode("utf-8", errors="ignore"), "length"
        return None

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            self.C.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            from llama_cpp._utils import suppress_stdout_stderr

            with suppress_stdout_stderr(disable=False):  # it reports its buffer sizes on fd 2
                self.C.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None) is not None:
            self.model.close()
            self.model = None

    def __del__(self):
        self.close()


# ---------------------------------------------------------------------------------------------
# openai: any OpenAI-compatible server, `parallel` requests in flight


def probe(server: Server) -> list[str]:
    """The models a server lists; a ReproError naming the setting when it does not answer."""
    s = server
    try:
        import openai
    except ImportError:
        raise ReproError(f"{s.section}.backend=openai needs the openai package: pip install -e '.[openai]'") from None
    client = openai.OpenAI(base_url=s.base_url, api_key=s.api_key or "none", timeout=10, max_retries=0)
    try:
        return [m.id for m in client.models.list().data]
    except openai.AuthenticationError:
        raise ReproError(f"{s.section}.base_url={s.base_url}: the server wants an API key; put it in the "
                         f"environment variable named by {s.section}.api_key_env") from None
    except openai.APIConnectionError as e:
        raise ReproError(f"{s.section}.base_url={s.base_url}: no OpenAI-compatible server answers there "
                         f"({_cause(e)}); start one (e.g. `python -m repro.serve --model <gguf> --port 8000`, "
                         "then base_url=http://127.0.0.1:8000/v1) or fix the URL") from None
    except openai.APIStatusError as e:
        raise ReproError(f"{s.section}.base_url={s.base_url}: listing its models failed (HTTP {e.status_code}); "
                         f"is it the API's root (usually ending in /v1)? Or set {s.section}.model_name") from None
    finally:
        client.close()


def _cause(e: BaseException) -> str:
    """The innermost reason of a client error, in a few words ("Connection refused")."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    text = str(e).strip() or type(e).__name__
    return text.split("] ", 1)[-1][:200]


def _status_message(e) -> str:
    body = e.body if isinstance(getattr(e, "body", None), dict) else {}
    inner = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(body.get("message") or inner.get("message") or e.message)[:300]


def _response_format(kind: str, schema: dict) -> dict:
    if kind == "json_schema":  # OpenAI, vLLM, SGLang, llama.cpp's llama-server
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    return {"type": "json_object", "schema": schema}  # llama-cpp-python's server (and llama-server)


class OpenAIEngine(Engine):
    def __init__(self, server: Server, *, parallel: int, n_ctx: int, tokenizer_gguf: Path | None):
        import openai

        models = probe(server)
        if server.model and server.model not in models and models:
            raise ReproError(f"{server.section}.model_name={server.model!r}: {server.base_url} serves "
                             f"{', '.join(models[:5])}; set it to one of those")
        if not (server.model or models):
            raise ReproError(f"{server.section}.base_url={server.base_url}: the server lists no models; "
                             f"set {server.section}.model_name")
        self.openai, self.server, self.parallel, self.n_ctx = openai, server, parallel, n_ctx
        self.client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key or "none",
                                    timeout=server.timeout_s, max_retries=server.retries)
        self.model_name = server.model or models[0]
        self.threads = 0
        self.stats = Stats()
        self._vocab = load_vocab(tokenizer_gguf) if tokenizer_gguf else None
        self.tokenizer = Tokenizer(self._vocab) if self._vocab else None
        self._down = ""       # why the server stopped answering: requests not yet sent then fail at once
        self._format = None   # the response_format the server takes, once known

    def run(self, requests: Iterable[Request]) -> Iterator[Completion]:
        import queue

        pending, done = iter(requests), queue.Queue()
        inflight = 0
        t0, before = time.perf_counter(), self.stats.seconds
        # One daemon thread per request in flight: a caller that stops early (Ctrl-C) is not held
        # up until the server has answered them (a thread pool would be joined at exit).
        while True:
            while inflight < self.parallel and (r := next(pending, None)) is not None:
                threading.Thread(target=lambda r=r: done.put(self._one(r)), daemon=True).start()
                inflight += 1
            if not inflight:
                break
            c = done.get()
            inflight -= 1
            self.stats.prompt_tokens += c.prompt_tokens
            self.stats.completion_tokens += c.completion_tokens
            self.stats.errors += c.finish_reason == "error"
            # Wall time, the caller's included: the server works on while the caller writes.
            self.stats.seconds = before + time.perf_counter() - t0
            yield c

    def _one(self, r: Request) -> Completion:
        """Never raises: a failure is this request's result (its thread has no one to raise to)."""
        t0 = time.perf_counter()
        try:
            return self._ask(r, t0)
        except Exception as e:  # a malformed answer (not JSON, wrong shape), or our own slip
            return Completion(r.key, "", "error", 0, 0, time.perf_counter() - t0,
                              error=f"{type(e).__name__}: {str(e)[:200]}")

    def _ask(self, r: Request, t0: float) -> Completion:
        oa = self.openai

        def failed(why: str, reason: str = "error") -> Completion:
            return Completion(r.key, "", reason, 0, 0, time.perf_counter() - t0, error=why)

        if self._down:
            return failed(f"not sent: {self._down}")
        kw = {"model": self.model_name, "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed}
        if r.max_tokens:
            kw["max_tokens"] = r.max_tokens
        if r.stop:
            kw["stop"] = r.stop
        if self.server.extra_body:
            kw["extra_body"] = self.server.extra_body
        try:
            if r.prefill:  # chat endpoints cannot start the answer: send the rendered text instead
                if self.tokenizer is None or (r.messages is not None and self.tokenizer.chat is None):
                    return failed("a prefilled answer needs the model's chat template: set the "
                                  "tokenizer GGUF (generate.teacher / evaluate.teacher) for the openai backend")
                text_in, _, stops = self.tokenizer.render(r)
                out = self.client.completions.create(prompt=text_in, **{**kw, "stop": list(r.stop) + stops or None})
                text = out.choices[0].text if out.choices else None
            elif r.messages is not None:
                out = self._chat(r, kw)
                text = out.choices[0].message.content if out.choices else None
            else:
                out = self.client.completions.create(prompt=r.prompt, **kw)
                text = out.choices[0].text if out.choices else None
        except oa.APIConnectionError as e:  # after the client's retries; timeouts included
            if not isinstance(e, oa.APITimeoutError):
                self._down = f"{self.server.base_url} stopped answering ({_cause(e)})"
            return failed(f"{type(e).__name__}: {_cause(e)}")
        except oa.APIStatusError as e:
            msg = _status_message(e)
            if e.status_code == 400 and "context" in msg.lower() and ("length" in msg.lower() or "token" in msg.lower()):
                return failed(msg, "prompt_too_long")  # final: the same prompt will not fit next time either
            return failed(f"HTTP {e.status_code}: {msg}")
        if not out.choices:
            return failed("the server sent no choices")
        u = getattr(out, "usage", None)
        prompt_tokens = u.prompt_tokens if u else (len(self.tokenizer.prompt(r)[0]) if self.tokenizer else 0)
        completion_tokens = u.completion_tokens if u else (len(self.tokenizer.tokenize(text or "")) if self.tokenizer else 0)
        return Completion(r.key, text or "", out.choices[0].finish_reason or "unknown", prompt_tokens,
                          completion_tokens, time.perf_counter() - t0)

    def _chat(self, r: Request, kw: dict):
        create = self.client.chat.completions.create
        if r.json_schema is None:
            return create(messages=r.messages, **kw)
        if self._format is None:
            # Servers differ: try the OpenAI form once, without retries; fall back to the other.
            try:
                out = self.client.with_options(max_retries=0).chat.completions.create(
                    messages=r.messages, response_format=_response_format("json_schema", r.json_schema), **kw)
                self._format = "json_schema"
                return out
            except self.openai.APIStatusError as e:
                if e.status_code not in (400, 422, 500):
                    raise
                self._format = "json_object"
        return create(messages=r.messages, response_format=_response_format(self._format, r.json_schema), **kw)

    def close(self) -> None:
        self.client.close()
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None
