"""Training throughput of the LoRA trainer: CPU precisions and torch.compile, or the CUDA backends.

    .venv/bin/python bench/train.py                              # CPU: fp32 vs bf16 autocast vs torch.compile
    .venv/bin/python bench/train.py --runs bf16-before,bf16      # CPU: bf16 before and after 6b8908b
    .venv/bin/python bench/train.py --models student,qwen0.5b    # also the 0.5B teacher's architecture
    .venv/bin/python bench/train.py --device cuda --random-init  # GPU: eager PEFT vs triton vs unsloth
                                                                 #   vs triton+compile
        [--config bench/configs/gemma-3-270m.json] [--batch 8] [--seq 1024] [--out train-bench.json]

Every configuration runs the trainer's own code (repro.student.load_model + train_loop: LoRA r=16 on
all projections, AdamW, the response-only loss) on the same synthetic batch of random tokens, the
first quarter of each sequence masked as a prompt, in a subprocess of its own, so that peak
memory (RSS on the CPU, torch.cuda.max_memory_allocated on CUDA) is that configuration's alone.
A few warm-up steps (torch.compile and Triton compile there; the first step's time is shown),
then timed steps; tokens/s counts every input token. Ratios are to the first configuration.

Models: `student` is the embedded Gemma-3-270M (its cached transformers checkpoint), `qwen0.5b`
is Qwen2.5-0.5B built from bench/configs/qwen2.5-0.5b.json with random weights. `--random-init`
builds the student from `--config` with random weights too (for a machine without the model
cache); throughput does not depend on the weights' values. On CUDA the triton backend's loss and
LoRA gradients are first compared with eager PEFT's on the same batch and weights (for
triton+compile: with the decoder compiled, so the check covers the compiled kernels too).

Run it on an otherwise idle machine: other processes on the cores change every figure.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: busy-waiting threads, see repro/train.py
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `repro` without installing the project (a lent GPU machine)
CONFIGS = ROOT / "bench" / "configs"
MODEL_CONFIGS = {"student": CONFIGS / "gemma-3-270m.json", "qwen0.5b": CONFIGS / "qwen2.5-0.5b.json"}
# name -> train settings; the first of each device is the baseline of the ratios
CPU_RUNS = {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"},
            "compile": {"precision": "auto", "compile": True},
            # bf16 as it ran before 6b8908b, for the side-by-side: see before_6b8908b()
            "bf16-before": {"precision": "bf16", "before": True}}
CUDA_RUNS = {"eager": {"backend": "peft"}, "triton": {"backend": "triton"}, "unsloth": {"backend": "unsloth"},
             "compile": {"backend": "peft", "compile": True},
             # our kernels as torch.library ops inside the compiled decoder (issue 23)
             "triton+compile": {"backend": "triton", "compile": True}}
CUDA_DEFAULT = "eager,triton,unsloth,triton+compile"


# ---------------------------------------------------------------------------------------------
# One configuration, in its own process


def worker(spec: dict) -> dict:
    import torch

    from repro import student, train
    from repro.config import TrainConfig

    if spec["backend"] == "unsloth":
        import unsloth  # noqa: F401  # before transformers and peft, as Unsloth requires
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if spec.get("before"):
        before_6b8908b()
    train._return_freed_memory()  # as train.run does first
    torch.manual_seed(0)
    cfg = TrainConfig(student=spec["model_dir"], backend=spec["backend"], device=spec["device"],
                      precision=spec.get("precision", "bf16" if spec["device"] == "cuda" else "auto"),
                      compile=spec.get("compile", False), lora_r=spec["lora_r"], lora_alpha=2 * spec["lora_r"],
                      lora_dropout=0.0, batch_size=spec["batch"], micro_batch=spec["batch"],
                      max_steps=spec["warmup"] + spec["steps"], lr=1e-5, warmup_steps=0, save_every=0,
                      max_len=spec["seq"], seed=0)
    device = student.resolve_device(cfg)
    bf16 = student.use_bf16(cfg, device)
    ckpt = Path(spec["model_dir"])
    vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(0)
    prompt = spec["seq"] // 4
    examples = []
    for _ in range(spec["batch"]):
        ids = torch.randint(10, vocab, (spec["seq"],), generator=g).tolist()
        examples.append(train.Example(ids, [-100] * prompt + ids[prompt:]))

    out: dict = {}
    if spec["backend"] == "triton" and spec["check"]:
        # Eager PEFT first, then the same model patched (and compiled, for triton+compile, as
        # load_model would): same weights, same batch.
        model, backend, notes = student.load_model(_replace(cfg, backend="peft", compile=False), ckpt,
                                                   device, bf16)
        ids, labels = train.collate(examples, device)
        eager = _loss_and_grads(model, backend, ids, labels)
        backend, counts = student.kernel_backend(model, device, bf16)
        notes = [f"patched {counts['rmsnorm']} RMSNorm, {counts['mlp']} MLP, {counts['lora_linear']} LoRA"
                 + (f"; left alone {counts['left_alone']}" if counts["left_alone"] else "")]
        if cfg.compile:
            student.decoder(model).compile()
            notes.append("decoder compiled")
        patched = _loss_and_grads(model, backend, ids, labels)
        out["check"] = _compare(eager, patched)
        del eager, patched
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        model, backend, notes = student.load_model(cfg, ckpt, device, bf16)
    rows: list[dict] = []
    train.train_loop(model, examples, cfg, log=rows.append, backend=backend)
    timed = rows[spec["warmup"]:]
    out.update({
        "tokens_per_second": round(sum(r["tokens"] for r in timed) / sum(r["seconds"] for r in timed), 1),
        "first_step_seconds": rows[0]["seconds"], "precision": backend.precision, "notes": notes,
        "losses": [round(r["loss"], 4) for r in rows], **train.peak_memory_mib(device),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "threads": torch.get_num_threads()})
    return out


def before_6b8908b() -> None:
    """Put back the CPU memory path of the trainer before 6b8908b: frozen weights kept in fp32
    (autocast casts them on every forward), the head's bf16 copy and logits buffer made anew per
    example, and glibc's mmap threshold at 1 MiB."""
    import torch

    from repro import student, train

    student.frozen_linears_to = lambda model, dtype: 0
    student.frozen_cast = lambda module, dtype: module.weight.detach().to(dtype)
    student._workspace = lambda module, name, rows, cols, device: torch.empty(
        (rows, cols), dtype=torch.float32, device=device)
    train._return_freed_memory = lambda: train._LIBC and train._LIBC.mallopt(-3, 1 << 20)


