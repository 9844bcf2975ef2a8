"""The train stage: LoRA fine-tuning of the student on the cleaned pairs.

The training text has the paper's template shape (data/prompts/train_template.txt, our wording):
one system sentence, `@@ Instruction` + the problem, `@@ Response` + the solution + EOS. The loss
covers only the response tokens: prompt positions get label -100, and the language-model head is
applied only at the positions that predict a response token (with Gemma's 262K vocabulary the
logits over the prompt would cost as much as the rest of the model).

Backends (`train.backend`, loaded by repro/student.py), one training loop:
- `peft`: transformers + PEFT, on the CPU or CUDA. CPU: bf16 autocast where the CPU has native
  bf16 (AVX512-BF16 / AMX), fp32 otherwise; `OMP_WAIT_POLICY=PASSIVE` must be set before torch
  starts (the CLI does it): on a loaded 2-core machine busy-waiting OpenMP threads made training
  10x slower. `train.compile` runs the decoder through torch.compile (peft and triton).
- `triton` (CUDA): the same PEFT model with our kernels from repro/kernels/ patched in (RMSNorm, the
  gated MLP activation, the LoRA projection) and the fused linear + cross-entropy as the loss,
  which never builds the [tokens, vocabulary] logits. LoRA dropout is set to 0 (the fused LoRA
  kernel has none).
- `unsloth` (CUDA, the `cuda` extra): Unsloth's FastLanguageModel and its LoRA. Only its model
  loading and patching are used; never its GGUF export (it runs apt-get and git clone).
On CUDA the frozen base weights are stored in bf16 when training in bf16 (the LoRA weights stay
fp32, PEFT's default), and attention uses SDPA.

Resume: every `train.save_every` steps the LoRA weights, optimizer, schedule, RNG states and the
data order go to `<run>/train_ckpt/step-N/` (written under a temporary name, then renamed). A
rerun with the same settings and data, after a crash or kill -9, continues from the newest one
with the same data order; `train_log.jsonl` keeps its rows up to that step. The checkpoint is
deleted once the adapter is written: the adapter is the result, and a finished stage is skipped.

Outputs: `adapter/` (PEFT adapter + tokenizer) and `train_log.jsonl` (one line per step: loss,
lr, tokens/s, peak memory).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from repro.artifacts import (sql_str, DATA_DIR, ReproError, append_jsonl, atomic_path, digest, fingerprint, parquet_rows,
                             read_jsonl, write_json, write_text)
from repro.config import TrainConfig
from repro.student import (BACKENDS, CUDA_ONLY, Backend, batch_loss, brief, causal_lm, decoder, frozen_cast,
                           load_model, load_tokenizer, plain_head, resolve_device, student_checkpoint, use_bf16)



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


def template_tokens(tok) -> int:
    """Tokens the template takes around an empty problem: the least any example needs."""
    return len(tok(format_prompt(""), add_special_tokens=True)["input_ids"])


def check_settings(cfg: TrainConfig) -> None:
    """Fail on bad train settings before anything is written (pipeline.check).

    Loads the student's config and tokenizer, not its weights: a checkpoint whose weights are
    broken is reported by `run` before it writes anything.
    """
    if cfg.backend not in BACKENDS:
        raise ReproError(f"train.backend={cfg.backend!r} is unknown; choose one of: {', '.join(BACKENDS)}")
    for name, value, allowed in (("device", cfg.device, ("auto", "cpu", "cuda")),
                                 ("precision", cfg.precision, ("auto", "bf16", "fp32"))):
        if value not in allowed:
            raise ReproError(f"train.{name}={value!r} is unknown; choose one of: {', '.join(allowed)}")
    for name in ("batch_size", "micro_batch", "lora_r"):
        if getattr(cfg, name) < 1:
            raise ReproError(f"train.{name}={getattr(cfg, name)} must be at least 1")
    if cfg.compile and cfg.backend == "unsloth":
        # Unsloth compiles its own code; Dynamo over it is untested. Our kernels are torch.library
        # ops that torch.compile keeps whole (tests/test_kernels.py), so triton may compile.
        raise ReproError("train.compile=true applies to the peft and triton backends only; drop it "
                         "for train.backend=unsloth")
    if cfg.save_every < 0:
        raise ReproError(f"train.save_every={cfg.save_every} must be 0 (only the final adapter) or more")
    resolve_device(cfg)
    if cfg.backend in CUDA_ONLY and importlib.util.find_spec(cfg.backend) is None:
        raise ReproError(f"train.backend={cfg.backend} needs the {cfg.backend} package; "
                         "pip install -e '.[cuda]' (or use train.backend=peft)")
    if cfg.backend == "unsloth":
        import unsloth  # noqa: F401  # before transformers and peft, as Unsloth requires
    ckpt = student_checkpoint(cfg.student)
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        model_type = AutoConfig.from_pretrained(ckpt).model_type
    except Exception as e:
        raise ReproError(f"train.student={cfg.student}: its config does not load from {ckpt} "
                         f"({brief(e)})") from None
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ReproError(f"train.student={cfg.student}: a {model_type!r} model is not a causal language "
                         "model transformers can train; choose a decoder-only student")
    n = template_tokens(load_tokenizer(cfg, ckpt))
    if cfg.max_len <= n:
        raise ReproError(f"train.max_len={cfg.max_len} leaves no room for a problem: the training template "
                         f"alone is {n} tokens; use at least {n + 256}")


def collate(batch: list[Example], device="cpu"):
    import torch

    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)  # pad id 0: never attended, never a label
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, ex in enumerate(batch):
        ids[i, :len(ex.input_ids)] = torch.tensor(ex.input_ids)
        labels[i, :len(ex.labels)] = torch.tensor(ex.labels)
    return ids.to(device), labels.to(device)


def response_loss(model, ex: Example, device="cpu", head: Callable | None = None):
    """Summed cross-entropy over one example's response tokens, and their count."""
    return batch_loss(model, *collate([ex], device), head)


