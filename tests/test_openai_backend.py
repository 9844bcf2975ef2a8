"""The `openai` backend against real servers on loopback: llama-cpp-python's own server with the
small teacher (started through repro.serve, which applies our AMX fix), and a tiny stub that
answers garbage."""

import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import duckdb
import pyarrow as pa
import pytest

from repro import generate, models
from repro.artifacts import ReproError
from repro.config import GenerateConfig
from repro.engine import Request, Server, open_engine, probe

pytest.importorskip("openai")
pytest.importorskip("uvicorn")

TEACHER = "embedded:qwen2.5-coder-0.5b-instruct-q4_k_m"
N_CTX = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m repro.serve` on a free loopback port, one llama.cpp thread."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "repro.serve", "--model", TEACHER, "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", str(N_CTX), "--n_threads", "1", "--n_threads_batch", "1",
             "--verbose", "False"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2).read()
                return
            except OSError:
                time.sleep(0.3)
        self.kill()
        raise RuntimeError("the server did not answer within 120 s")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def server():
    s = LlamaServer()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def teacher():
    return models.resolve(TEACHER)


def _run(backend, gguf, reqs, **kw):
    with open_engine(backend, gguf, n_ctx=N_CTX, threads=1, **kw) as e:
        return {c.key: c for c in e.run(reqs)}, e.stats


QUESTIONS = ["Write a Python function that reverses a string.", "What does `git rebase` do? One sentence.",
             "Name three sorting algorithms.", "Write a SQL query that counts the rows of table t."]


@pytest.mark.e2e
def test_greedy_answers_equal_the_in_process_reference_with_concurrent_requests(server, teacher):
    reqs = [Request(f"q{i}", messages=[{"role": "system", "content": "You are a helpful coder."},
                                       {"role": "user", "content": q}], max_tokens=20, seed=i)
            for i, q in enumerate(QUESTIONS)]
    reqs.append(Request("long", messages=[{"role": "user", "content": "word " * 1500}], max_tokens=8))
    ref, _ = _run("llama", teacher, reqs)
    got, stats = _run("openai", None, reqs, parallel=3, server=Server(server.url))
    for r in reqs:
        a, b = got[r.key], ref[r.key]
        assert (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens) == \
            (b.text, b.finish_reason, b.prompt_tokens, b.completion_tokens), r.key
    assert got["long"].finish_reason == "prompt_too_long" and "context" in got["long"].error
    assert stats.completion_tokens == sum(c.completion_tokens for c in ref.values()) and stats.errors == 0
    # Three in flight against a server that answers one at a time: later ones waited in its queue.
    answered = [got[f"q{i}"].seconds for i in range(len(QUESTIONS))]
    assert max(answered) > 2 * min(answered)


@pytest.mark.e2e
def test_a_json_schema_is_enforced_by_the_server_as_by_the_grammar_in_process(server, teacher):
    msgs = [{"role": "user", "content": "Invent a tiny coding exercise." + generate.JSON_INSTRUCTION}]
    reqs = [Request("j", messages=msgs, max_tokens=40, json_schema=generate.ANSWER_SCHEMA)]
    ref, _ = _run("llama", teacher, reqs)
    got, _ = _run("openai", None, reqs, server=Server(server.url))
    assert got["j"].text == ref["j"].text and re.match(r'\{\s*"problem"', got["j"].text)


def _seeds(path, n):
    rows = [{"seed_id": f"s{i}", "language": "python", "seed": f"def f{i}(x):\n    return x + {i}\n",
             "path": f"f{i}.py"} for i in range(n)]
    duckdb.from_arrow(pa.Table.from_pylist(rows)).write_parquet(str(path))
    return path


class KillAfter:
    """A progress display that kills the server once k answers are stored."""

    def __init__(self, srv, k):
        self.srv, self.k, self.n = srv, k, 0

    def add_task(self, *a, **kw):
        return 0

    def update(self, task, advance=0, **kw):
        self.n += advance
        if self.n == self.k:
            self.srv.kill()


@pytest.mark.e2e
def test_a_server_that_dies_mid_run_loses_nothing_after_a_rerun(tmp_path):
    n = 6
    seeds = _seeds(tmp_path / "seeds.parquet", n)
    store = [tmp_path / "pairs.jsonl", tmp_path / "rejected.jsonl"]
    cfg = GenerateConfig(backend="openai", max_tokens=12, parallel=2, retries=1, timeout_s=60)
    first = LlamaServer()
    try:
        cfg.base_url = first.url
        with pytest.raises(ReproError, match=rf"generate: \d of {n} requests failed .*rerun the same command"):
            generate.run(cfg, seeds, *store, progress=KillAfter(first, 2))
    finally:
        first.kill()
    keys = [json.loads(line)["key"] for p in store if p.exists() for line in p.read_text().splitlines()]
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert len(keys) >= 2 and len(keys) + len(errors) == n and not set(keys) & {e["key"] for e in errors}
    assert any("not sent" in e["error"] for e in errors)  # once the server was gone, the rest failed fast
    second = LlamaServer()  # another port: the address is not part of an answer's key
    try:
        cfg.base_url = second.url
        stats = generate.run(cfg, seeds, *store)
    finally:
        second.kill()
    final = [json.loads(line) for p in store for line in p.read_text().splitlines()]
    assert len({r["key"] for r in final}) == len(final) == n
    assert (stats["resumed_from"], stats["generated"], stats["failed"]) == (len(keys), n - len(keys), 0)
    assert all(r["model"].startswith("openai:") and r["backend"] == "openai" for r in final)


def test_an_unreachable_server_is_one_line_naming_the_setting():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ReproError, match=rf"generate.base_url={url}: no OpenAI-compatible server answers"):
        probe(Server(url))


class _Garbage(http.server.BaseHTTPRequestHandler):
    """Lists a model, then answers every chat request with garbage or an empty message."""

    def do_GET(self):
        self._send(200, json.dumps({"object": "list", "data": [{"id": "stub", "object": "model"}]}))

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["messages"][-1]["content"] == "garbage":
            self._send(200, "<html>surprise</html>")
        else:
            self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "stub",
                                        "choices": [{"index": 0, "finish_reason": "stop",
                                                     "message": {"role": "assistant", "content": None}}]}))

    def _send(self, status, text):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *args):
        pass


def test_garbage_and_empty_answers_are_counted_not_raised():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        reqs = [Request(k, messages=[{"role": "user", "content": k}], max_tokens=8) for k in ("garbage", "empty")]
        got, stats = _run("openai", None, reqs, parallel=2,
                          server=Server(f"http://127.0.0.1:{httpd.server_port}/v1", retries=0))
    finally:
        httpd.shutdown()
    assert got["garbage"].finish_reason == "error" and got["garbage"].error
    assert (got["empty"].finish_reason, got["empty"].text) == ("stop", "")
    assert generate.judge(got["empty"].text, "stop", "") == "empty answer"
    assert stats.errors == 1
