"""The `openai` backend: any OpenAI-compatible server, `parallel` requests in flight."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from repro.artifacts import ReproError
from repro.engine.base import Completion, Engine, Request, Server, Stats
from repro.engine.llama_backend import Tokenizer, load_vocab


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