def greedy_agreement(model, examples: list[Example], backend: Backend, k: int = 8) -> dict:
    """Did training move the model toward its targets? On the first `k` training examples: the
    share of response tokens that are the model's greedy (argmax) next token given the target's
    prefix, with the adapter off (the base student) and on. Only the response positions' logits
    are computed, 256 rows at a time (Gemma's 262K vocabulary makes full logits ~1 GB an example).
    """
    import torch

    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    dt = torch.bfloat16 if backend.bf16 else head.weight.dtype  # autocast's matmul dtype
    # The head's weight (Gemma's 262K x 640 embedding, fp32) in that dtype once (kept from the
    # training's loss), not cast again for every 256 rows as autocast would: on the CPU those
    # casts were 6 of this function's 21 s. A head with a LoRA (or training) is called as it is.
    plain = plain_head(head)
    w, bias = (frozen_cast(head, dt), head.bias) if plain else (None, None)

    def logits(h):
        if not plain:
            with backend.autocast():
                return head(h)
        with torch.autocast(backend.device, enabled=False):  # dt already: nothing to cast
            z = h.to(dt) @ w.T
            return z + bias.to(dt) if bias is not None else z

    def agree() -> tuple[int, int]:
        hit = total = 0
        for ex in examples[:k]:
            ids, labels = collate([ex], backend.device)
            with torch.no_grad(), backend.autocast():
                hidden = decoder(model)(input_ids=ids, use_cache=False).last_hidden_state
            keep = labels[:, 1:] != -100
            h, targets = hidden[:, :-1][keep], labels[:, 1:][keep]
            with torch.no_grad():
                for i in range(0, len(h), 256):  # a final softcap is monotonic: argmax unchanged
                    # max's indices, not argmax: the same first maximum (both documented so), and
                    # 3x faster over bf16 rows on the CPU (measured, torch 2.13)
                    hit += int((logits(h[i:i + 256]).max(-1).indices == targets[i:i + 256]).sum())
            total += int(targets.numel())
        return hit, total

    was_training = model.training
    model.eval()
    with model.disable_adapter():
        off, total = agree()
    on, _ = agree()
    model.train(was_training)
    return {"examples": min(k, len(examples)), "tokens": total,
            "adapter_off": round(off / max(total, 1), 4), "adapter_on": round(on / max(total, 1), 4)}


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(ckpt_dir: Path, fp: str, step: int, model, opt, sched, rng: random.Random,
                    order: list[int], losses: list[float]) -> Path:
    """Write step-N/ under a temporary name and rename it; then drop older steps.

    A kill at any moment leaves either the previous checkpoint or this one complete.
    """
    import torch

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = ckpt_dir / f"step-{step:07d}", ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save({"params": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               tmp / "state.pt")
    (tmp / "state.json").write_text(json.dumps({"fingerprint": fp, "step": step, "py_rng": rng.getstate(),
                                                "order": order, "losses": losses}))
    for f in (tmp / "state.pt", tmp / "state.json"):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in ckpt_dir.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt_dir: Path, fp: str) -> dict | None:
    """The newest complete checkpoint made with fingerprint `fp`, or None."""
    import torch

    for d in sorted(Path(ckpt_dir).glob("step-*"), reverse=True):
        try:
            meta = json.loads((d / "state.json").read_text())
            if meta.get("fingerprint") != fp:
                continue
            return {**meta, **torch.load(d / "state.pt", map_location="cpu", weights_only=True)}
        except (OSError, ValueError, RuntimeError, EOFError):
            continue  # unreadable: try an older one
    return None


