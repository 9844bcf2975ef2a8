"""llama.cpp on the GPU through the project's own engine (repro.engine.open_engine, llama-batched).

    python bench/gpu/decode.py quantize --src M-f16.gguf --dst M-q4_k_m.gguf [--quant q4_k_m]
    python bench/gpu/decode.py greedy --gguf M.gguf [--prompts 4] [--max-tokens 64]
    python bench/gpu/decode.py sweep --gguf M.gguf --ngl -1 --parallel 1,8,32,64,128 [--max-tokens 128] [--box 120]
    python bench/gpu/decode.py eval --gguf M.gguf [--problems 16] [--max-tokens 128]

- quantize: repro.export.quantize (llama.cpp's llama_model_quantize), the export stage's own call.
- greedy: the same requests, greedy, with every layer on the GPU (n_gpu_layers=-1, flash_attn auto)
  and with none (n_gpu_layers=0: the CPU backend of the same library); per request whether the
  answer's token ids are identical, else the first position where they differ and both tokens.
- sweep: decode tokens/s with `parallel` sequences (one request per sequence, all admitted at
  once, each `max-tokens` long unless the model ends it), the GPU's memory in use before loading,
  with the model and context loaded, and after decoding (nvidia-smi: the whole card); stops
  starting new settings once `--box` seconds have passed.
- eval: the evaluate stage's decoding (repro.eval.evaluate.generate) of HumanEval+ problems in the
  completion and chat styles, on whatever n_gpu_layers says (default all layers).
Every figure goes to $GPU_BENCH_RESULTS (bench/gpu/common.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, gpu_memory_mib, llama_build, record  # noqa: E402

PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "# Write a function that reverses the words of a sentence.\ndef reverse_words(s: str) -> str:\n",
    "import json\n\n\ndef load_config(path):\n    \"\"\"Read a JSON config file and fill in defaults.\"\"\"\n",
    "class Stack:\n    \"\"\"A last-in first-out stack backed by a list.\"\"\"\n\n    def __init__(self):\n",
    "def is_prime(n: int) -> bool:\n    # trial division up to the square root\n",
    "SELECT name, COUNT(*) FROM orders GROUP BY name ORDER BY 2 DESC; -- explain this query\n",
    "fn main() {\n    let v: Vec<i32> = (1..10).collect();\n",
    "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n",
]


def prompt(i: int) -> str:
    return f"# task {i}\n" + PROMPTS[i % len(PROMPTS)]


def capture_tokens():
    """Make BatchedEngine keep each finished request's answer token ids (engine._tokens[key]).
    A wrapper around its _accept, in this process only; the engine's code is unchanged."""
    from repro.engine.llama_backend import BatchedEngine

    if getattr(BatchedEngine, "_bench_wrapped", False):
        return
    orig = BatchedEngine._accept

    def _accept(self, s, tok):
        done = orig(self, s, tok)
        if done is not None:
            self.__dict__.setdefault("_tokens", {})[s.req.key] = list(s.out)
        return done

    BatchedEngine._accept = _accept
    BatchedEngine._bench_wrapped = True


def cmd_quantize(a) -> None:
    from repro.export import quantize

    with Timer() as t:
        quantize(Path(a.src), Path(a.dst), a.quant, Path(a.dst).with_suffix(".quantize.log"))
    record("quantize", src=Path(a.src).name, dst=Path(a.dst).name, quant=a.quant, seconds=t.seconds,
           bytes_in=os.path.getsize(a.src), bytes_out=os.path.getsize(a.dst))


def run_requests(gguf: Path, ngl: int, parallel: int, n: int, max_tokens: int, n_ctx: int,
                 flash_attn: str = "auto", threads: int = 0) -> dict:
    from repro.engine import Request, open_engine

    mem0 = gpu_memory_mib()
    t0 = time.perf_counter()
    with open_engine("llama-batched", gguf, n_ctx=n_ctx, parallel=parallel, threads=threads,
                     n_gpu_layers=ngl, flash_attn=flash_attn, section="bench") as eng:
        load_s = time.perf_counter() - t0
        mem1 = gpu_memory_mib()
        reqs = [Request(str(i), prompt=prompt(i), max_tokens=max_tokens, temperature=0.0) for i in range(n)]
        done = list(eng.run(reqs))
        mem2 = gpu_memory_mib()
        st = eng.stats
        tokens = dict(getattr(eng, "_tokens", {}))
        out = {"parallel": parallel, "requests": n, "max_tokens": max_tokens, "n_ctx": n_ctx, "n_gpu_layers": ngl,
               "flash_attn": flash_attn, "engine_on_gpu": eng.gpu, "threads": eng.threads,
               "load_seconds": round(load_s, 2),
               "completion_tokens": st.completion_tokens, "prompt_tokens": st.prompt_tokens,
               "decode_seconds": round(st.decode_seconds, 3), "prompt_seconds": round(st.prompt_seconds, 3),
               "seconds": round(st.seconds, 3),
               "decode_tps": round(st.decode_tokens_per_second or 0, 1),
               "overall_tps": round(st.tokens_per_second or 0, 1),
               "prompt_tps": round(st.prompt_tokens_per_second or 0, 1),
               "finish": dict(Counter(c.finish_reason for c in done)),
               "vram_before_mib": mem0 and mem0["used"], "vram_loaded_mib": mem1 and mem1["used"],
               "vram_after_mib": mem2 and mem2["used"], "vram_total_mib": mem0 and mem0["total"]}
    return {"figures": out, "texts": {c.key: c.text for c in done}, "tokens": tokens}


