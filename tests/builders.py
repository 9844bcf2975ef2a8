"""Builders that several test files use: small files and rows in the shapes the stages read.
A test file imports these, never another test file (whose tests would be collected twice)."""

import base64
import re
import sysconfig
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

# ---------------------------------------------------------------------------------------------
# GGUF files that are not models (test_export, test_bad_input)


def write_gguf(path: Path, general_type: str = "model", tensors: int = 2, side: int = 8) -> Path:
    """A small valid GGUF file of `general_type` with `tensors` side x side float32 tensors
    (tests/test_bad_input.py damages one)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(general_type)
    w.add_token_list(["<s>", "a", "b"])  # an array of strings, as a vocabulary is
    w.add_token_scores([0.0, -1.0, -2.0])
    for i in range(tensors):
        w.add_tensor(f"t{i}", np.arange(side * side, dtype=np.float32).reshape(side, side))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------------------------------------
# Small HTTP servers on loopback (test_bad_input, test_evaluate_alone, test_fanout)


def reply(handler, body, status: int = 200, headers: dict | None = None) -> None:
    """Answer a request of an http.server handler with `body` as JSON: a dict/list is encoded, a
    str sent as it is (a test may send what is not JSON)."""
    import json

    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, str(v))
    handler.end_headers()
    handler.wfile.write(data)


# ---------------------------------------------------------------------------------------------
# A transformers student checkpoint that llama.cpp's converter reads (test_hf_student)


def write_hf_student(out: Path) -> Path:
    """A two-layer Gemma-3 checkpoint folder with random weights and a small SentencePiece
    tokenizer trained here (tokenizer.model, which llama.cpp's converter reads, beside the
    transformers files): a Hugging Face student in miniature, made without a download."""
    import io
    import json

    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    out.mkdir(parents=True, exist_ok=True)
    text = ("def add(x, y):\n    return x + y\n\nWrite a function that reverses a string.\n"
            "def reverse(s):\n    return s[::-1]\nfrom typing import List\n") * 50
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=buf, vocab_size=320, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, minloglevel=2)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "add_bos_token": True}))
    tok = AutoTokenizer.from_pretrained(out)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
                           sliding_window=64, initializer_range=0.5, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    Gemma3ForCausalLM(cfg).save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------
# seeds.parquet (test_generate, test_crash)


def seeds_file(path, n, snippet=lambda i: f"x{i} = {i}"):
    rows = [{"seed_id": f"s{i}", "language": "python", "seed": snippet(i), "path": f"f{i}.py"} for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    duckdb.from_arrow(pa.Table.from_pylist(rows)).write_parquet(str(path))
    return path


# ---------------------------------------------------------------------------------------------
# clean.parquet with clean's own columns (test_validate, test_crash)

VALIDATE_PROBLEM = ("Write a Python function `add(a, b)` that returns the sum of the two integers a and b. "
           "For example, add(2, 3) returns 5 and add(-1, 1) returns 0.")


def validate_clean_file(path, solutions: dict[str, tuple[str, str]]):
    """A clean.parquet with clean's own columns: seed_id -> (language, solution)."""
    rows = [{"seed_id": k, "language": lang, "path": f"{k}.py", "seed": "x = 1", "problem": VALIDATE_PROBLEM,
             "solution": sol, "syntax": None, "syntax_ok": None, "humaneval_similarity": 0.1}
            for k, (lang, sol) in solutions.items()]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------------------------------------
# Pairs of clean text from the standard library (test_clean, test_crash)


def stdlib_pairs(n):
    """Clean text: docstring-like prose and code from the Python standard library."""
    out, lib = [], Path(sysconfig.get_paths()["stdlib"])
    for f in ("textwrap.py", "fractions.py", "heapq.py", "bisect.py", "shlex.py", "statistics.py", "difflib.py"):
        lines = (lib / f).read_text(encoding="utf-8").splitlines()
        for k in range(0, len(lines) - 40, 37):
            out.append({"seed_id": f"{f}:{k}", "seed": "\n".join(lines[k:k + 5]),
                        "problem": "Write a program like this.\n" + "\n".join(lines[k + 5:k + 20]),
                        "solution": "```python\n" + "\n".join(lines[k + 20:k + 40]) + "\n```"})
            if len(out) == n:
                return out
    return out


# ---------------------------------------------------------------------------------------------
# Training pairs and their clean.parquet (test_train, test_crash)

ROWS = [{"problem": "write a function that adds two numbers", "solution": "def add ( x , y ) : return x + y"},
        {"problem": "reverse the string s", "solution": "return s [ :: -1 ]"}]
MORE_ROWS = ROWS + [
    {"problem": "write a function that returns the string s", "solution": "def f ( s ) : return s"},
    {"problem": "add the two numbers x and y", "solution": "return x + y"},
    {"problem": "reverse s", "solution": "def reverse ( s ) : return s [ :: -1 ]"},
    {"problem": "write a function of x", "solution": "def f ( x ) : return x"},
    {"problem": "return two numbers", "solution": "return x , y"},
]


def write_clean(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"problem": [r["problem"] for r in rows], "solution": [r["solution"] for r in rows]},
                            schema=pa.schema([("problem", pa.string()), ("solution", pa.string())])), path)
    return path


# ---------------------------------------------------------------------------------------------
# What a report holds (test_report, test_e2e)

SECTIONS = ["Summary", "Pipeline", "Seeds and generated problems", "Lengths", "Categories",
            "Similarity to HumanEval", "Data diversity", "OSS-Instruct against Self-Instruct", "Training",
            "Beyond the paper: validation and Evol-Instruct", "pass@1: HumanEval(+) and MBPP(+)",
            "Other languages and data science: MultiPL-E and DS-1000", "Environment"]
FIGURES = ["wall_time", "lengths", "categories", "similarity", "loss", "pass_at_1"]


def report_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
