"""Step 4: LoRA fine-tuning of the student on the cleaned pairs (transformers + PEFT, CPU).

The training text has the paper's template shape (data/prompts/train_template.txt, our wording):
one system sentence, `@@ Instruction` + the problem, `@@ Response` + the solution + EOS. The loss
covers only the response tokens: prompt positions get label -100, and logits are computed only
at the positions that predict a response token (with Gemma's 262K vocabulary the logits over the
prompt would cost as much as the rest of the model).

On the CPU: bf16 autocast where the CPU has native bf16 (AVX512-BF16 / AMX), fp32 otherwise;
`OMP_WAIT_POLICY=PASSIVE` must be set before torch starts (the CLI does it) — measured on a loaded
2-core machine, busy-waiting OpenMP threads made training 10x slower.

Outputs: `adapter/` (PEFT adapter + tokenizer) and `train_log.jsonl` (one line per step).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from repro.artifacts import DATA_DIR, ReproError, atomic_path, write_text
from repro.config import TrainConfig


def template() -> str:
    return (DATA_DIR / "prompts" / "train_template.txt").read_text(encoding="utf-8")


def format_prompt(instruction: str) -> str:
    return template().replace("{instruction}", instruction.strip())


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 on the prompt


def build_examples(tok, rows: list[dict], max_len: int) -> tuple[list[Example], dict]:
    """Tokenize (problem, solution) rows; mask the prompt; truncate to max_len (counted)."""
    if tok.eos_token_id is None:
        raise ReproError("train: the student's tokenizer has no EOS token; the model cannot learn to stop")
    out, counts = [], {"examples": 0, "truncated": 0, "dropped_prompt_too_long": 0}
    for r in rows:
        prompt = tok(format_prompt(r["problem"]), add_special_tokens=True)["input_ids"]
        response = tok(r["solution"].strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(prompt) >= max_len:
            counts["dropped_prompt_too_long"] += 1
            continue
        ids = prompt + response
        if len(ids) > max_len:
            counts["truncated"] += 1
            ids = ids[:max_len]
        labels = [-100] * len(prompt) + ids[len(prompt):]
        out.append(Example(ids, labels))
    counts["examples"] = len(out)
    return out, counts


def response_loss(model, ex: Example, device="cpu"):
    """Summed cross-entropy over response tokens, computing logits only where they are needed."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor([ex.input_ids], device=device)
    labels = torch.tensor(ex.labels, device=device)
    # Position t predicts token t+1: keep the positions whose next token is a response token.
    keep = (labels[1:] != -100).nonzero().squeeze(1)
    logits = model(input_ids=ids, logits_to_keep=keep).logits[0]
    return F.cross_entropy(logits.float(), labels[keep + 1], reduction="sum"), int(keep.numel())


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def train_loop(model, examples: list[Example], cfg: TrainConfig, log=None, progress=None) -> dict:
    """Optimize the model's trainable parameters; return figures. `log(row)` gets every step."""
    import contextlib

    import torch

    if not examples:
        raise ReproError("train: no training examples (clean.parquet is empty); generate more pairs "
                         "(seeds.num_seeds) or check generate's rejected.jsonl")
    rng = random.Random(cfg.seed)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(steps_per_epoch * cfg.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    warm = min(cfg.warmup_steps, total // 2)
    # Linear warmup then linear decay to zero, as the paper; the first step already moves
    # (a schedule starting at lr=0 wastes a step, which matters in a 2-step smoke run).
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warm + 1) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cpu_has_bf16())
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    order: list[int] = []
    model.train()
    losses, t_start, tokens_seen = [], time.perf_counter(), 0
    task = progress.add_task("train", total=total) if progress else None
    for step in range(1, total + 1):
        t0 = time.perf_counter()
        batch = []
        for _ in range(cfg.batch_size):
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            batch.append(examples[order.pop()])
        n_tokens = sum(sum(1 for l in ex.labels[1:] if l != -100) for ex in batch)
        step_loss = 0.0
        for ex in batch:
            with autocast:
                loss, _ = response_loss(model, ex)
            (loss / max(n_tokens, 1)).backward()  # mean over the batch's response tokens
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        batch_tokens = sum(len(ex.input_ids) for ex in batch)
        tokens_seen += batch_tokens
        row = {"step": step, "loss": step_loss / max(n_tokens, 1), "lr": sched.get_last_lr()[0],
               "tokens": batch_tokens, "seconds": round(dt, 3)}
        losses.append(row["loss"])
        if log:
            log(row)
        if progress:
            progress.update(task, advance=1, description=f"train (loss {row['loss']:.3f})")
    elapsed = time.perf_counter() - t_start
    return {"steps": total, "first_loss": losses[0], "final_loss": losses[-1],
            "tokens_per_second": round(tokens_seen / elapsed, 1), "seconds": round(elapsed, 1),
            "precision": "bf16-autocast" if bf16 else "fp32"}


def add_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in cfg.target_modules if m in present]
    if not targets:
        raise ReproError(f"train.target_modules={cfg.target_modules}: none of these modules exist in the "
                         "student; name its linear layers (e.g. q_proj,v_proj)")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def run(cfg: TrainConfig, clean_path: Path, adapter_dir: Path, log_path: Path, progress=None) -> dict:
    import duckdb
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repro.models import hf_checkpoint

    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    ckpt = hf_checkpoint(cfg.student)
    tok = AutoTokenizer.from_pretrained(ckpt)
    rows = duckdb.sql(f"SELECT problem, solution FROM read_parquet('{clean_path}')").fetchall()
    examples, counts = build_examples(tok, [{"problem": p, "solution": s} for p, s in rows], cfg.max_len)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager")
    model = add_lora(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log_rows: list[dict] = []
    stats = train_loop(model, examples, cfg, log=log_rows.append, progress=progress)
    with atomic_path(adapter_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    write_text(log_path, "".join(json.dumps(r) + "\n" for r in log_rows))
    return {**counts, **stats, "trainable_parameters": trainable,
            "threads": torch.get_num_threads()}
