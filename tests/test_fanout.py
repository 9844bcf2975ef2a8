"""The `openai` backend over several endpoints (issue 22): routing, our retry policy, eviction,
every key answered exactly once. Against `Stub`, a small OpenAI-compatible server of our own
making on loopback (bench/fanout.py times the same server)."""

import http.server
import json
import random
import re
import socket
import statistics
import threading
import time

import duckdb
import pyarrow as pa
import pytest
from builders import reply

from repro import generate
from repro.artifacts import ReproError
from repro.config import GenerateConfig
from repro.engine import Request, Server, open_engine, probe
from repro.engine import openai_backend as ob

pytest.importorskip("openai")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answer_to(prompt: str) -> str:
    """The stub's canned answer: derived from the prompt, so a test can check who got what."""
    return f"answer to: {prompt}"


class Stub:
    """An OpenAI-compatible server on a free loopback port: /v1/models lists `model`;
    /v1/completions and /v1/chat/completions answer `answer_to(prompt)` (the last message's
    content for chat; a JSON object {problem, solution} when a response_format is asked for)
    after `delay` seconds.

    Misbehaviours: `flaky=(p500, p429)` answers HTTP 500 or 429 at random (seeded, drawn in
    arrival order), 429 with `retry_after` as its Retry-After header if set; `throttle_first=k`
    answers the first k requests 429; `fail_first=k` answers the first k requests 500;
    `die_after=k` dies when request k+1 arrives: it and those in flight get their connection
    dropped unanswered, the listening socket is closed (later connections are refused);
    `json_schema=False` rejects response_format json_schema with 400 (as llama-cpp-python's
    server does), taking json_object. `log` holds (arrival time, path, prompt, outcome)."""

    def __init__(self, delay=0.0, *, flaky=(0.0, 0.0), seed=0, retry_after=None, throttle_first=0,
                 fail_first=0, die_after=None, json_schema=True, model="stub"):
        self.delay, self.flaky, self.rng = delay, flaky, random.Random(seed)
        self.retry_after, self.throttle_first, self.fail_first = retry_after, throttle_first, fail_first
        self.die_after, self.json_schema, self.model = die_after, json_schema, model
        self.lock, self.log, self.dead = threading.Lock(), [], False
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    reply(self, status=200, body={"object": "list", "data": [{"id": stub.model, "object": "model"}]})
                else:
                    reply(self, status=404, body={"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                fmt = (body.get("response_format") or {}).get("type")
                with stub.lock:
                    n = len(stub.log) + 1
                    x = stub.rng.random()
                    if stub.dead or (stub.die_after is not None and n > stub.die_after):
                        outcome = "dropped"
                    elif n <= stub.throttle_first or stub.flaky[0] <= x < sum(stub.flaky):
                        outcome = "429"
                    elif n <= stub.fail_first or x < stub.flaky[0]:
                        outcome = "500"
                    elif fmt == "json_schema" and not stub.json_schema:
                        outcome = "400"
                    else:
                        outcome = "ok"
                    stub.log.append((time.monotonic(), self.path, prompt, outcome))
                    if outcome == "dropped" and not stub.dead:
                        stub.dead = True
                        threading.Thread(target=stub.stop, daemon=True).start()
                time.sleep(stub.delay)
                if outcome == "dropped" or stub.dead:
                    with stub.lock:  # died while this one was in flight
                        stub.log[n - 1] = stub.log[n - 1][:3] + ("dropped",)
                    self.close_connection = True
                    return  # the connection closes unanswered
                if outcome == "429":
                    reply(self, status=429, body={"error": {"message": "too many requests"}},
                          headers={"Retry-After": stub.retry_after} if stub.retry_after is not None else {})
                elif outcome == "500":
                    reply(self, status=500, body={"error": {"message": "boom"}})
                elif outcome == "400":
                    reply(self, status=400, body={"error": {"message": "response_format json_schema is not supported"}})
                else:
                    text = answer_to(prompt)
                    if fmt:
                        text = json.dumps({"problem": text, "solution": "```python\npass\n```"})
                    choice = ({"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                              if chat else {"index": 0, "finish_reason": "stop", "text": text})
                    reply(self, status=200, body={"id": "x", "object": "chat.completion" if chat else "text_completion",
                                     "created": 0, "model": stub.model, "choices": [choice],
                                     "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                                               "total_tokens": len(prompt.split()) + len(text.split())}})


            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.request_queue_size = 64
        self.httpd.handle_error = lambda *a: None  # a client that timed out and left: no traceback
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._stopped = False

    def stop(self):
        """Shut down and close the listening socket: later connections are refused."""
        with self.lock:
            if self._stopped:
                return
            self._stopped = True
        self.httpd.shutdown()
        self.httpd.server_close()

    def outcomes(self, outcome="ok") -> int:
        return sum(1 for *_, o in self.log if o == outcome)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def chat(i: int) -> Request:
    return Request(f"k{i:03d}", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=8)


def run_all(urls, reqs, *, parallel=2, retries=2, timeout_s=30.0, **kw):
    """(results in the order yielded, the engine's endpoints, stats)."""
    with open_engine("openai", None, parallel=parallel,
                     server=Server(",".join(urls), retries=retries, timeout_s=timeout_s), **kw) as e:
        got = list(e.run(iter(reqs)))
        return got, e.endpoints, e.stats


def assert_each_key_once_and_right(got, reqs):
    keys = [c.key for c in got]
    assert sorted(keys) == sorted(r.key for r in reqs) and len(set(keys)) == len(keys)
    for c in got:
        i = int(c.key[1:])
        assert (c.finish_reason, c.text) == ("stop", answer_to(f"question {i}")), (c.key, c.error)


# ---------------------------------------------------------------------------------------------
# The Must-show


def test_three_servers_one_dies_one_flaky_every_key_exactly_once_and_the_run_finishes(capsys):
    reqs = [chat(i) for i in range(90)]
    with Stub(0.02) as healthy, Stub(0.02, die_after=8) as dying, \
            Stub(0.02, flaky=(0.2, 0.2), seed=7, retry_after="0.05") as flaky:
        urls = [healthy.url, dying.url, flaky.url]
        got, eps, stats = run_all(urls, reqs, parallel=3, retries=5)
    assert_each_key_once_and_right(got, reqs)
    assert stats.errors == 0
    by = {e.url: e for e in eps}
    # The dead one: out of rotation (refused, or reset and dropped connections in a row) after at
    # most the 8 answers it gave.
    assert re.fullmatch(r"answered \d, then (refused connections|5 failures in a row \(the last: "
                        r"APIConnectionError: .*\))", by[dying.url].out) and by[dying.url].answered <= 8
    assert dying.outcomes("ok") == by[dying.url].answered and dying.outcomes("dropped") >= 1
    assert by[dying.url].sent > len(dying.log)  # the attempt that was refused never reached it
    # The flaky one answered 500 and 429, each retried; the healthy one kept going.
    assert flaky.outcomes("500") >= 1 and flaky.outcomes("429") >= 1
    assert by[flaky.url].failed == flaky.outcomes("500") + flaky.outcomes("429")
    assert by[flaky.url].throttled == flaky.outcomes("429")
    assert by[flaky.url].answered == flaky.outcomes("ok") >= 1
    assert not by[healthy.url].out and by[healthy.url].answered >= 30
    # Every answer came from exactly one server's "ok", and each "ok" was yielded (none was late).
    assert healthy.outcomes() + dying.outcomes() + flaky.outcomes() == len(reqs)
    assert f"{dying.url} is out of rotation: answered " in capsys.readouterr().err


def test_requests_go_where_a_slot_is_free_and_spread_evenly():
    reqs = [chat(i) for i in range(24)]
    with Stub(0.05) as a, Stub(0.05) as b, Stub(0.05) as c:
        got, eps, _ = run_all([a.url, b.url, c.url], reqs, parallel=2)
    assert_each_key_once_and_right(got, reqs)
    assert [e.sent for e in eps] == [8, 8, 8] and not any(e.out for e in eps)


# ---------------------------------------------------------------------------------------------
# None left


def test_all_endpoints_dead_at_start_is_one_line_naming_the_setting():
    urls = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    setting = ",".join(urls)
    with pytest.raises(ReproError) as e:
        probe(Server(setting))
    msg = str(e.value)
    assert msg.startswith(f"generate.base_url={setting}: no OpenAI-compatible server answers at any of them (")
    assert "\n" not in msg and all(f"{u}: Connection refused" in msg for u in urls)


def test_one_endpoint_dead_at_start_is_a_note_and_the_others_answer(capsys):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    reqs = [chat(i) for i in range(6)]
    with Stub() as a:
        got, eps, _ = run_all([dead, a.url], reqs)
    assert_each_key_once_and_right(got, reqs)
    assert eps[0].out.startswith("did not answer at start (Connection refused") and eps[0].sent == 0
    assert f"note: generate.base_url: {dead} did not answer at start" in capsys.readouterr().err


def _seeds(path, n):
    rows = [{"seed_id": f"s{i}", "language": "python", "seed": f"def f{i}(x):\n    return x + {i}\n",
             "path": f"f{i}.py"} for i in range(n)]
    duckdb.from_arrow(pa.Table.from_pylist(rows)).write_parquet(str(path))
    return path


def test_all_endpoints_dying_mid_run_fail_the_stage_with_one_line_and_a_rerun_loses_nothing(tmp_path):
    n = 16
    seeds = _seeds(tmp_path / "seeds.parquet", n)
    store = [tmp_path / "pairs.jsonl", tmp_path / "rejected.jsonl"]
    cfg = GenerateConfig(backend="openai", teacher="", max_tokens=16, parallel=2, retries=2, timeout_s=30)
    with Stub(0.02, die_after=3) as a, Stub(0.02, die_after=3) as b:
        cfg.base_url = f"{a.url},{b.url}"
        with pytest.raises(ReproError) as e:
            generate.run(cfg, seeds, *store)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("generate: ") and "rerun the same command" in msg
    assert f"generate.base_url={a.url},{b.url}: no server left to send to ({a.url}: answered " in msg
    assert re.search(rf"; {b.url}: answered \d, then [^;]+\)", msg)
    keys = [json.loads(line)["key"] for p in store if p.exists() for line in p.read_text().splitlines()]
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert len(keys) + len(errors) == n and len(set(keys) | {e["key"] for e in errors}) == n
    assert any(e["error"].startswith("not sent: generate.base_url=") for e in errors)
    with Stub() as c, Stub() as d:  # other addresses: not part of an answer's key
        cfg.base_url = f"{c.url},{d.url}"
        stats = generate.run(cfg, seeds, *store)
    final = [json.loads(line) for p in store for line in p.read_text().splitlines()]
    assert len({r["key"] for r in final}) == len(final) == n
    assert (stats["resumed_from"], stats["generated"], stats["failed"]) == (len(keys), n - len(keys), 0)


def test_a_server_listed_twice_is_one_line():
    cfg = GenerateConfig(backend="openai", base_url="http://a/v1, http://a/v1")
    with pytest.raises(ReproError, match=r"^generate.base_url lists http://a/v1 twice"):
        generate.server(cfg)
    assert generate.server(GenerateConfig(base_url=" http://a/v1 ,http://b/v1,")).urls == ["http://a/v1", "http://b/v1"]


def test_servers_of_different_models_are_refused():
    with Stub(model="m1") as a, Stub(model="m2") as b:
        with pytest.raises(ReproError, match=r"the servers serve different models .*set generate.model_name"):
            run_all([a.url, b.url], [chat(0)])


# ---------------------------------------------------------------------------------------------
# The retry policy


def test_backoff_is_full_jitter_under_an_exponential_bound():
    rng = random.Random(0)
    for failures in range(1, 10):
        bound = min(ob.BACKOFF_CAP_S, ob.BACKOFF_BASE_S * 2 ** (failures - 1))
        waits = [ob.backoff(failures, rng) for _ in range(4000)]
        assert 0 <= min(waits) < 0.05 * bound and 0.95 * bound < max(waits) <= bound
        assert abs(statistics.mean(waits) - bound / 2) < 0.05 * bound


def test_500s_are_retried_after_the_backoff_then_given_up_after_retries_more_attempts():
    with Stub(fail_first=100) as s:
        got, eps, stats = run_all([s.url], [chat(0)], retries=2)
    (c,) = got
    assert c.finish_reason == "error" and c.error == "HTTP 500: boom (after 3 attempts)"
    assert len(s.log) == 3 and stats.errors == 1 and not eps[0].out  # 3 in a row: still in rotation
    gaps = [b[0] - a[0] for a, b in zip(s.log, s.log[1:])]
    assert gaps[0] <= ob.BACKOFF_BASE_S + 0.3 and gaps[1] <= 2 * ob.BACKOFF_BASE_S + 0.3


def test_a_server_failing_in_a_row_is_taken_out_and_its_requests_go_elsewhere():
    reqs = [chat(i) for i in range(20)]
    with Stub(0.02) as good, Stub(fail_first=10**6) as broken:
        got, eps, _ = run_all([broken.url, good.url], reqs, parallel=2, retries=3)
    assert_each_key_once_and_right(got, reqs)
    assert eps[0].out == f"answered 0, then {ob.EVICT_AFTER} failures in a row (the last: HTTP 500: boom)"
    # At most parallel - 1 more were in flight there when it went out; none was sent after.
    assert ob.EVICT_AFTER <= len(broken.log) == eps[0].failed <= ob.EVICT_AFTER + 1


def test_429_retry_after_is_honoured():
    with Stub(throttle_first=1, retry_after="1") as s:
        got, eps, _ = run_all([s.url], [chat(0)], retries=1)
    assert_each_key_once_and_right(got, [chat(0)])
    (t0, *_), (t1, *_) = s.log
    assert t1 - t0 >= 1.0 and eps[0].throttled == 1 and eps[0].in_a_row == 0


def test_429_without_retry_after_is_retried_and_does_not_count_towards_eviction(monkeypatch):
    monkeypatch.setattr(ob, "BACKOFF_BASE_S", 0.01)  # 6 backoffs at the real base take ~15 s
    with Stub(throttle_first=ob.EVICT_AFTER + 1) as s:
        got, eps, _ = run_all([s.url], [chat(0)], retries=ob.EVICT_AFTER + 1)
    assert_each_key_once_and_right(got, [chat(0)])
    assert not eps[0].out and eps[0].throttled == ob.EVICT_AFTER + 1 and len(s.log) == ob.EVICT_AFTER + 2


def test_a_request_that_times_out_is_retried_on_another_server():
    reqs = [chat(i) for i in range(4)]
    with Stub(3.0) as slow, Stub(0.02) as fast:
        t = time.monotonic()
        got, eps, _ = run_all([slow.url, fast.url], reqs, parallel=2, timeout_s=0.5)
        took = time.monotonic() - t
    assert_each_key_once_and_right(got, reqs)
    assert eps[0].failed == 2 and eps[0].answered == 0 and "Timeout" in eps[0].last_error
    assert fast.outcomes() == 4 and took < 3.0  # not waiting out the slow server


# ---------------------------------------------------------------------------------------------
# Structured answers and prefills, per endpoint


def test_each_endpoint_settles_its_own_response_format():
    schema = generate.ANSWER_SCHEMA
    reqs = [Request(f"k{i:03d}", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=8,
                    json_schema=schema) for i in range(8)]
    with Stub(0.02) as openai_like, Stub(0.02, json_schema=False) as llama_cpp_like:
        got, eps, _ = run_all([openai_like.url, llama_cpp_like.url], reqs, parallel=2)
    assert sorted(c.key for c in got) == [r.key for r in reqs]
    for c in got:
        assert c.finish_reason == "stop" and generate.parse_json(c.text)[0] == answer_to(f"question {int(c.key[1:])}")
    assert [e.format for e in eps] == ["json_schema", "json_object"]
    assert openai_like.outcomes() >= 1 and llama_cpp_like.outcomes() >= 1 and llama_cpp_like.outcomes("400") >= 1


def test_prefilled_requests_are_rendered_and_sent_as_completions_to_every_endpoint():
    from repro import models

    gguf = models.resolve("embedded:qwen2.5-coder-0.5b-instruct-q4_k_m")
    reqs = [Request(f"k{i:03d}", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=8,
                    prefill="```python\n") for i in range(6)]
    with Stub(0.02) as a, Stub(0.02) as b:
        with open_engine("openai", gguf, parallel=2, server=Server(f"{a.url},{b.url}")) as e:
            got = list(e.run(iter(reqs)))
    assert sorted(c.key for c in got) == [r.key for r in reqs] and all(c.finish_reason == "stop" for c in got)
    for s in (a, b):
        assert s.log and all(path.endswith("/completions") and not path.endswith("chat/completions")
                             and prompt.endswith("<|im_start|>assistant\n```python\n") for _, path, prompt, _ in s.log)
