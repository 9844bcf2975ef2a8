"""The train and export stages' GPU paths, each driven alone on random weights.

    python bench/gpu/stages.py student --tokenizer QWEN_TOKENIZER_DIR --out DIR [--hidden 256 --layers 2]
    python bench/gpu/stages.py train --student DIR --backend peft|triton|unsloth --out RUN_DIR [--steps 6]
    python bench/gpu/stages.py export --student DIR --adapter RUN_DIR/adapter --out EXPORT_DIR

- student: a Qwen2-architecture transformers checkpoint with random weights (fp32, small widths,
  Qwen2.5's full 151,936-token vocabulary) and Qwen2.5's own tokenizer files, so that llama.cpp's
  converter recognises its pre-tokenizer: a `train.student` given as a checkpoint folder.
- train: `repro.train.run` itself (the stage's function: tokenizer, training template, LoRA on
  the chosen backend, the loop, the greedy-agreement check, the adapter saved) on a few pairs,
  device auto (the GPU where there is one). Unsloth is tried only where it imports.
- export: `repro.export.run` itself: the base converted and quantized, the adapter merged,
  converted (llama.cpp's converters, carried) and quantized to Q4_K_M, the result loaded by
  llama.cpp with every layer offloaded (n_gpu_layers=-1) for its load check and round trip, the
  LoRA GGUF; then the exported GGUF decoded by the batched engine on the GPU.
Figures go to $GPU_BENCH_RESULTS (bench/gpu/common.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, llama_build, record  # noqa: E402

PAIRS = [
    ("Write a function that adds two numbers.", "def add(x, y):\n    return x + y"),
    ("Reverse the string s.", "def reverse(s):\n    return s[::-1]"),
    ("Return the largest element of a list.", "def largest(xs):\n    return max(xs)"),
    ("Count the vowels in a string.", "def vowels(s):\n    return sum(c in 'aeiou' for c in s.lower())"),
    ("Check whether a number is even.", "def is_even(n):\n    return n % 2 == 0"),
    ("Square every number of a list.", "def squares(xs):\n    return [x * x for x in xs]"),
    ("Join words with dashes.", "def dashed(words):\n    return '-'.join(words)"),
    ("Return the factorial of n.", "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)"),
]


def cmd_student(a) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(a.tokenizer).iterdir():
        shutil.copy2(f, out / f.name)
    tok = AutoTokenizer.from_pretrained(out)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=a.hidden, intermediate_size=2 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64, num_key_value_heads=2,
                      max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with Timer() as t:
        model = Qwen2ForCausalLM(cfg)
        model.save_pretrained(out, safe_serialization=True)
    record("student", path=str(out), hidden=a.hidden, layers=a.layers, vocab=cfg.vocab_size,
           tokenizer=type(tok).__name__, seconds=t.seconds, parameters=sum(p.numel() for p in model.parameters()))


def duckdb_stand_in() -> str | None:
    """Where duckdb does not import (pack.sh carries its wheel; a Python it does not fit): a
    module answering the one query repro.train.run makes, `SELECT problem, solution FROM
    read_parquet('<path>')`, through pyarrow. Returns a note saying so, else None."""
    if importlib.util.find_spec("duckdb") is not None:
        return None
    import re
    import types

    import pyarrow.parquet as pq

    def sql(query: str):
        m = re.fullmatch(r"SELECT problem, solution FROM read_parquet\('((?:[^']|'')*)'\)", query.strip())
        if not m:
            raise NotImplementedError(f"the duckdb stand-in answers one query only, not {query!r}")
        t = pq.read_table(m.group(1).replace("''", "'"), columns=["problem", "solution"])
        rows = list(zip(t.column("problem").to_pylist(), t.column("solution").to_pylist()))
        return types.SimpleNamespace(fetchall=lambda: rows)

    sys.modules["duckdb"] = types.SimpleNamespace(sql=sql)
    return "duckdb did not import: clean.parquet read by a pyarrow stand-in (bench/gpu/stages.py)"


def cmd_train(a) -> None:
    if a.backend == "unsloth" and importlib.util.find_spec("unsloth") is None:
        record("train_stage", backend=a.backend, skipped="unsloth is not importable on this machine")
        return
    stand_in = duckdb_stand_in()
    if a.backend == "unsloth":
        import unsloth  # noqa: F401  # first, as Unsloth requires
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from repro import train
    from repro.config import TrainConfig

    run = Path(a.out)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    clean = run / "clean.parquet"
    rows = PAIRS * 2
    pq.write_table(pa.table({"problem": [p for p, _ in rows], "solution": [s for _, s in rows]}), clean)
    cfg = TrainConfig(student=a.student, backend=a.backend, device=a.device, max_steps=a.steps, batch_size=4,
                      micro_batch=4, max_len=256, lr=1e-3, warmup_steps=1, lora_r=8, lora_alpha=16,
                      save_every=0, seed=0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with Timer() as t:
        stats = train.run(cfg, clean, run / "adapter", run / "train_log.jsonl")
    log = [json.loads(l) for l in (run / "train_log.jsonl").read_text().splitlines() if l.strip()]
    record("train_stage", backend=a.backend, device=stats["device"], steps=stats["steps"],
           first_loss=round(stats["first_loss"], 4), final_loss=round(stats["final_loss"], 4),
           tokens_per_second=stats["tokens_per_second"], precision=stats["precision"],
           peak_cuda_mib=stats.get("peak_cuda_mib"), greedy_agreement=stats["greedy_agreement"],
           step_seconds=[r["seconds"] for r in log], wall_seconds=t.seconds,
           notes=stats["notes"] + ([stand_in] if stand_in else []),
           adapter=str(run / "adapter"))


def cmd_export(a) -> None:
    from repro import export
    from repro.config import ExportConfig

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = ExportConfig()
    with Timer() as t:
        stats = export.run(cfg, a.student, Path(a.adapter), out / "model-q4_k_m.gguf", out / "work",
                           base_out=out / "base-q4_k_m.gguf")
    rt = stats["roundtrip"]
    record("export", seconds=t.seconds, quant=stats["quant"], bytes=stats["bytes"],
           bytes_unquantized=stats["bytes_unquantized"], lora_bytes=stats["lora_bytes"],
           load_check_text=stats["load_check_text"], tokenizer_match=rt["tokenizer_match"],
           agreement=rt["agreement"], text_tokens=rt["text_tokens"], llama=llama_build(),
           files=sorted(p.name for p in out.iterdir() if p.is_file()))
    (out / "export.json").write_text(json.dumps(stats, indent=2, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("student")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p = sub.add_parser("train")
    p.add_argument("--student", required=True)
    p.add_argument("--backend", choices=["peft", "triton", "unsloth"], required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", required=True)
    p = sub.add_parser("export")
    p.add_argument("--student", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    {"student": cmd_student, "train": cmd_train, "export": cmd_export}[a.cmd](a)


if __name__ == "__main__":
    main()
