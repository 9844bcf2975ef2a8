"""The llama.cpp backends: `llama-batched` (one context, many sequences, one decode per step)
and `llama` (llama-cpp-python's high-level API, one request at a time: the reference)."""

from __future__ import annotations

import ctypes
import heapq
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from repro.artifacts import ReproError
from repro.engine.base import LOOP_MAX_PERIOD, Completion, Engine, Request, Stats, grammar_of


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


def _offload(gguf: Path, n_ctx_total: int, n_gpu_layers: int, section: str, parallel: int, n_batch: int) -> bool:
    """Whether layers go to the GPU (asked for, and llama.cpp can); checks first that they fit
    (repro/gpu.py: one-line ReproError) and prints gpu.check_fit's note, if any, to stderr."""
    import sys

    from repro import gpu

    note = gpu.check_fit(gguf, n_ctx_total, n_gpu_layers, section, parallel=parallel, n_batch=n_batch)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return n_gpu_layers != 0 and gpu.llama_offload()


# ---------------------------------------------------------------------------------------------
# reference: the high-level API, one request at a time


class SerialEngine(Engine):
    """The reference. With layers on the GPU, `flash_attn` "on" turns flash attention on; "auto"
    leaves it off here (the high-level API knows only on and off), as it always is on the CPU."""

    def __init__(self, gguf: Path, *, n_ctx: int, threads: int, seed: int, n_gpu_layers: int = 0,
                 flash_attn: str = "auto", section: str = "engine"):
        from repro.models import load_llama

        import llama_cpp.llama_cpp as C

        self._C = C
        gpu = _offload(gguf, n_ctx, n_gpu_layers, section, 1, 512)  # Llama's default n_batch
        # Without offloading, nothing goes to a GPU, even with a CUDA build (n_gpu_layers=0: CPU only).
        self.llm = load_llama(gguf, n_ctx=n_ctx, threads=threads, seed=seed, n_gpu_layers=n_gpu_layers if gpu else 0,
                              offload_kqv=gpu, op_offload=gpu, flash_attn=gpu and flash_attn == "on")
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
    runs: object = None                   # Request.fill_loops: per period p, how many of the latest
                                          # answer tokens equal the one p before (numpy); None = off
    loop_at: object = None                # the run length at which period p counts as a loop
    filled: int = 0                       # answer tokens repeated from a loop, not decoded


def _stop_in(s: _Slot, before: int) -> tuple[str, str] | None:
    """(text up to the first stop string, "stop") if the answer's bytes from `before` on complete
    one, else None. Only text added since `before` can complete one, so the search starts just
    before it; the bytes are searched, and the text decoded once, at the end, not on every token."""
    if not s.stops:
        return None
    start = max(0, before - max(map(len, s.stops)) + 1)
    hits = [i for i in (s.text.find(x, start) for x in s.stops) if i >= 0]
    return (s.text[: min(hits)].decode("utf-8", errors="ignore"), "stop") if hits else None


def loop_counters(r: Request) -> tuple[object, object]:
    """A greedy request's Request.fill_loops state for its _Slot (runs, loop_at); (None, None) when
    off. Sampled answers are left alone: they need not repeat a loop they fell into."""
    import numpy as np

    if r.fill_loops <= 0 or r.temperature > 0:
        return None, None
    return (np.zeros(LOOP_MAX_PERIOD, dtype=np.int64),
            np.maximum(r.fill_loops, 2 * np.arange(1, LOOP_MAX_PERIOD + 1)))


