"""Random-weight GGUFs of real Qwen2.5 shapes, for a machine that has no model weights.

    python bench/gpu/random_gguf.py write --arch qwen2.5-0.5b --type f16 --vocab V.json --out M.gguf
    python bench/gpu/random_gguf.py write --arch qwen2.5-7b --type q4_k_m --vocab V.json --out M.gguf [--layers 8]
    python bench/gpu/random_gguf.py vocab --gguf QWEN.gguf --out DIR    # (pack.sh) DIR/vocab.json + DIR/tokenizer/

`write` streams one tensor at a time (memory: one tensor). Two kinds of file:
- `--type f16`: every matrix F16, values ~ N(0, 0.02) (Qwen's initializer range), norms 1, biases 0;
  llama.cpp's own `llama_model_quantize` then makes the Q4_K_M (run.sh does, on the GPU machine).
- `--type q4_k_m`: written directly in llama.cpp's Q4_K_M layout (Q6_K for `output`, and for
  `attn_v` / `ffn_down` on the layers llama.cpp's `use_more_bits` picks; Q4_K elsewhere) from
  random block bytes whose scales are set so that weights are ~0.02 in size: seconds for the 7B
  instead of minutes of writing 15 GB of F16 and quantizing it. Every row length must then be a
  multiple of 256 (true for the 7B; not for the 0.5B, whose hidden size is 896: use f16 there).
  Random bytes are drawn once into a pool and reused at shifting offsets: the weights are not
  independent across tensors, which no throughput figure depends on.

The vocabulary is Qwen2.5's own (tokens, merges, pre-tokenizer "qwen2", ChatML template; no
weights), read from vocab.json (what `vocab` extracts from the embedded Qwen GGUF), padded with
[PAD…] tokens to the architecture's vocabulary size as Qwen's converter does. Without `--vocab`
a synthetic byte-level BPE vocabulary is written (enough for llama.cpp to load and tokenize).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ARCHS = {
    # Qwen2.5-0.5B(-Instruct/-Coder) config.json
    "qwen2.5-0.5b": {"hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "ffn": 4864, "vocab": 151936, "tied": True},
    # Qwen2.5-7B(-Instruct/-Coder) config.json
    "qwen2.5-7b": {"hidden": 3584, "layers": 28, "heads": 28, "kv_heads": 4, "ffn": 18944, "vocab": 152064, "tied": False},
    # CPU-mode stand-ins (run.sh with GPU_BENCH_CPU=1): the same vocabulary, small widths;
    # tiny-k has row lengths that are multiples of 256, for the direct Q4_K_M layout
    "tiny": {"hidden": 256, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 512, "vocab": 151936, "tied": True},
    "tiny-k": {"hidden": 512, "layers": 2, "heads": 8, "kv_heads": 2, "ffn": 1024, "vocab": 152064, "tied": False},
}
COMMON = {"rope_theta": 1_000_000.0, "rms_eps": 1e-6, "ctx": 32768}
STD = 0.02
QK = 256
Q4_K_BYTES, Q6_K_BYTES = 144, 210
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's rule (src/llama-quant.cpp) for the layers whose attn_v / ffn_down get Q6_K in Q4_K_M."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensors(a: dict):
    """(name, numpy shape (rows, row length), kind, Q4_K_M type): kind is matrix | norm | bias."""
    h, kv = a["hidden"], a["kv_heads"] * (a["hidden"] // a["heads"])
    yield "token_embd.weight", (a["vocab"], h), "matrix", "q4_k"
    for i in range(a["layers"]):
        p = f"blk.{i}."
        more = use_more_bits(i, a["layers"])
        yield p + "attn_norm.weight", (h,), "norm", "f32"
        yield p + "attn_q.weight", (h, h), "matrix", "q4_k"
        yield p + "attn_q.bias", (h,), "bias", "f32"
        yield p + "attn_k.weight", (kv, h), "matrix", "q4_k"
        yield p + "attn_k.bias", (kv,), "bias", "f32"
        yield p + "attn_v.weight", (kv, h), "matrix", "q6_k" if more else "q4_k"
        yield p + "attn_v.bias", (kv,), "bias", "f32"
        yield p + "attn_output.weight", (h, h), "matrix", "q4_k"
        yield p + "ffn_norm.weight", (h,), "norm", "f32"
        yield p + "ffn_gate.weight", (a["ffn"], h), "matrix", "q4_k"
        yield p + "ffn_up.weight", (a["ffn"], h), "matrix", "q4_k"
        yield p + "ffn_down.weight", (h, a["ffn"]), "matrix", "q6_k" if more else "q4_k"
    yield "output_norm.weight", (h,), "norm", "f32"
    if not a["tied"]:
        yield "output.weight", (a["vocab"], h), "matrix", "q6_k"


class Pool:
    """Random values drawn once; `take(n)` returns the next n of them (wrapping), a fresh copy."""

    def __init__(self, values: np.ndarray):
        self.v, self.pos = values, 0

    def take(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=self.v.dtype)
        done = 0
        while done < n:
            k = min(n - done, len(self.v) - self.pos)
            out[done:done + k] = self.v[self.pos:self.pos + k]
            done += k
            self.pos = (self.pos + k) % len(self.v)
        # shift the next start by an odd amount so tensors of equal size do not repeat each other
        self.pos = (self.pos + 7919) % len(self.v)
        return out


def k_blocks(pool: Pool, rows: int, cols: int, qtype: str) -> np.ndarray:
    """`rows` rows of random Q4_K or Q6_K blocks (uint8, rows x bytes per row) with scales set so
    the weights are about STD in size and centred on 0."""
    if cols % QK:
        raise SystemExit(f"row length {cols} is not a multiple of {QK}: use --type f16 for this architecture")
    size = Q4_K_BYTES if qtype == "q4_k" else Q6_K_BYTES
    nb = rows * (cols // QK)
    b = pool.take(nb * size).reshape(nb, size)
    if qtype == "q4_k":
        # d, dmin (f16) first; w = d*sc*q - dmin*m, sc, m in 0..63, q in 0..15: std ~ 257 d, mean 0 at dmin = 7.5 d
        d = STD / 257
        b[:, 0:2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
        b[:, 2:4] = np.frombuffer(np.float16(7.5 * d).tobytes(), np.uint8)
    else:
        # ql, qh, scales (int8), then d (f16) last; w = d*sc*(q-32), q in 0..63: std ~ 1370 d
        b[:, 208:210] = np.frombuffer(np.float16(STD / 1370).tobytes(), np.uint8)
    return b.reshape(rows, -1)


def write(args) -> dict:
    import gguf

    a = {**ARCHS[args.arch], **COMMON}
    if args.layers:
        a["layers"] = args.layers
    t0 = time.perf_counter()
    vocab = load_vocab(args.vocab, a["vocab"])
    rng = np.random.default_rng(args.seed)
    direct = args.type == "q4_k_m"
    if direct:
        pool = Pool(rng.integers(0, 256, size=args.pool_mib << 20, dtype=np.uint8))
    else:
        pool = Pool((rng.standard_normal(args.pool_mib << 18, dtype=np.float32) * STD).astype(np.float16))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    w = gguf.GGUFWriter(str(tmp), "qwen2")
    w.add_name(f"random {args.arch}" + (f" ({a['layers']} layers)" if args.layers else ""))
    w.add_type("model")
    w.add_context_length(a["ctx"])
    w.add_embedding_length(a["hidden"])
    w.add_feed_forward_length(a["ffn"])
    w.add_block_count(a["layers"])
    w.add_head_count(a["heads"])
    w.add_head_count_kv(a["kv_heads"])
    w.add_rope_freq_base(a["rope_theta"])
    w.add_layer_norm_rms_eps(a["rms_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M if direct else gguf.LlamaFileType.MOSTLY_F16)
    if direct:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["token_type"])
    w.add_token_merges(vocab["merges"])
    w.add_bos_token_id(vocab["bos"])
    w.add_eos_token_id(vocab["eos"])
    w.add_pad_token_id(vocab["pad"])
    w.add_add_bos_token(False)
    w.add_chat_template(vocab.get("chat_template") or CHATML)

    plan = list(tensors(a))
    qtypes = {"q4_k": gguf.GGMLQuantizationType.Q4_K, "q6_k": gguf.GGMLQuantizationType.Q6_K}
    for name, shape, kind, qt in plan:
        if kind != "matrix":
            w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * shape[0])
        elif direct:
            size = Q4_K_BYTES if qt == "q4_k" else Q6_K_BYTES
            nbytes = shape[0] * shape[1] // QK * size
            w.add_tensor_info(name, (shape[0], nbytes // shape[0]), np.dtype(np.uint8), nbytes, raw_dtype=qtypes[qt])
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float16), 2 * shape[0] * shape[1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    n_params = 0
    for name, shape, kind, qt in plan:
        if kind == "norm":
            t = np.ones(shape, dtype=np.float32)
        elif kind == "bias":
            t = np.zeros(shape, dtype=np.float32)
        elif direct:
            t = k_blocks(pool, shape[0], shape[1], qt)
        else:
            t = pool.take(shape[0] * shape[1]).reshape(shape)
        n_params += int(np.prod(shape))
        w.write_tensor_data(t)
    w.close()
    tmp.replace(out)
    return {"arch": args.arch, "layers": a["layers"], "type": args.type, "path": str(out),
            "bytes": out.stat().st_size, "parameters": n_params, "vocab": "qwen2.5" if args.vocab else "synthetic",
            "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------------------------
# The vocabulary


def load_vocab(path: str | None, n_vocab: int) -> dict:
    if path:
        v = json.loads(Path(path).read_text(encoding="utf-8"))
    else:
        v = synthetic_vocab()
    tokens, types = list(v["tokens"]), list(v["token_type"])
    if len(tokens) > n_vocab:
        raise SystemExit(f"the vocabulary has {len(tokens)} tokens, more than the architecture's {n_vocab}")
    for i in range(len(tokens), n_vocab):  # as Qwen's converter pads its vocabulary
        tokens.append(f"[PAD{i}]")
        types.append(5)  # gguf.TokenType.UNUSED
    return {**v, "tokens": tokens, "token_type": types}


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what a byte-level BPE vocabulary holds)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def synthetic_vocab() -> dict:
    """Byte-level BPE: the 256 bytes, their 65,536 pairs (one merge each), three ChatML specials."""
    chars = _byte_chars()
    tokens = chars + [a + b for a in chars for b in chars]
    merges = [f"{a} {b}" for a in chars for b in chars]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    n = len(tokens)
    return {"pre": "qwen2", "tokens": tokens + specials, "token_type": [1] * n + [3] * 3, "merges": merges,
            "bos": n, "eos": n + 2, "pad": n, "chat_template": CHATML}


def extract_vocab(args) -> dict:
    """vocab.json (the GGUF's tokenizer metadata) and tokenizer/ (transformers' files) from a Qwen GGUF."""
    import gguf

    r = gguf.GGUFReader(args.gguf)

    def field(key):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    if field("tokenizer.ggml.model") != "gpt2":
        raise SystemExit(f"{args.gguf}: not a BPE (gpt2) vocabulary")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    v = {"source": Path(args.gguf).name, "pre": field("tokenizer.ggml.pre"),
         "tokens": field("tokenizer.ggml.tokens"), "token_type": field("tokenizer.ggml.token_type"),
         "merges": field("tokenizer.ggml.merges"), "bos": field("tokenizer.ggml.bos_token_id"),
         "eos": field("tokenizer.ggml.eos_token_id"), "pad": field("tokenizer.ggml.padding_token_id"),
         "chat_template": field("tokenizer.chat_template")}
    (out / "vocab.json").write_text(json.dumps(v, ensure_ascii=False), encoding="utf-8")
    # transformers' tokenizer files of the same vocabulary: llama.cpp's converter recognises its
    # pre-tokenizer (by hash) as qwen2, so a random Qwen2 checkpoint with it converts (export).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Path(args.gguf).parent), gguf_file=Path(args.gguf).name)
    tok.save_pretrained(out / "tokenizer")
    return {"tokens": len(v["tokens"]), "merges": len(v["merges"]), "out": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("write")
    p.add_argument("--arch", choices=sorted(ARCHS), required=True)
    p.add_argument("--type", choices=["f16", "q4_k_m"], default="f16")
    p.add_argument("--layers", type=int, default=0, help="fewer layers than the architecture (same widths)")
    p.add_argument("--vocab", help="vocab.json from `vocab`; default: a synthetic byte-level vocabulary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool-mib", type=int, default=256, help="size of the random pool")
    p.add_argument("--out", required=True)
    p = sub.add_parser("vocab")
    p.add_argument("--gguf", required=True)
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    result = write(args) if args.cmd == "write" else extract_vocab(args)
    print(json.dumps(result), flush=True)
    if args.cmd == "write" and os.environ.get("GPU_BENCH_RESULTS"):  # bench/gpu/run.sh's results
        with open(os.environ["GPU_BENCH_RESULTS"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": "gguf", **result}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
