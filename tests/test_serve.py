"""`repro serve` (issue 22, "Existing engines, not ours"): the command lines built for vLLM and
SGLang with replicas and tensor parallelism (pure functions: nothing is launched, neither is
installed here), the one line for a missing engine, and real llama-cpp-python servers on loopback
with a tiny random-weight GGUF written here (a 115 KB llama: it loads in a second and answers
nonsense): the URLs printed, a completion answered, a clean stop with no process left."""

import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from repro import cli, serve
from repro.artifacts import ReproError

ROOT = Path(__file__).resolve().parent.parent
GGUF = "/models/t.gguf"


def write_tiny_llama(path: Path, vocab: int = 259, embd: int = 32, ff: int = 64) -> Path:
    """A one-block llama GGUF with random weights and a byte-fallback SentencePiece vocabulary
    (<unk>, <s>, </s> and the 256 bytes): llama.cpp loads it and can tokenize any text."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(256)
    w.add_embedding_length(embd)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(embd // 2)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(vocab - 3)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([2, 3, 3] + [6] * (vocab - 3))  # unknown, control, control, bytes
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)

    def t(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", t(vocab, embd))
    w.add_tensor("output_norm.weight", np.ones(embd, np.float32))
    w.add_tensor("output.weight", t(vocab, embd))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(embd, np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", t(embd, embd))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(embd, np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", t(ff, embd))
    w.add_tensor("blk.0.ffn_up.weight", t(ff, embd))
    w.add_tensor("blk.0.ffn_down.weight", t(embd, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def free_port(n: int = 1) -> int:
    """A port p with p..p+n-1 free on loopback (checked now; another process could take them)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n <= 65535 and all(_free(p + i) for i in range(1, n)):
            return p
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# ---------------------------------------------------------------------------------------------
# Command lines (pure)


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_vllm_command_lines_for_two_replicas_of_tensor_parallel_two():
    groups = serve.gpu_groups(["0", "1", "2", "3"], None, 2)
    assert groups == [("0", "1"), ("2", "3")]
    ls = serve.launches("vllm", GGUF, name="t", groups=groups, tensor_parallel=2, port=8100, n_ctx=4096, seed=7,
                        tokenizer="Org/T-Instruct", extra=["--gpu-memory-utilization", "0.8"])
    assert [x.env for x in ls] == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert [x.url for x in ls] == ["http://127.0.0.1:8100/v1", "http://127.0.0.1:8101/v1"]
    for x, port in zip(ls, (8100, 8101)):
        assert x.argv[:3] == ["vllm", "serve", GGUF]
        assert _value(x.argv, "--port") == str(port) and _value(x.argv, "--tensor-parallel-size") == "2"
        assert _value(x.argv, "--max-model-len") == "4096" and _value(x.argv, "--seed") == "7"
        assert _value(x.argv, "--served-model-name") == "t" and _value(x.argv, "--tokenizer") == "Org/T-Instruct"
        assert _value(x.argv, "--generation-config") == "vllm"  # greedy text not bent by generation_config.json
        assert x.argv[-2:] == ["--gpu-memory-utilization", "0.8"]


def test_sglang_command_lines_for_four_replicas_on_four_gpus():
    ls = serve.launches("sglang", "Org/T-Instruct", name="Org/T-Instruct", groups=serve.gpu_groups(list("0123"), 4, 1),
                        port=30000, revision="abc123")
    assert [x.env["CUDA_VISIBLE_DEVICES"] for x in ls] == ["0", "1", "2", "3"]
    assert [x.port for x in ls] == [30000, 30001, 30002, 30003]
    a = ls[0].argv
    assert a[:3] == [sys.executable, "-m", "sglang.launch_server"] and _value(a, "--model-path") == "Org/T-Instruct"
    assert _value(a, "--tp") == "1" and _value(a, "--revision") == "abc123"
    assert _value(a, "--sampling-defaults") == "openai" and "--tokenizer-path" not in a


def test_llama_command_line_and_a_public_host():
    ls = serve.launches("llama", GGUF, name="t", groups=[(), ()], host="0.0.0.0", port=9000, threads=3)
    a = ls[1].argv
    assert a[:3] == [sys.executable, "-m", "repro.serve"] and _value(a, "--model") == GGUF
    assert _value(a, "--port") == "9001" and _value(a, "--n_threads") == "3" and _value(a, "--model_alias") == "t"
    assert ls[1].env == {}  # no GPU: nothing pinned
    assert ls[1].url == f"http://{socket.gethostname()}:9001/v1" and ls[1].poll_url == "http://127.0.0.1:9001/v1"


def test_gpu_groups_refuse_more_than_the_gpus_hold():
    assert serve.gpu_groups([], None, 1) == [()] and serve.gpu_groups([], 3, 1) == [(), (), ()]
    assert serve.gpu_groups(list("01234567"), None, 4) == [tuple("0123"), tuple("4567")]
    with pytest.raises(ReproError, match="3 replica.* need 6 GPUs, and 4 are given"):
        serve.gpu_groups(list("0123"), 3, 2)
    with pytest.raises(ReproError, match="need 8 GPUs"):
        serve.gpu_groups(list("0123"), None, 8)