def _replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def _loss_and_grads(model, backend, ids, labels):
    from repro import student

    model.zero_grad(set_to_none=True)
    with backend.autocast():
        loss, n = student.batch_loss(model, ids, labels, backend.head)
    (loss / n).backward()
    return (loss.item() / n, {k: p.grad.float().clone() for k, p in model.named_parameters() if p.requires_grad})


def _compare(eager, patched) -> dict:
    (le, ge), (lp, gp) = eager, patched
    worst = max(ge, key=lambda k: (gp[k] - ge[k]).abs().max().item())
    return {"eager_loss": le, "triton_loss": lp, "loss_abs_diff": abs(lp - le),
            "grad_max_abs_diff": (gp[worst] - ge[worst]).abs().max().item(),
            "grad_max_abs": max(g.abs().max().item() for g in ge.values()),
            # relative to the tensor's largest gradient: bf16 sums in another order differ by ~1e-2
            "grad_max_rel_diff": max(((gp[k] - ge[k]).abs().max() / ge[k].abs().max().clamp_min(1e-30)).item()
                                     for k in ge),
            "worst_tensor": worst}


# ---------------------------------------------------------------------------------------------
# The driver


def materialize(config_path: Path, out: Path) -> Path:
    """A checkpoint directory with random weights from a config.json (and a stand-in tokenizer:
    the trainer never tokenizes here, but Unsloth's loader wants one)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    cfg = AutoConfig.for_model(**json.loads(config_path.read_text()))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                            bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(out)
    return out


def machine(device: str) -> str:
    import torch

    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB"
    from repro.student import cpu_has_bf16

    name = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                 if l.startswith("model name")), "CPU")
    return f"{name}, {len(os.sched_getaffinity(0))} cores, native bf16 {'yes' if cpu_has_bf16() else 'no'}"


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "triton", "unsloth"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def run_one(spec: dict, timeout: int) -> dict:
    # Keep a PYTHONPATH given by the caller (bench/gpu.sh puts carried wheels there).
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                           text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {r.returncode}: {tail}"}
    return {**json.loads(lines[-1][len("RESULT "):]), "wall_seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--models", default="student", help="comma-separated: student, qwen0.5b")
    ap.add_argument("--runs", help="comma-separated; CPU: fp32,bf16,compile (default), bf16-before; "
                                   f"CUDA: {CUDA_DEFAULT} (default), compile")
    ap.add_argument("--seq", type=int, help="tokens per sequence (default: CPU 512, CUDA 1024)")
    ap.add_argument("--batch", type=int, help="sequences per step, one forward (default: CPU 1, CUDA 8)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, help="timed steps (default: CPU 5, CUDA 10)")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    ap.add_argument("--random-init", action="store_true", help="the student from --config, random weights")
    ap.add_argument("--config", type=Path, help="config.json for --random-init (default: bench/configs/…)")
    ap.add_argument("--no-check", action="store_true", help="skip the triton-vs-eager comparison")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per configuration")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    cuda = args.device == "cuda"
    runs = (args.runs or (CUDA_DEFAULT if cuda else "fp32,bf16,compile")).split(",")
    table = CUDA_RUNS if cuda else CPU_RUNS
    unknown = [r for r in runs if r not in table]
    if unknown:
        sys.exit(f"--runs: unknown {unknown}; choose from {', '.join(table)}")
    seq, batch = args.seq or (1024 if cuda else 512), args.batch or (8 if cuda else 1)
    steps = args.steps or (10 if cuda else 5)
    if cuda:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA GPU here")
    print(f"device: {machine(args.device)}", flush=True)
    print(f"versions: {versions()}", flush=True)

    results = {"device": args.device, "machine": machine(args.device), "versions": versions(),
               "settings": {"seq": seq, "batch": batch, "warmup": args.warmup, "steps": steps,
                            "lora_r": args.lora_r, "runs": runs},
               "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name in args.models.split(","):
            if name not in MODEL_CONFIGS:
                sys.exit(f"--models: unknown {name!r}; choose from {', '.join(MODEL_CONFIGS)}")
            if name == "student" and not args.random_init:
                from repro.config import STUDENT_270M
                from repro.models import hf_checkpoint

                model_dir, weights = hf_checkpoint(STUDENT_270M), f"{STUDENT_270M} (cached checkpoint)"
            else:
                config = args.config if (args.config and name == "student") else MODEL_CONFIGS[name]
                model_dir = materialize(config, Path(tmp) / name)
                weights = f"random weights from {config.relative_to(ROOT) if config.is_relative_to(ROOT) else config}"
            print(f"\n{name}: {weights}; {batch} x {seq} tokens a step, LoRA r={args.lora_r} on all projections",
                  flush=True)
            rows = {}
            for run in runs:
                if run == "unsloth" and importlib.util.find_spec("unsloth") is None:
                    rows[run] = {"skipped": "unsloth is not installed (pip install -e '.[cuda]')"}
                    print(f"  {run}: skipped, {rows[run]['skipped']}", flush=True)
                    continue
                spec = {"model_dir": str(model_dir), "device": args.device, "seq": seq, "batch": batch,
                        "warmup": args.warmup, "steps": steps, "lora_r": args.lora_r, "threads": args.threads,
                        "check": not args.no_check, "backend": "peft", **table[run]}
                rows[run] = run_one(spec, args.timeout)
                print(f"  {run}: {_short(rows[run])}", flush=True)
            results["models"][name] = {"weights": weights, "runs": rows}
    print_table(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults → {args.out}")


def _short(r: dict) -> str:
    if "error" in r or "skipped" in r:
        return r.get("error") or f"skipped: {r['skipped']}"
    return f"{r['tokens_per_second']} tokens/s ({r['wall_seconds']} s)"


def print_table(results: dict) -> None:
    cuda = results["device"] == "cuda"
    mem = "peak CUDA MiB" if cuda else "peak RSS MiB"
    print(f"\n{results['machine']}; {results['settings']['batch']} x {results['settings']['seq']} tokens, "
          f"{results['settings']['warmup']} warm-up + {results['settings']['steps']} timed steps")
    print(f"| model | run | precision | tokens/s | × {results['settings']['runs'][0]} | {mem} | "
          "first step s | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m in results["models"].items():
        base = m["runs"].get(results["settings"]["runs"][0], {}).get("tokens_per_second")
        for run, r in m["runs"].items():
            if "tokens_per_second" not in r:
                print(f"| {name} | {run} | - | - | - | - | - | {r.get('error') or r.get('skipped')} |")
                continue
            memory = r.get("peak_cuda_mib") if cuda else r["peak_rss_mib"]
            ratio = f"{r['tokens_per_second'] / base:.2f}" if base else "-"
            print(f"| {name} | {run} | {r['precision']} | {r['tokens_per_second']} | {ratio} | {memory} | "
                  f"{r['first_step_seconds']} | "
                  f"{'; '.join(r['notes']) or '-'} |")
        for run, r in m["runs"].items():
            if c := r.get("check"):
                print(f"\n{name}: {run} vs eager on the same batch: loss {c['triton_loss']:.5f} vs "
                      f"{c['eager_loss']:.5f} (|diff| {c['loss_abs_diff']:.2e}); LoRA gradients max |diff| "
                      f"{c['grad_max_abs_diff']:.2e} (largest gradient {c['grad_max_abs']:.2e}), max diff "
                      f"relative to its tensor {c['grad_max_rel_diff']:.2e} ({c['worst_tensor']})")


if __name__ == "__main__":
    main()