def cmd_greedy(a) -> None:
    capture_tokens()
    gguf = Path(a.gguf)
    runs = {}
    for where, ngl in (("gpu", -1), ("cpu", 0)):
        r = run_requests(gguf, ngl, a.prompts, a.prompts, a.max_tokens, a.n_ctx)
        runs[where] = r
        record("greedy_run", model=gguf.name, where=where, **r["figures"])
    g, c = runs["gpu"], runs["cpu"]
    rows, vocab = [], None
    for key in sorted(c["tokens"], key=int):
        x, y = g["tokens"].get(key, []), c["tokens"][key]
        if x == y:
            rows.append({"request": int(key), "identical": True, "tokens": len(y)})
            continue
        i = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        if vocab is None:
            from repro.engine import load_vocab

            vocab = load_vocab(gguf)
        gpu_tok, cpu_tok = (x[i] if i < len(x) else None), (y[i] if i < len(y) else None)
        rows.append({"request": int(key), "identical": False, "first_difference": i, "gpu_tokens": len(x),
                     "cpu_tokens": len(y), "gpu_token": gpu_tok, "cpu_token": cpu_tok,
                     "gpu_piece": None if gpu_tok is None else vocab.token_get_text(gpu_tok),
                     "cpu_piece": None if cpu_tok is None else vocab.token_get_text(cpu_tok)})
    if vocab is not None:
        vocab.close()
    record("greedy", model=gguf.name, llama=llama_build(), max_tokens=a.max_tokens,
           identical=sum(r["identical"] for r in rows), requests=len(rows), rows=rows,
           gpu_on_gpu=g["figures"]["engine_on_gpu"], cpu_on_gpu=c["figures"]["engine_on_gpu"])


def cmd_sweep(a) -> None:
    gguf = Path(a.gguf)
    t0 = time.perf_counter()
    for p in [int(x) for x in a.parallel.split(",")]:
        if time.perf_counter() - t0 > a.box:
            record("sweep_skipped", model=gguf.name, label=a.label, parallel=p, n_gpu_layers=a.ngl,
                   why=f"time box of {a.box} s spent")
            continue
        try:
            r = run_requests(gguf, a.ngl, p, p * a.waves, a.max_tokens, a.n_ctx, a.flash_attn, a.threads)
        except Exception as e:  # noqa: BLE001  # a context that does not fit, a failed decode: record it, go on
            record("sweep_error", model=gguf.name, label=a.label, parallel=p, n_gpu_layers=a.ngl,
                   error=f"{type(e).__name__}: {e}"[:400])
            continue
        sample = r["texts"].get("0", "")[:80]
        record("sweep", model=gguf.name, label=a.label, sample=sample, **r["figures"])


def cmd_eval(a) -> None:
    from repro.config import EvaluateConfig
    from repro.eval import evalplus_data
    from repro.eval.evaluate import generate

    bench = evalplus_data.load("humaneval", fetch=False)
    ids = list(bench.problems)[: a.problems]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    jobs = []
    for style in a.styles.split(","):
        path = work / f"answers-{style}.jsonl"
        path.unlink(missing_ok=True)
        jobs.append(("humaneval", bench.problems, ids, style, path))
    cfg = EvaluateConfig(n_ctx=a.n_ctx, parallel=a.parallel, max_tokens=a.max_tokens, n_gpu_layers=a.ngl,
                         cache=False, fetch=False)
    with Timer() as t:
        out = generate(Path(a.gguf).name, Path(a.gguf), jobs, cfg)
    record("eval_decode", model=Path(a.gguf).name, benchmark=f"HumanEval+ {bench.version}", problems=len(ids),
           styles=a.styles, parallel=a.parallel, max_tokens=a.max_tokens, n_gpu_layers=a.ngl,
           wall_seconds=t.seconds, llama=llama_build(), **out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("quantize")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--quant", default="q4_k_m")
    p = sub.add_parser("greedy")
    p.add_argument("--gguf", required=True)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--n-ctx", type=int, default=256)
    p = sub.add_parser("sweep")
    p.add_argument("--gguf", required=True)
    p.add_argument("--label", default="")
    p.add_argument("--ngl", type=int, default=-1)
    p.add_argument("--parallel", default="1,8,32,64,128")
    p.add_argument("--waves", type=int, default=1, help="requests per sequence")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--flash-attn", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--box", type=float, default=1e9, help="start no new setting after this many seconds")
    p = sub.add_parser("eval")
    p.add_argument("--gguf", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--styles", default="completion,chat")
    p.add_argument("--parallel", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--ngl", type=int, default=-1)
    a = ap.parse_args()
    {"quantize": cmd_quantize, "greedy": cmd_greedy, "sweep": cmd_sweep, "eval": cmd_eval}[a.cmd](a)


if __name__ == "__main__":
    main()