# ---------------------------------------------------------------------------------------------
# Training loop


def peak_memory_mib(device: str) -> dict:
    import torch

    # ru_maxrss is in KiB on Linux: the process's peak resident memory so far.
    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if device == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def train_loop(model, examples: list[Example], cfg: TrainConfig, log=None, progress=None,
               backend: Backend | None = None, resume: dict | None = None, ckpt_dir: Path | None = None,
               fp: str = "", after_step: Callable[[int], None] | None = None) -> dict:
    """Optimize the model's trainable parameters; return figures. `log(row)` gets every step.

    `resume`: a `load_checkpoint` result to continue from. With `ckpt_dir`, a checkpoint is saved
    every cfg.save_every steps (not after the last: the adapter is saved then). `after_step(step)`
    runs after each step's log row and checkpoint (tests use it to crash the process there).
    """
    import torch

    if not examples:
        raise ReproError("train: no training examples (clean.parquet is empty); generate more pairs "
                         "(seeds.num_seeds) or check generate's rejected.jsonl")
    backend = backend or Backend("peft", "cpu", use_bf16(cfg, "cpu"))
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

    order: list[int] = []
    losses: list[float] = []
    start = 0
    if resume:
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in resume["params"].items():
                named[n].copy_(t)
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        v, state, gauss = resume["py_rng"]
        rng.setstate((v, tuple(state), gauss))
        order, losses, start = list(resume["order"]), list(resume["losses"]), resume["step"]
        # Last, so that nothing between here and the first step draws from them (dropout does).
        torch.set_rng_state(resume["torch_rng"])
        if resume["cuda_rng"] and backend.device == "cuda":
            torch.cuda.set_rng_state_all(resume["cuda_rng"])

    model.train()
    t_start, tokens_seen = time.perf_counter(), 0
    task = progress.add_task("train", total=total, completed=start) if progress else None
    for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        batch = []
        for _ in range(cfg.batch_size):
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            batch.append(examples[order.pop()])
        n_tokens = sum(sum(1 for l in ex.labels[1:] if l != -100) for ex in batch)
        step_loss = 0.0
        for i in range(0, len(batch), cfg.micro_batch):
            ids, labels = collate(batch[i:i + cfg.micro_batch], backend.device)
            with backend.autocast():
                loss, _ = batch_loss(model, ids, labels, backend.head)
            (loss / max(n_tokens, 1)).backward()  # mean over the batch's response tokens
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if backend.device == "cpu":
            _trim_heap()
        if backend.device == "cuda":
            torch.cuda.synchronize()  # the step's time includes its queued kernels
        dt = time.perf_counter() - t0
        batch_tokens = sum(len(ex.input_ids) for ex in batch)
        tokens_seen += batch_tokens
        row = {"step": step, "loss": step_loss / max(n_tokens, 1), "lr": sched.get_last_lr()[0],
               "tokens": batch_tokens, "seconds": round(dt, 3), "tokens_per_second": round(batch_tokens / dt, 1),
               **peak_memory_mib(backend.device)}
        losses.append(row["loss"])
        if log:
            log(row)
        if ckpt_dir is not None and cfg.save_every and step % cfg.save_every == 0 and step < total:
            save_checkpoint(ckpt_dir, fp, step, model, opt, sched, rng, order, losses)
        if progress:
            progress.update(task, advance=1, description=f"train (loss {row['loss']:.3f}, "
                                                         f"{row['tokens_per_second']:.0f} tok/s)")
        if after_step:
            after_step(step)
    elapsed = time.perf_counter() - t_start
    return {"steps": total, "first_loss": losses[0], "final_loss": losses[-1], "resumed_from_step": start,
            "tokens_per_second": round(tokens_seen / elapsed, 1) if tokens_seen else 0.0,
            "seconds": round(elapsed, 1), "precision": backend.precision, **peak_memory_mib(backend.device)}


