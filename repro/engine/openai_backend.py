"""The `openai` backend: any OpenAI-compatible server, or several, `parallel` requests in flight on each.

`base_url` may list several endpoints, comma-separated. Each request goes to the endpoint with
the fewest requests in flight (ties: the one sent the fewest). Retries are ours, not the openai
client's (its max_retries is 0): 408, 409, 429, 5xx, timeouts and dropped connections are
retried after a backoff with full jitter, at most `retries` times after the first attempt, on
another endpoint where one is free; a Retry-After pauses that endpoint. An endpoint that refuses
connections, or fails EVICT_AFTER times in a row, is out of rotation for as long as the engine
lives (each stage opens one per run), and what it had in flight is sent again elsewhere (the
first answer counts, a later one is dropped); a refused request was not sent and keeps its
retries. Every request is answered exactly once: an answer, or finish reason "error" with the
reason; when no endpoint is left, those not in flight fail at once, naming each endpoint's fate.

It does not bring an endpoint back (no health checks), does not split one request across
servers, and does not check that the servers give the same answers: they must serve the same
model (checked by name at start). One `run` at a time per engine.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from repro.artifacts import ReproError
from repro.engine.base import Completion, Engine, Request, Server, Stats
from repro.engine.llama_backend import Tokenizer, load_vocab

# Our retry policy; the openai client's own is off (max_retries=0), so this one is the only one.
# Full jitter (the wait drawn uniformly between 0 and an exponential bound): requests that failed
# together, when a server hiccuped, do not all come back together. 0.5 s is the openai client's
# own first bound: enough for a server that dropped one request, little beside the seconds to
# minutes an answer takes; the cap keeps a long streak of failures from waiting longer than
# an answer takes.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# A server's Retry-After (429, 503) is honoured up to this; a longer one is most likely a quota
# that waiting within a run does not help with (the openai client draws the same line at 60 s).
RETRY_AFTER_CAP_S = 60.0
# Failures in a row (5xx, timeouts, dropped connections; no answer in between) that take an
# endpoint out of rotation: a healthy server drops one now and then (a restarting worker), five in
# a row is one that is down or broken. 429 is back-pressure, not a failure: it does not count. A
# refused connection takes it out at once: nothing listens there any more.
EVICT_AFTER = 5
RETRY_STATUS = (408, 409, 429)  # and every 5xx: what the openai client retries too


def backoff(failures: int, rng=random) -> float:
    """Seconds to wait before the attempt after `failures` failed ones: uniform in
    [0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**(failures - 1))] ("full jitter")."""
    return rng.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, failures - 1)))


# ---------------------------------------------------------------------------------------------
# Which servers answer


def probe(server: Server) -> list[str]:
    """The models the first answering endpoint lists; a ReproError naming the setting when none
    answers, or one answers wrongly (it wants a key, it has no model list). Endpoints that do not
    answer are not an error while one does (the engine leaves them out, with a note)."""
    return next(m for m in _probe_all(server).values() if isinstance(m, list))


def _probe_all(server: Server) -> dict[str, list[str] | str]:
    """Endpoint URL -> the models it lists, or why nothing answers there."""
    s, urls = server, server.urls
    if not urls:
        raise ReproError(f"{s.section}.base_url is empty: backend=openai needs the server's URL, "
                         "e.g. http://127.0.0.1:8000/v1")
    try:
        import openai  # noqa: F401
    except ImportError:
        raise ReproError(f"{s.section}.backend=openai needs the openai package: pip install -e '.[openai]'") from None
    # At once, not in turn: a host that drops packets costs the 10 s timeout once, not per host.
    with ThreadPoolExecutor(len(urls)) as pool:
        found = dict(zip(urls, pool.map(lambda u: _probe_one(s, u), urls)))
    if not any(isinstance(m, list) for m in found.values()):
        if len(urls) == 1:
            raise ReproError(f"{s.section}.base_url={s.base_url}: no OpenAI-compatible server answers there "
                             f"({found[urls[0]]}); start one (e.g. `python -m repro.serve --model <gguf> --port 8000`, "
                             "then base_url=http://127.0.0.1:8000/v1) or fix the URL")
        raise ReproError(f"{s.section}.base_url={s.base_url}: no OpenAI-compatible server answers at any of them ("
                         + "; ".join(f"{u}: {why}" for u, why in found.items())
                         + "); start them (e.g. `python -m repro.serve --model <gguf> --port 8000`) or fix the URLs")
    return found


def _probe_one(s: Server, url: str) -> list[str] | str:
    import openai

    where = f"{s.section}.base_url={s.base_url}" + ("" if url == s.base_url else f", at {url}")
    client = openai.OpenAI(base_url=url, api_key=s.api_key or "none", timeout=10, max_retries=0)
    try:
        return [m.id for m in client.models.list().data]
    except openai.AuthenticationError:
        raise ReproError(f"{where}: the server wants an API key; put it in the "
                         f"environment variable named by {s.section}.api_key_env") from None
    except openai.APIConnectionError as e:
        return _cause(e)
    except openai.APIStatusError as e:
        raise ReproError(f"{where}: listing its models failed (HTTP {e.status_code}); "
                         f"is it the API's root (usually ending in /v1)? Or set {s.section}.model_name") from None
    finally:
        client.close()


def _root(e: BaseException) -> BaseException:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return e


def _cause(e: BaseException) -> str:
    """The innermost reason of a client error, in a few words ("Connection refused")."""
    e = _root(e)
    text = str(e).strip() or type(e).__name__
    return text.split("] ", 1)[-1][:200]


def _status_message(e) -> str:
    body = e.body if isinstance(getattr(e, "body", None), dict) else {}
    inner = body.get("error") if isinstance(body.get("error"), dict) else {}
    return str(body.get("message") or inner.get("message") or e.message)[:300]


def _retry_after(e) -> float | None:
    """A status error's Retry-After in seconds; None when absent or an HTTP date (then the
    backoff alone applies)."""
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return min(RETRY_AFTER_CAP_S, max(0.0, float(headers.get(name)) * scale))
        except (TypeError, ValueError):
            pass
    return None


def _response_format(kind: str, schema: dict) -> dict:
    if kind == "json_schema":  # OpenAI, vLLM, SGLang, llama.cpp's llama-server
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    return {"type": "json_object", "schema": schema}  # llama-cpp-python's server (and llama-server)


# ---------------------------------------------------------------------------------------------
# The engine


@dataclass(eq=False)
class Endpoint:
    """One server of `base_url` and what happened to it in this engine's runs (`OpenAIEngine.endpoints`)."""
    url: str
    client: object = None
    inflight: int = 0
    sent: int = 0                 # attempts started here
    answered: int = 0             # attempts that came back with a result (an error that is final included)
    failed: int = 0               # attempts that failed in a way worth retrying (429 included)
    throttled: int = 0            # of those, 429s
    in_a_row: int = 0             # failures since its last answer
    out: str = ""                 # why it is out of rotation; "" = in rotation
    paused_until: float = 0.0     # time.monotonic() before which it gets nothing new (Retry-After)
    format: str | None = None     # the response_format it takes, once known
    last_error: str = ""


