import os

# As the CLI does, before torch is imported: passive OpenMP waiting (10x faster on a loaded CPU).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU, Triton kernels (tests/test_kernels.py) run on the CPU in Triton's interpreter,
# which triton.jit only picks when TRITON_INTERPRET is set before it decorates them, so here,
# before anything imports `kernels`. An NVIDIA device node is a check that needs no torch import;
# where one is present the same tests run the compiled kernels on CUDA.
if not any(os.path.exists(f"/dev/nvidia{i}") for i in range(16)) or \
        os.environ.get("CUDA_VISIBLE_DEVICES") == "":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # The modules with the smoke run first, whole: under `make test`'s two workers (--dist loadscope
    # --no-loadscope-reorder) it is the longest path (~4 min), so it starts at once on one worker
    # while the other takes the unit tests. The sort is stable: every other order is kept.
    smoke = {item.module for item in items if "quick" in item.keywords}
    items.sort(key=lambda item: item.module not in smoke)
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def tiny_tokenizer():
    """A word-level tokenizer built in memory (no download), with BOS/EOS/PAD."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ("you are a careful coding assistant who answers every programming request with accurate "
             "working code . @@ instruction response write function that adds two numbers def add "
             "( x , y ) : return + reverse string s [ :: -1 ] the of to in").split()
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A two-layer Gemma-3 built from a config: the student's architecture in miniature."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                           max_position_embeddings=256, sliding_window=64,
                           initializer_range=0.5)  # frozen tied embeddings must allow confident logits
    return Gemma3ForCausalLM(cfg).float()


@pytest.fixture
def student_dir(tmp_path, tiny_model, tiny_tokenizer):
    """The tiny model saved as a student checkpoint (train.student=<dir>)."""
    d = tmp_path / "student"
    tiny_model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def hf_student(tmp_path_factory):
    """A Hugging Face student checkpoint folder that llama.cpp's converter reads (tests/builders.py)."""
    from builders import write_hf_student

    return write_hf_student(tmp_path_factory.mktemp("hf") / "student")


@pytest.fixture
def no_benchmark_files(tmp_path, monkeypatch):
    """data/benchmarks/ and the cache as empty folders (a user who deleted the carried files);
    returns the stand-in for data/benchmarks/, which a test may fill."""
    from repro.data import benchmarks

    d = tmp_path / "no-benchmarks"
    d.mkdir()
    monkeypatch.setattr(benchmarks, "BENCH_DIR", d)
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "cache"))
    return d


@pytest.fixture
def file_server(tmp_path, monkeypatch):
    """A loopback HTTP server standing in for the download URLs: put files under the returned
    folder and call `serve(key, name)` to point FILES[key].url at one of them."""
    import dataclasses
    import functools
    import http.server
    import threading

    from repro.data import benchmarks

    served = tmp_path / "served"
    served.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(served))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"

    def serve(key: str, name: str) -> None:
        files = dict(benchmarks.FILES)
        files[key] = dataclasses.replace(files[key], url=f"{base}/{name}")
        monkeypatch.setattr(benchmarks, "FILES", files)

    try:
        yield served, serve
    finally:
        srv.shutdown()