def test_model_args_pass_checkpoints_through_and_need_a_tokenizer_for_an_unknown_gguf(tmp_path):
    assert serve.model_args("vllm", "Qwen/Qwen2.5-Coder-7B-Instruct@v1") == ("Qwen/Qwen2.5-Coder-7B-Instruct", "", "v1")
    assert serve.original_of("embedded:qwen2.5-coder-0.5b-instruct-q4_k_m") == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert serve.original_of("hf://Qwen/Qwen2.5-Coder-7B-Instruct-GGUF/q.gguf") == "Qwen/Qwen2.5-Coder-7B-Instruct"
    gguf = write_tiny_llama(tmp_path / "tiny.gguf")
    with pytest.raises(ReproError, match="give --tokenizer ORG/NAME"):
        serve.model_args("vllm", str(gguf))
    assert serve.model_args("vllm", str(gguf), "Org/T") == (str(gguf), "Org/T", "")
    assert serve.model_args("sglang", str(gguf)) == (str(gguf), "", "")
    with pytest.raises(ReproError, match="transformers checkpoint, not a GGUF"):
        serve.model_args("llama", "Qwen/Qwen2.5-Coder-7B-Instruct")


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_a_missing_engine_is_one_line_naming_its_extra(engine, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == engine else real(name, *a))
    assert cli.main(["serve", "--engine", engine, "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: repro serve --engine {engine}: {engine} is not installed")
    assert f"pip install -e '.[{engine}]'" in err[0]


def test_engine_options_go_after_a_double_dash(capsys):
    assert cli.main(["serve", "--engine", "llama", "stray"]) == 2
    assert "options for the engine itself go after `--`" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Real llama-cpp-python servers on loopback


needs_server = pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None,
                                  reason="the `server` extra (llama-cpp-python's server) is not installed")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # a zombie holds nothing


def _start(*args):
    return subprocess.Popen([sys.executable, "-m", "repro.cli", "serve", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})


@needs_server
def test_two_llama_replicas_answer_on_the_urls_printed_and_stop_cleanly_on_sigterm(tmp_path):
    gguf = write_tiny_llama(tmp_path / "tiny.gguf")
    port = free_port(2)
    p = _start("--engine", "llama", "--model", str(gguf), "--port", str(port), "--replicas", "2",
               "--log-dir", str(tmp_path / "logs"), "--ready-timeout", "120", "--set", "generate.n_ctx=256")
    try:
        ready, _, _ = select.select([p.stdout], [], [], 150)
        assert ready, "no URL line within 150 s"
        line = p.stdout.readline().strip()
        urls = [f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{port + 1}/v1"]
        assert line == ",".join(urls), (line, p.poll())
        children = _children(p.pid)
        assert len(children) == 2
        for url in urls:
            with urllib.request.urlopen(f"{url}/models", timeout=10) as r:
                assert [m["id"] for m in json.loads(r.read())["data"]] == ["tiny"]  # the alias, not the path
            req = urllib.request.Request(f"{url}/completions", data=json.dumps(
                {"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 4, "temperature": 0}).encode(),
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                answer = json.loads(r.read())
            assert answer["choices"][0]["finish_reason"] in ("length", "stop")
            assert answer["usage"]["completion_tokens"] >= 1
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0
        err = p.stderr.read()
        assert "serve: stopped 2 server(s)" in err, err
        assert all(_gone(c) for c in children)
        for x in (port, port + 1):  # nothing listens there any more
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", x), timeout=5)
        assert (tmp_path / "logs" / f"llama-{port}.log").is_file()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@needs_server
def test_a_server_that_dies_before_it_answers_is_one_line_naming_its_log(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(100))  # a header llama.cpp refuses
    port = free_port()
    p = _start("--engine", "llama", "--model", str(bad), "--port", str(port), "--log-dir", str(tmp_path / "logs"),
               "--ready-timeout", "120")
    out, err = p.communicate(timeout=150)
    lines = err.strip().splitlines()
    assert p.returncode == 2 and out == "", err
    assert lines[-1].startswith(f"error: repro serve: the llama server on port {port} exited with status")
    assert str(tmp_path / "logs" / f"llama-{port}.log") in lines[-1]
    assert sum(ln.startswith("error:") for ln in lines) == 1


@needs_server
def test_a_busy_port_is_one_line_before_anything_starts(tmp_path):
    gguf = write_tiny_llama(tmp_path / "tiny.gguf")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = _start("--engine", "llama", "--model", str(gguf), "--port", str(port), "--log-dir", str(tmp_path / "l"))
        out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.strip().splitlines() == [err.strip()], err
    assert f"port {port} on 127.0.0.1 is not free" in err and not (tmp_path / "l").exists()


@needs_server
@pytest.mark.e2e
def test_the_profiles_teacher_is_served_when_no_model_is_given(tmp_path):
    port = free_port()
    p = _start("--profile", "smoke", "--port", str(port), "--log-dir", str(tmp_path / "logs"), "--ready-timeout", "300")
    try:
        ready, _, _ = select.select([p.stdout], [], [], 320)
        assert ready, "no URL line within 320 s"
        url = p.stdout.readline().strip()
        assert url == f"http://127.0.0.1:{port}/v1"
        req = urllib.request.Request(f"{url}/chat/completions", data=json.dumps(
            {"model": "qwen2.5-coder-0.5b-instruct-q4_k_m", "max_tokens": 8, "temperature": 0,
             "messages": [{"role": "user", "content": "Write a Python function that adds two numbers."}]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            answer = json.loads(r.read())
        assert answer["model"] == "qwen2.5-coder-0.5b-instruct-q4_k_m" and answer["choices"][0]["message"]["content"]
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