@dataclass(eq=False)
class _Job:
    """One request through its attempts."""
    r: Request
    t0: float
    failures: int = 0             # failed attempts counted against `retries`
    attempts: int = 0
    live: dict = field(default_factory=dict)   # attempt id -> Endpoint, in flight
    queued: bool = False          # waiting for its next attempt
    avoid: set = field(default_factory=set)    # endpoints it failed on: others first
    done: bool = False
    error: str = ""


@dataclass
class _Failed:
    """An attempt worth retrying."""
    why: str
    refused: bool = False         # nothing listens there: the request was not sent
    throttled: bool = False       # 429
    retry_after: float | None = None


class OpenAIEngine(Engine):
    def __init__(self, server: Server, *, parallel: int, n_ctx: int, tokenizer_gguf: Path | None):
        import openai

        s = server
        found = _probe_all(s)
        up = {u: m for u, m in found.items() if isinstance(m, list)}
        listing = [m for m in up.values() if m]
        if s.model:
            for u, m in up.items():
                if m and s.model not in m:
                    raise ReproError(f"{s.section}.model_name={s.model!r}: {u} serves "
                                     f"{', '.join(m[:5])}; set it to one of those"
                                     + ("" if len(found) == 1 else " that every server of base_url serves"))
            model = s.model
        else:
            # The first model of the first answering endpoint that every answering endpoint lists:
            # mixing teachers would mix the data.
            model = next((x for x in (listing[0] if listing else []) if all(x in m for m in listing)), "")
            if listing and not model:
                raise ReproError(f"{s.section}.base_url={s.base_url}: the servers serve different models ("
                                 + "; ".join(f"{u}: {', '.join(m[:3])}" for u, m in up.items())
                                 + f"); set {s.section}.model_name to one they all serve, or list only those that do")
        if not model:
            raise ReproError(f"{s.section}.base_url={s.base_url}: the server lists no models; "
                             f"set {s.section}.model_name")
        self.openai, self.server, self.parallel, self.n_ctx = openai, s, parallel, n_ctx
        self.retries = s.retries
        self.endpoints = [Endpoint(u) for u in found]
        for ep in self.endpoints:
            if ep.url in up:
                ep.client = openai.OpenAI(base_url=ep.url, api_key=s.api_key or "none",
                                          timeout=s.timeout_s, max_retries=0)
            else:
                ep.out = f"did not answer at start ({found[ep.url]})"
                print(f"note: {s.section}.base_url: {ep.url} {ep.out}; going on with the other "
                      f"{len(up)}", file=sys.stderr)
        self.model_name = model
        self.threads = 0
        self.stats = Stats()
        self._vocab = load_vocab(tokenizer_gguf) if tokenizer_gguf else None
        self.tokenizer = Tokenizer(self._vocab) if self._vocab else None
        self._ids = itertools.count()
        self._rng = random.Random()

    def run(self, requests: Iterable[Request]) -> Iterator[Completion]:
        pending, done = iter(requests), queue.Queue()
        more, unanswered = True, 0
        waiting: list = []            # (monotonic time, tie, job): retries, and moved requests
        tie = itertools.count()
        t0, before = time.perf_counter(), self.stats.seconds

        def queue_again(job: _Job, delay: float) -> None:
            job.queued = True
            heapq.heappush(waiting, (time.monotonic() + delay, next(tie), job))

        def evict(ep: Endpoint, why: str) -> None:
            ep.out = f"answered {ep.answered}, then {why}"
            live = [e for e in self.endpoints if not e.out]
            print(f"note: {self.server.section}.base_url: {ep.url} is out of rotation: {ep.out}; "
                  f"{len(live)} left", file=sys.stderr)
            # What it has in flight goes elsewhere now, not after its timeout; if its own attempt
            # answers after all, the first answer counts.
            for job in [j for j in inflight_jobs if ep in j.live.values()]:
                if not job.done and not job.queued:
                    queue_again(job, 0.0)

        def finish(job: _Job, c: Completion) -> Completion:
            nonlocal unanswered
            job.done, unanswered = True, unanswered - 1
            inflight_jobs.discard(job)
            self.stats.prompt_tokens += c.prompt_tokens
            self.stats.completion_tokens += c.completion_tokens
            self.stats.errors += c.finish_reason == "error"
            # Wall time, the caller's included: the servers work on while the caller writes.
            self.stats.seconds = before + time.perf_counter() - t0
            return c

        def failed(job: _Job, why: str) -> Completion:
            return Completion(job.r.key, "", "error", 0, 0, time.perf_counter() - job.t0, error=why)

        inflight_jobs: set[_Job] = set()
        # One daemon thread per attempt in flight: a caller that stops early (Ctrl-C) is not held
        # up until the servers have answered them (a thread pool would be joined at exit).
        while True:
            now = time.monotonic()
            live = [e for e in self.endpoints if not e.out]
            if not live:
                # None left: what is not in flight fails now, what is in flight is waited for.
                gone = self._none_left()
                while waiting:
                    job = heapq.heappop(waiting)[2]
                    job.queued = False
                    if not job.done and not job.live:
                        why = f"{gone}; its last attempt: {job.error}" if job.error else f"not sent: {gone}"
                        yield finish(job, failed(job, why))
                for r in pending:
                    job, unanswered = _Job(r, time.perf_counter()), unanswered + 1
                    yield finish(job, failed(job, f"not sent: {gone}"))
                more = False
            while live:
                free = [e for e in live if e.inflight < self.parallel and e.paused_until <= now]
                if not free:
                    break
                job = None
                while waiting and waiting[0][0] <= now and job is None:
                    j = heapq.heappop(waiting)[2]
                    j.queued = False
                    job = None if j.done else j
                if job is None and more:
                    r = next(pending, None)
                    if r is None:
                        more = False
                    else:
                        job, unanswered = _Job(r, time.perf_counter()), unanswered + 1
                if job is None:
                    break
                ep = min(free, key=lambda e: (e in job.avoid, e.inflight, e.sent))
                self._start(ep, job, done)
                inflight_jobs.add(job)
            if not unanswered and not more:
                break
            wake = [waiting[0][0]] if waiting else []
            wake += [e.paused_until for e in live if e.paused_until > now]
            if not wake and not any(e.inflight for e in self.endpoints):
                raise AssertionError("openai engine: requests left, none in flight, none waiting")
            try:
                ep, job, aid, out = done.get(timeout=max(0.0, min(wake) - time.monotonic()) if wake else None)
            except queue.Empty:
                continue
            ep.inflight -= 1
            del job.live[aid]
            if isinstance(out, Completion):
                ep.answered += 1
                ep.in_a_row = 0
                if job.done or (out.finish_reason == "error" and (job.live or job.queued)):
                    continue  # answered already, or another attempt of it is under way
                yield finish(job, out)
                continue
            ep.failed += 1
            ep.throttled += out.throttled
            ep.last_error = out.why
            if out.retry_after is not None:
                ep.paused_until = max(ep.paused_until, time.monotonic() + out.retry_after)
            if not out.throttled:
                ep.in_a_row += 1
            if not ep.out and (out.refused or ep.in_a_row >= EVICT_AFTER):
                evict(ep, "refused connections" if out.refused else
                      f"{ep.in_a_row} failures in a row (the last: {out.why})")
            if not out.refused:  # a refused request was not sent: no answer of it was lost there
                job.error = out.why
            if job.done or job.live or job.queued:
                continue  # another attempt of it is under way
            job.avoid.add(ep)
            if out.refused:  # not sent: it does not count against the request's retries
                queue_again(job, 0.0)
                continue
            job.failures += 1
            if job.failures > self.retries:
                yield finish(job, failed(job, f"{out.why} (after {job.attempts} attempts)"))
            else:
                queue_again(job, backoff(job.failures, self._rng))

    def _none_left(self) -> str:
        s = self.server
        return (f"{s.section}.base_url={s.base_url}: no server left to send to ("
                + "; ".join(f"{e.url}: {e.out}" for e in self.endpoints) + ")")

    def _start(self, ep: Endpoint, job: _Job, done: queue.Queue) -> None:
        aid = next(self._ids)
        job.live[aid] = ep
        job.attempts += 1
        ep.inflight += 1
        ep.sent += 1
        threading.Thread(target=lambda: done.put((ep, job, aid, self._attempt(ep, job.r, job.t0))),
                         daemon=True).start()

    def _attempt(self, ep: Endpoint, r: Request, t0: float) -> Completion | _Failed:
        """Never raises: a failure is this attempt's result (its thread has no one to raise to)."""
        oa = self.openai
        try:
            return self._ask(ep, r, t0)
        except oa.APIConnectionError as e:  # timeouts included
            return _Failed(f"{type(e).__name__}: {_cause(e)}", refused=isinstance(_root(e), ConnectionRefusedError))
        except oa.APIStatusError as e:
            msg = _status_message(e)
            if e.status_code in RETRY_STATUS or e.status_code >= 500:
                return _Failed(f"HTTP {e.status_code}: {msg}", throttled=e.status_code == 429,
                               retry_after=_retry_after(e))
            if e.status_code == 400 and "context" in msg.lower() and ("length" in msg.lower() or "token" in msg.lower()):
                # final: the same prompt will not fit next time either
                return Completion(r.key, "", "prompt_too_long", 0, 0, time.perf_counter() - t0, error=msg)
            return Completion(r.key, "", "error", 0, 0, time.perf_counter() - t0, error=f"HTTP {e.status_code}: {msg}")
        except Exception as e:  # a malformed answer (not JSON, wrong shape), or our own slip
            return Completion(r.key, "", "error", 0, 0, time.perf_counter() - t0,
                              error=f"{type(e).__name__}: {str(e)[:200]}")

    def _ask(self, ep: Endpoint, r: Request, t0: float) -> Completion:
        def failed(why: str) -> Completion:
            return Completion(r.key, "", "error", 0, 0, time.perf_counter() - t0, error=why)

        client = ep.client
        kw = {"model": self.model_name, "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed}
        if r.max_tokens:
            kw["max_tokens"] = r.max_tokens
        if r.stop:
            kw["stop"] = r.stop
        if self.server.extra_body:
            kw["extra_body"] = self.server.extra_body
        if r.prefill:  # chat endpoints cannot start the answer: send the rendered text instead
            if self.tokenizer is None or (r.messages is not None and self.tokenizer.chat is None):
                return failed("a prefilled answer needs the model's chat template: set the "
                              "tokenizer GGUF (generate.teacher / evaluate.teacher) for the openai backend")
            text_in, _, stops = self.tokenizer.render(r)
            out = client.completions.create(prompt=text_in, **{**kw, "stop": list(r.stop) + stops or None})
            text = out.choices[0].text if out.choices else None
        elif r.messages is not None:
            out = self._chat(ep, r, kw)
            text = out.choices[0].message.content if out.choices else None
        else:
            out = client.completions.create(prompt=r.prompt, **kw)
            text = out.choices[0].text if out.choices else None
        if not out.choices:
            return failed("the server sent no choices")
        u = getattr(out, "usage", None)
        prompt_tokens = u.prompt_tokens if u else (len(self.tokenizer.prompt(r)[0]) if self.tokenizer else 0)
        completion_tokens = u.completion_tokens if u else (len(self.tokenizer.tokenize(text or "")) if self.tokenizer else 0)
        return Completion(r.key, text or "", out.choices[0].finish_reason or "unknown", prompt_tokens,
                          completion_tokens, time.perf_counter() - t0)

    def _chat(self, ep: Endpoint, r: Request, kw: dict):
        create = ep.client.chat.completions.create
        if r.json_schema is None:
            return create(messages=r.messages, **kw)
        if ep.format is None:
            # Servers differ, and each endpoint may be another kind: try the OpenAI form; if the
            # server rejects it, the other. A form is settled only once a request in it passed
            # (a 500 from a server in trouble must not settle it).
            try:
                out = create(messages=r.messages, response_format=_response_format("json_schema", r.json_schema), **kw)
                ep.format = "json_schema"
                return out
            except self.openai.APIStatusError as e:
                if e.status_code not in (400, 422, 500):
                    raise
            out = create(messages=r.messages, response_format=_response_format("json_object", r.json_schema), **kw)
            ep.format = ep.format or "json_object"
            return out
        return create(messages=r.messages, response_format=_response_format(ep.format, r.json_schema), **kw)

    def close(self) -> None:
        for ep in self.endpoints:
            if ep.client is not None:
                ep.client.close()
        if self._vocab is not None:
            self._vocab.close()
            self._vocab = None
