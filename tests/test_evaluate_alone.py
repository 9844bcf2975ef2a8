"""`repro evaluate --model SPEC` (one model outside a run: a transformers checkpoint, an
OpenAI-compatible server) and `repro evaluate --samples FILE` (an EvalPlus samples file)."""

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from builders import reply
from repro.eval import evalplus_data

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["evaluate.benchmarks=humaneval", "evaluate.limit=2", "evaluate.max_tokens=8", "evaluate.multilingual=",
         "evaluate.parallel=2", "export.quant=q8_0"]


def repro(*args, env=None):
    import os
    return subprocess.run([sys.executable, "-m", "repro.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def sets(items):
    return [x for s in items for x in ("--set", s)]


def test_a_samples_file_is_judged_with_base_and_plus_tests(tmp_path):
    he = evalplus_data.load("humaneval")
    ids = list(he.problems)[:3]
    rows = [{"task_id": ids[0], "solution": he.problems[ids[0]]["prompt"] + he.problems[ids[0]]["canonical_solution"]},
            {"task_id": ids[1], "completion": "    return None\n"},
            {"task_id": ids[2], "solution": "def broken(:\n"}]
    f = tmp_path / "samples.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))  # no newline at the end, as people write them
    r = repro("evaluate", "--samples", str(f))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"humaneval {he.version}: 3 of {len(he.problems)} tasks, pass@1 33.3%" in r.stdout
    ev = json.loads((tmp_path / "samples_eval_results.json").read_text())
    assert [ev["eval"][t][0]["base_status"] for t in ids] == ["pass", "fail", "fail"]


@pytest.mark.parametrize("text, words", [
    ('{"task_id": "HumanEval/0", "solution": "x"}\n{"task_id": "Mbpp/2", "solution": "y"}\n', "split the file"),
    ('{"task_id": "HumanEval/0"}\n', "line 1: each line must be a JSON object with task_id and solution"),
    ('not json\n', "line 1"),
    ('', "no samples"),
    ('{"task_id": "HumanEval/999", "solution": "x"}\n', "1 task ids are not in humaneval"),
])
def test_a_bad_samples_file_is_one_line(tmp_path, text, words):
    f = tmp_path / "s.jsonl"
    f.write_text(text)
    r = repro("evaluate", "--samples", str(f))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    r = repro("evaluate", "--samples", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_a_checkpoint_is_converted_once_and_evaluated(tmp_path, hf_student):
    student = hf_student
    env = {"REPRO_CACHE": str(tmp_path / "cache")}
    args = ["evaluate", "--model", str(student), "--run-dir", str(tmp_path / "out"), *sets(SMALL)]
    r = repro(*args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "eval" / "results.json").read_text())
    assert res["spec"] == str(student) and res["label"] == "student"
    m = res["models"]["student"]
    assert m["prompt_style"] == "completion" and m["humaneval"]["n"] == 2 and m["generated"] == 2
    [gguf] = (tmp_path / "cache" / "converted").glob("*.gguf")
    assert gguf.name.endswith("-q8_0.gguf") and m["sha256"]
    assert "student humaneval: 2 of 164 problems, pass@1" in r.stderr
    mtime = gguf.stat().st_mtime_ns
    r = repro(*args, env=env)
    assert r.returncode == 0 and gguf.stat().st_mtime_ns == mtime  # not converted again


class _Completions(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that answers every completion with `return 1`."""
    prompts: list = []

    def do_GET(self):
        reply(self, {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "t"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.prompts.append(body.get("prompt"))
        reply(self, {"id": "c", "object": "text_completion", "created": 0, "model": "fake",
                    "choices": [{"index": 0, "text": "    return 1\n", "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}})

    def log_message(self, *args):
        pass


def test_an_openai_compatible_server_is_evaluated_with_completion_prompts(tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Completions)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"openai:http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        r = repro("evaluate", "--model", url, "--run-dir", str(tmp_path / "out"), *sets(SMALL))
        assert r.returncode == 0, r.stderr[-3000:]
        res = json.loads((tmp_path / "out" / "eval" / "results.json").read_text())
        [m] = res["models"].values()
        assert m["server"] == url.removeprefix("openai:") and m["humaneval"]["n"] == 2
        he = evalplus_data.load("humaneval")
        asked = {he.problems[t]["prompt"] for t in res["benchmarks"]["humaneval"]["task_ids"]}
        assert sorted(_Completions.prompts) == sorted(asked) and len(asked) == 2
        r = repro("evaluate", "--model", url, "--style", "chat", "--run-dir", str(tmp_path / "o2"), *sets(SMALL))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--style completion" in r.stderr
    finally:
        srv.shutdown()


def test_model_and_samples_together_and_a_bad_endpoint_are_one_line(tmp_path):
    r = repro("evaluate", "--model", "x.gguf", "--samples", "s.jsonl")
    assert r.returncode == 2 and "not both" in r.stderr
    r = repro("evaluate", "--model", "openai:localhost:8000", "--run-dir", str(tmp_path / "o"))
    assert r.returncode == 2 and "expected openai:http://host:port/v1" in r.stderr