def resume_fingerprint(cfg: TrainConfig, clean_path: Path, ckpt: Path, init_adapter: Path | None = None) -> str:
    """What a checkpoint must have been made with to be resumed: every setting that changes the
    result (not save_every), the data, the template, the student and the adapter started from."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "save_every"}
    if cfg.max_pairs:
        settings["subset"] = SUBSET_RULE
    start = [digest(init_adapter)] if init_adapter else []
    return fingerprint("train", settings, digest(clean_path), template(), str(ckpt), *start)


# How subset() chooses (in the fingerprints): the first max_pairs of one seeded permutation, so
# that a smaller subset is always inside a larger one (repro curve's nested sizes).
SUBSET_RULE = "permutation-prefix"


def subset(rows: list, max_pairs: int, seed: int) -> list:
    """A fixed random `max_pairs` of `rows`, in their order (all of them for max_pairs=0): the
    first `max_pairs` of one permutation drawn with `seed`, so subsets of one seed are nested."""
    if not max_pairs or max_pairs >= len(rows):
        return rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in sorted(order[:max_pairs])]


def load_adapter(model, adapter_dir: Path) -> None:
    """Start from an earlier adapter's LoRA weights (a second training stage), same shapes required."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    f = Path(adapter_dir) / "adapter_model.safetensors"
    try:
        weights = load_file(f)
        result = set_peft_model_state_dict(model, weights)
    except Exception as e:
        raise ReproError(f"train: cannot start from the adapter {adapter_dir} ({brief(e)}); "
                         "its first stage must use the same student and LoRA settings") from None
    if getattr(result, "unexpected_keys", None):
        raise ReproError(f"train: the adapter {adapter_dir} does not fit this student's LoRA layers "
                         f"({len(result.unexpected_keys)} unknown tensors); rerun its first stage")


def _return_freed_memory() -> None:
    """Have glibc serve every allocation of 32 MiB or more with its own mmap, unmapped when freed;
    smaller ones come from the heap, which `_trim_heap` gives back after each step.

    glibc's default threshold also rises to 32 MiB, but without the trim the heap fragments and
    does not shrink: on the tiny profile peak RSS grew step by step to 8.4 GiB. A 1-MiB threshold
    kept it at ~5 GiB, but every 1-3 MiB activation was then a fresh mmap: 57M page faults and
    110 s of system time in a 282-s training run. At 32 MiB: 246 s, peak 5.5 GiB (measured,
    tiny profile, 18 steps, with the frozen weights already in bf16).
    """
    if _LIBC is not None:
        _LIBC.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc's largest)


def _glibc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS): their allocators differ
        return None


_LIBC = _glibc()


