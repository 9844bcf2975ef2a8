"""Text generation with llama.cpp behind one small interface, used by `generate` and `evaluate`.

Two backends:
- `llama-batched` (default): one llama.cpp context holding up to `parallel` sequences, each in
  its own KV-cache stream; every step is ONE `llama_decode` for all active sequences, so the
  weights are read once per step for all of them (single-stream decoding on a CPU is bound by
  memory bandwidth, not arithmetic). A finished sequence is replaced by the next request at once
  (continuous batching), and prompt chunks ride along with the decode tokens of the others.
- `llama`: llama-cpp-python's high-level `Llama`, one request at a time: the reference that the
  batched engine is checked against (greedy outputs must match; see tests/test_engine.py).

Requests and results are plain dataclasses; `Engine.run` yields results as they finish (not in
request order), so callers append each to their store at once and a crash loses at most the
sequences in flight.
"""

from __future__ import annotations

import abc
import ctypes
import time
import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from repro.artifacts import ReproError

BACKENDS = ("llama-batched", "llama")


@dataclass
class Request:
    key: str
    prompt: str = ""                      # raw text (a completion) ...
    messages: list[dict] | None = None    # ... or chat messages, rendered with the GGUF's template
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0              # 0 = greedy
    top_p: float = 1.0
    seed: int = 0                         # per request, so sampled answers do not depend on batching


@dataclass
class Completion:
    key: str
    text: str
    finish_reason: str                    # stop | length | prompt_too_long
    prompt_tokens: int
    completion_tokens: int
    seconds: float                        # from admission to finish (overlaps with other requests)


@dataclass
class Stats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0                  # time inside run(), not counting the caller's between results
    prompt_seconds: float = 0.0           # spent evaluating prompts
    prompt_tokens_reused: int = 0         # prompt tokens found in a sequence's cache already
    decode_seconds: float = 0.0           # spent decoding (and sampling) answer tokens

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


def check_settings(section: str, backend: str, parallel: int, n_ctx: int) -> None:
    if backend not in BACKENDS:
        raise ReproError(f"{section}.backend={backend!r} is unknown; use one of: {', '.join(BACKENDS)}")
    if parallel < 1:
        raise ReproError(f"{section}.parallel={parallel}: needs at least 1 sequence")
    if n_ctx < 16:
        raise ReproError(f"{section}.n_ctx={n_ctx}: too small for any prompt; the default is 2048")


def open_engine(backend: str, gguf: Path, *, n_ctx: int = 2048, parallel: int = 8, threads: int = 0,
                seed: int = 42, n_batch: int = 512) -> "Engine":
    """`n_ctx` is the context of ONE sequence (prompt + answer)."""
    check_settings("engine", backend, parallel, n_ctx)
    if backend == "llama-batched":
        return BatchedEngine(gguf, n_ctx=n_ctx, parallel=parallel, threads=threads, n_batch=n_batch)
    if backend == "llama":
        return SerialEngine(gguf, n_ctx=n_ctx, threads=threads, seed=seed)
    raise AssertionError(backend)


class Engine(abc.ABC):
    threads: int
    stats: Stats

    @abc.abstractmethod
    def run(self, requests: Iterable[Request]) -> Iterator[Completion]:
        """Answer every request; yield each result as soon as it is finished."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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

    def run(self, requests: Iterable[Request]) -> Iterator[Completion]:
        for r in requests:
            t0 = time.perf_counter()
            kw = dict(max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p, seed=r.seed,
                      stop=r.stop or None)
            try:
                if r.messages is not None:
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


class BatchedEngine(Engine):
    def __init__(self, gguf: Path, *, n_ctx: int, parallel: int, threads: int, n_batch: int):
        import llama_cpp.llama_cpp as C
        from llama_cpp._internals import LlamaModel
        from llama_cpp._utils import suppress_stdout_stderr
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from repro.models import _without_extra_buffer_types, choose_threads

        self.C = C
        self.n_seq, self.n_ctx, self.n_batch = parallel, n_ctx, max(n_batch, parallel)
        self.threads = choose_threads(threads)
        self.stats = Stats()
        with _without_extra_buffer_types():
            try:
                self.model = LlamaModel(path_model=str(gguf), params=C.llama_model_default_params(),
                                        verbose=False)
            except ValueError as e:
                raise ReproError(f"{gguf}: llama.cpp could not load it ({e}); is it a valid GGUF file?") from None
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
        self._piece = ctypes.create_string_buffer(256)
        meta = self.model.metadata()
        template = meta.get("tokenizer.chat_template")
        self.chat = None
        if template:
            eos, bos = self.model.token_eos(), self.model.token_bos()
            # The same formatter (and so the same prompt text) as the high-level API uses.
            self.chat = Jinja2ChatFormatter(template=template,
                                            eos_token=self.model.token_get_text(eos) if eos != -1 else "",
                                            bos_token=self.model.token_get_text(bos) if bos != -1 else "")

    # -- tokens ------------------------------------------------------------------------------

    def _prompt_tokens(self, r: Request) -> tuple[list[int], list[str]]:
        """Token ids and extra stop strings, exactly as the high-level API builds them."""
        if r.messages is not None:
            if self.chat is None:
                raise ReproError("engine: chat messages given, but the GGUF has no chat template")
            f = self.chat(messages=r.messages)
            return self.model.tokenize(f.prompt.encode("utf-8"), add_bos=not f.added_special,
                                       special=True), [f.stop] if isinstance(f.stop, str) else list(f.stop or [])
        return self.model.tokenize(r.prompt.encode("utf-8"), add_bos=True, special=True), []

    def _piece_of(self, tok: int) -> bytes:
        n = self.C.llama_token_to_piece(self.vocab, tok, self._piece, len(self._piece), 0, False)
        if n < 0:  # a piece longer than the buffer
            self._piece = ctypes.create_string_buffer(-n)
            n = self.C.llama_token_to_piece(self.vocab, tok, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:n]

    def _pick(self, s: _Slot, idx: int) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self.C.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,))
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
                    toks, extra_stops = self._prompt_tokens(r)
                    room = self.n_ctx - len(toks)
                    if room < 1:
                        yield Completion(r.key, "", "prompt_too_long", len(toks), 0, 0.0)
                        continue
                    seq = heapq.heappop(free)  # the lowest free id keeps the active ids contiguous
                    stops = [x.encode() for x in list(r.stop) + extra_stops if x]
                    active.append(_Slot(r, seq, toks, min(r.max_tokens, room), stops,
                                        time.perf_counter(), fed=self._reuse(seq, toks),
                                        rng=np.random.default_rng(r.seed)))
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
        if self.C.llama_vocab_is_eog(self.vocab, tok):
            return s.text.decode("utf-8", errors="ignore"), "stop"
        s.out.append(tok)
        before = len(s.text)
        s.text += self._piece_of(tok)
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