class BatchedEngine(Engine):
    """Layers on the GPU when `n_gpu_layers` != 0 and llama.cpp can offload (after gpu.check_fit):
    then the KV cache goes with them and flash attention follows `flash_attn` (auto | on | off).
    Otherwise everything stays on the CPU with flash attention off, exactly as the `llama`
    reference runs, so the two give the same greedy text (tests/test_engine.py). Greedy text on a
    GPU is not checked against the CPU's: kernels differ, so a long answer may differ too."""

    def __init__(self, gguf: Path, *, n_ctx: int, parallel: int, threads: int, n_batch: int,
                 n_gpu_layers: int = 0, flash_attn: str = "auto", section: str = "engine"):
        import llama_cpp.llama_cpp as C

        from repro.models import choose_threads, llama_model, llama_quiet

        self.C, self.quiet = C, llama_quiet  # close() may run at exit, when imports fail
        self.n_seq, self.n_ctx, self.n_batch = parallel, n_ctx, max(n_batch, parallel)
        self.threads = self._want_threads = choose_threads(threads)
        self.stats = Stats()
        self.model_name = Path(gguf).name
        self.gpu = _offload(gguf, n_ctx * parallel, n_gpu_layers, section, parallel, self.n_batch)
        self.model = llama_model(gguf, n_gpu_layers=n_gpu_layers if self.gpu else 0)  # under llama_quiet's lock
        cp = C.llama_context_default_params()
        cp.n_ctx = n_ctx * parallel
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.n_seq_max = parallel
        cp.n_threads = cp.n_threads_batch = self.threads
        # One KV stream per sequence: each sequence attends over its own cells only. A unified
        # cache would make every token attend over (and mask) all sequences' cells.
        cp.kv_unified = False
        if self.gpu:
            cp.offload_kqv = True  # each layer's KV cache beside its weights on the GPU
            cp.flash_attn_type = {"auto": C.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": C.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                  "off": C.LLAMA_FLASH_ATTN_TYPE_DISABLED}[flash_attn]
        else:
            # Nothing on a GPU (a CUDA build included), and flash attention off as the high-level
            # API (our reference) sets it: the two must give the same greedy text.
            cp.offload_kqv = cp.op_offload = False
            cp.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        # llama.cpp prints notes about the cache layout on fd 2; they are not for our users.
        with self.quiet():
            self.ctx = C.llama_init_from_model(self.model.model, cp)
        if not self.ctx:
            raise ReproError(f"{gguf}: llama.cpp could not create a context of {parallel} x {n_ctx} "
                             f"tokens; lower {section}.parallel or {section}.n_ctx"
                             + (f", or offload fewer layers ({section}.n_gpu_layers)" if self.gpu else ""))
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

    def set_threads(self, n: int) -> None:
        """Takes effect at the next step, in the thread that runs the loop. The text does not
        change: llama.cpp splits each op's rows among its threads, every row's sums in one thread
        (tests/test_engine.py checks greedy answers across a change)."""
        self._want_threads = max(1, n)

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
                if self._want_threads != self.threads:
                    self.threads = self._want_threads
                    with self.quiet():  # it logs the new count
                        C.llama_set_n_threads(self.ctx, self.threads, self.threads)
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
                    runs, loop_at = loop_counters(r) if grammar is None else (None, None)
                    active.append(_Slot(r, seq, toks, min(r.max_tokens or room, room), stops, time.perf_counter(),
                                        fed=self._reuse(seq, toks), rng=np.random.default_rng(r.seed),
                                        grammar=grammar, runs=runs, loop_at=loop_at))
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
                        self.stats.completion_tokens += len(s.out) - s.filled
                        self.stats.filled_tokens += s.filled
                        finished.append(Completion(s.req.key, text, reason, len(s.tokens), len(s.out),
                                                   time.perf_counter() - s.t0, filled=s.filled))
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
        if (stopped := _stop_in(s, before)) is not None:
            return stopped
        if len(s.out) >= s.max_new:
            return s.text.decode("utf-8", errors="ignore"), "length"
        if s.runs is not None:
            return self._fill_loop(s)
        return None

    def _fill_loop(self, s: _Slot) -> tuple[str, str] | None:
        """Request.fill_loops: once the latest tokens are a cycle of period p repeated (run[p] >=
        max(fill_loops, 2p): 3 times over at least), write the rest of the answer, up to max_new,
        by repeating it, and return the answer as decoding would end it: "length", or "stop" at a
        stop string the repeats complete.

        Why: small models at greedy decoding often fall into a verbatim loop and stay in it to the
        token limit; on a CPU those tokens cost as much as any others. What it does not do: check
        that the model would have stayed in the loop. bench/fill_loops.py measures how often the
        filled answers equal the fully decoded ones (docs/evaluate.md has the figures).
        """
        import numpy as np

        out, runs = s.out, s.runs
        k = min(len(runs), len(out) - 1)
        if k < 1:
            return None
        before = np.fromiter(reversed(out[-1 - k:-1]), dtype=np.int64, count=k)  # 1, 2, ... k back
        runs[:k] = np.where(before == out[-1], runs[:k] + 1, 0)
        hit = np.flatnonzero(runs >= s.loop_at)
        if not len(hit):
            return None
        p, before = int(hit[0]) + 1, len(s.text)
        while len(out) < s.max_new:
            out.append(out[-p])
            s.text += self.tokenizer.piece(out[-1])
            s.filled += 1
        return _stop_in(s, before) or (s.text.decode("utf-8", errors="ignore"), "length")

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            self.C.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            with self.quiet():  # it reports its buffer sizes on fd 2
                self.C.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None) is not None:
            with self.quiet():
                self.model.close()
            self.model = None

    def __del__(self):
        self.close()