def _trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere): the
    pieces of a step's activations under the mmap threshold otherwise stay resident."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def run(cfg: TrainConfig, clean_path: Path, adapter_dir: Path, log_path: Path, progress=None,
        ckpt_dir: Path | None = None, after_step: Callable[[int], None] | None = None,
        init_adapter: Path | None = None) -> dict:
    """LoRA-train the student on `clean_path`'s pairs (train.max_pairs of them when set); with
    `init_adapter`, continue from that adapter (MagicoderS's second stage) instead of a fresh one."""
    _return_freed_memory()
    if cfg.backend == "unsloth":
        import unsloth  # noqa: F401  # before transformers and peft, as Unsloth requires
    import duckdb
    import torch

    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg)
    bf16 = use_bf16(cfg, device)
    ckpt = student_checkpoint(cfg.student)
    tok = load_tokenizer(cfg, ckpt)
    rows = duckdb.sql(f"SELECT problem, solution FROM read_parquet({sql_str(clean_path)})").fetchall()
    if not rows:
        raise ReproError(f"train: {clean_path} has no pairs; generate more (seeds.num_seeds) or check "
                         "generate's rejected.jsonl and clean's removed.parquet")
    n_rows = len(rows)
    rows = subset(rows, cfg.max_pairs, cfg.seed)
    examples, counts = build_examples(tok, [{"problem": p, "solution": s} for p, s in rows], cfg.max_len)
    counts["pairs_available"] = n_rows
    if not examples:
        raise ReproError(f"train: all {len(rows)} prompts are longer than train.max_len={cfg.max_len} "
                         "tokens; raise train.max_len")
    model, backend, notes = load_model(cfg, ckpt, device, bf16)
    if len(rows) < n_rows:
        notes.append(f"train.max_pairs={cfg.max_pairs}: a fixed random {len(rows)} of the {n_rows} pairs")
    if init_adapter:
        load_adapter(model, init_adapter)
        notes.append(f"started from the adapter {init_adapter}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    ckpt_dir = Path(ckpt_dir) if ckpt_dir else Path(adapter_dir).parent / "train_ckpt"
    fp = resume_fingerprint(cfg, clean_path, ckpt, init_adapter)
    resume = load_checkpoint(ckpt_dir, fp)
    if resume:
        notes.append(f"resumed from the checkpoint at step {resume['step']}")
    # The loss curve continues: rows up to the checkpoint stay, later ones are made again.
    kept = [r for r in read_jsonl(log_path) if r["step"] <= resume["step"]] if resume else []
    write_text(log_path, "".join(json.dumps(r) + "\n" for r in kept))
    with open(log_path, "a", encoding="utf-8") as f:
        stats = train_loop(model, examples, cfg, log=lambda row: append_jsonl(f, row), progress=progress,
                           backend=backend, resume=resume, ckpt_dir=ckpt_dir, fp=fp, after_step=after_step)
    fit = greedy_agreement(model, examples, backend)
    notes.append(f"greedy next-token agreement with the targets of {fit['examples']} training examples: "
                 f"{fit['adapter_off']:.1%} base, {fit['adapter_on']:.1%} with the adapter")
    with atomic_path(adapter_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {**counts, **stats, "greedy_agreement": fit, "trainable_parameters": trainable,
            "threads": torch.get_num_threads(),
            "backend": cfg.backend, "device": device, "notes": notes}


def run_two_stages(cfg: TrainConfig, evol_train_pairs: int, oss_path: Path, evol_path: Path, run_dir: Path,
                   progress=None) -> dict:
    """MagicoderS: train on the OSS-Instruct pairs (adapter-oss/, train_log.jsonl), then on the
    evolved pairs from that adapter (adapter/, train_log_evol.jsonl; `evol_train_pairs` caps them).
    A finished first stage is kept across a crash of the second: its fingerprint is beside it.
    Without evolved pairs the second stage is skipped, said in the stats, and the model is the
    first stage's; it does not ask for more."""
    from repro.console import print_notes

    run_dir = Path(run_dir)
    fp1 = resume_fingerprint(cfg, oss_path, student_checkpoint(cfg.student))
    marker = run_dir / "adapter-oss" / "repro-stage.json"
    done = json.loads(marker.read_text()) if marker.exists() else {}
    s1 = done.get("stats") if done.get("fingerprint") == fp1 else None
    if s1 is None:
        s1 = run(cfg, oss_path, run_dir / "adapter-oss", run_dir / "train_log.jsonl", progress)
        write_json(marker, {"fingerprint": fp1, "stats": s1})
    print_notes("train (stage 1, OSS-Instruct)", s1["notes"], progress)
    if not parquet_rows(evol_path):
        # The 0.5B teacher often rewrites a problem back unchanged; with a few problems evolved
        # none may survive. Stage 1 is the run's model then, said on the console and in the report.
        why = (f"skipped: {evol_path} has no pairs (see evol_rejected.jsonl and evol_removed.parquet; raise "
               "evol.num for more); the adapter is the OSS-Instruct stage's alone")
        with atomic_path(run_dir / "adapter") as tmp:
            shutil.copytree(run_dir / "adapter-oss", tmp, ignore=shutil.ignore_patterns("repro-stage.json"))
        write_text(run_dir / "train_log_evol.jsonl", "")
        print_notes("train (stage 2, Evol-Instruct)", [why], progress)
        return {**s1, "stage1": s1, "stage2_skipped": why, "notes": s1["notes"] + [f"stage 2 {why}"]}
    cfg2 = dataclasses.replace(cfg, max_pairs=evol_train_pairs)
    s2 = run(cfg2, evol_path, run_dir / "adapter", run_dir / "train_log_evol.jsonl", progress,
             ckpt_dir=run_dir / "train_ckpt_evol", init_adapter=run_dir / "adapter-oss")
    print_notes("train (stage 2, Evol-Instruct)", s2["notes"], progress)
    return {**s2, "steps": s1["steps"] + s2["steps"], "first_loss": s1["first_loss"],
            "examples": s1["examples"] + s2["examples"], "stage1": s1, "stage2": s2,
            "notes": s1["notes"] + s2["notes"]}
