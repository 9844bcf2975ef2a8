"""The student in training: which transformers checkpoint a `train.student` spec means, the
device and precision, the model with LoRA on one of three backends (peft, triton, unsloth), and the
loss head that never builds the logits of the prompt positions.

It trains nothing (repro/train.py runs the loop) and converts nothing to GGUF (repro/export.py)."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from repro.artifacts import ReproError
from repro.config import TrainConfig

BACKENDS = ("peft", "triton", "unsloth")
CUDA_ONLY = ("triton", "unsloth")


# ---------------------------------------------------------------------------------------------
# Settings and devices


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(cfg: TrainConfig) -> str:
    """'cuda' or 'cpu' for these settings, or a ReproError naming the setting and the fix."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.backend in CUDA_ONLY:
        if cfg.device == "cpu":
            raise ReproError(f"train.backend={cfg.backend} runs on CUDA only; drop train.device=cpu "
                             "or use train.backend=peft")
        if not cuda:
            raise ReproError(f"train.backend={cfg.backend} needs a CUDA GPU; none found — use train.backend=peft")
        return "cuda"
    if cfg.device == "cuda" and not cuda:
        raise ReproError("train.device=cuda: no CUDA GPU found; use train.device=auto or cpu")
    return "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu"


def use_bf16(cfg: TrainConfig, device: str) -> bool:
    import torch

    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    return torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_bf16()


def student_checkpoint(spec: str) -> Path:
    """A transformers checkpoint folder for a student spec (repro.models.checkpoint_dir: a local
    folder, a hub model id, or a GGUF dequantized), or one line saying why not."""
    from repro.models import checkpoint_dir

    try:
        return checkpoint_dir(spec)
    except ReproError:
        raise
    except Exception as e:  # transformers' GGUF loader: an architecture it cannot dequantize, a bad file
        raise ReproError(f"train.student={spec}: transformers could not read this GGUF "
                         f"({brief(e)}); choose a student transformers supports") from None


def brief(e: Exception) -> str:
    """An exception as a short single line, to sit inside a one-line error."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}{'…' if len(text) > 200 else ''}"


def load_tokenizer(cfg: TrainConfig, ckpt: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ckpt)
    except Exception as e:
        raise ReproError(f"train.student={cfg.student}: its tokenizer does not load from {ckpt} "
                         f"({brief(e)}); give a checkpoint with tokenizer files") from None


# ---------------------------------------------------------------------------------------------
# Models and backends


@dataclass
class Backend:
    """Where and how a step runs: device, autocast, and the loss head."""
    name: str = "peft"
    device: str = "cpu"
    bf16: bool = False
    # (hidden[N, H], lm_head module, targets[N], softcap) -> summed cross-entropy; None: logits_head
    head: Callable | None = None

    def autocast(self):
        import torch

        return torch.autocast(self.device, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    @property
    def precision(self) -> str:
        return "bf16-autocast" if self.bf16 else "fp32"


def lora_targets(model, cfg: TrainConfig) -> list[str]:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in cfg.target_modules if m in present]
    if not targets:
        raise ReproError(f"train.target_modules={cfg.target_modules}: none of these modules exist in the "
                         "student; name its linear layers (e.g. q_proj,v_proj)")
    return targets


def add_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_targets(model, cfg), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def kernel_backend(model, device: str, bf16: bool, impl: str = "triton") -> tuple[Backend, dict]:
    """Patch repro/kernels/ into `model` (in place) and return the backend whose loss is the fused head.

    impl="reference" installs the kernels' PyTorch references instead: same patching, any device
    (the CPU tests check the patching with it).
    """
    from repro.kernels.patch import kernel_functions, patch_model

    counts = patch_model(model, impl)
    lce = kernel_functions(impl).linear_cross_entropy

    def head(h, lm_head, targets, softcap):
        if not plain_head(lm_head):
            return logits_head(h, lm_head, targets, softcap)
        return lce(h, lm_head.weight.to(h.dtype), targets, softcap=softcap)

    return Backend("triton", device, bf16, head), counts


def load_model(cfg: TrainConfig, ckpt: Path, device: str, bf16: bool) -> tuple[object, Backend, list[str]]:
    """The student with LoRA, ready for `train_loop` with the returned backend; plus notes."""
    import torch

    if cfg.backend == "unsloth":
        return _load_unsloth(cfg, ckpt, bf16)
    from transformers import AutoModelForCausalLM

    notes = []
    # CPU: fp32 weights, the residual stream in fp32 under autocast; with bf16, frozen_linears_to
    # below stores just the projections in bf16. CUDA in bf16: the whole frozen base in bf16 (half
    # the memory, no cast per step). PEFT keeps the LoRA weights in fp32 either way.
    dtype = torch.bfloat16 if device == "cuda" and bf16 else torch.float32
    try:
        # SDPA on the CPU too: its fused kernel keeps no [heads, seq, seq] probabilities for the
        # backward (eager attention's are ~0.4 GB at 1,216 tokens over Gemma's 18 layers).
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa")
    except Exception as e:
        raise ReproError(f"train.student={cfg.student}: transformers could not load the weights in {ckpt} "
                         f"({brief(e)})") from None
    model.to(device)
    if cfg.backend == "triton" and cfg.lora_dropout:
        notes.append(f"train.lora_dropout={cfg.lora_dropout} set to 0 for the triton backend "
                     "(the fused LoRA kernel has no dropout)")
        cfg = dataclasses.replace(cfg, lora_dropout=0.0)
    model = add_lora(model, cfg)
    if device == "cpu" and bf16 and cfg.backend == "peft":
        frozen_linears_to(model, torch.bfloat16)
    backend = Backend("peft", device, bf16, chunked_head)
    if cfg.backend == "triton":
        backend, counts = kernel_backend(model, device, bf16)
        left = ", ".join(f"{k} ×{v}" for k, v in counts["left_alone"].items())
        notes.append(f"kernels: {counts['rmsnorm']} RMSNorm, {counts['mlp']} MLP activations, "
                     f"{counts['lora_linear']} LoRA projections patched, fused linear + cross-entropy loss"
                     + (f"; left on PyTorch: {left}" if left else ""))
    if cfg.compile:
        decoder(model).compile()  # in place: parameter names (and the saved adapter) unchanged
    return model, backend, notes


def frozen_linears_to(model, dtype) -> int:
    """Store the frozen weights of the Linear layers in `dtype` (autocast's), and say how many.

    Autocast casts a weight that needs no gradient anew on every forward: on the CPU that was
    100M parameters converted per example, the conversions' fresh 1-3 MiB outputs each a new
    mmap whose page faults cost more than the conversion. The matmuls see the same bf16 values as
    before. Embeddings, norms and the output head (tied to the embedding in Gemma) stay fp32, so
    the residual stream stays fp32 too; the LoRA weights are trainable and untouched.
    """
    import torch

    head = model.get_output_embeddings()
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m is not head and not m.weight.requires_grad:
            m.weight.data = m.weight.data.to(dtype)
            if m.bias is not None and not m.bias.requires_grad:
                m.bias.data = m.bias.data.to(dtype)
            n += 1
    return n


def _load_unsloth(cfg: TrainConfig, ckpt: Path, bf16: bool):
    from unsloth import FastLanguageModel  # imported before transformers by check_settings/run

    # dtype=None: Unsloth picks the dtype (bf16 where the GPU has it). Unquantized base weights:
    # QLoRA (load_in_4bit) would change the model being trained, not only its speed. No gradient
    # checkpointing (Unsloth's default; for Gemma 3 it is set at loading): the other backends do
    # not recompute activations either, so the comparison is of kernels, not of memory for time.
    model, _ = FastLanguageModel.from_pretrained(model_name=str(ckpt), max_seq_length=cfg.max_len,
                                                 dtype=None, load_in_4bit=False,
                                                 use_gradient_checkpointing=False)
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora_r, target_modules=lora_targets(model, cfg), lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, bias="none", use_gradient_checkpointing=False, random_state=cfg.seed)
    return model, Backend("unsloth", "cuda", bf16), []


def causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder(model):
    lm = causal_lm(model)
    return getattr(lm, lm.base_model_prefix)


# ---------------------------------------------------------------------------------------------
# Loss


def logits_head(h, lm_head, targets, softcap):
    """Summed cross-entropy from the logits of the kept positions only."""
    import torch
    import torch.nn.functional as F

    logits = lm_head(h).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets, reduction="sum")


# Rows of a chunk in `chunked_head`: its logits make ~256 MiB in fp32.
CHUNK_ELEMENTS = 2 ** 26


def plain_head(lm_head) -> bool:
    """Whether the output head is a plain, frozen Linear, so that its weight alone gives the logits.
    Not so when train.target_modules names lm_head (a PEFT LoRA layer: its LoRA must see the
    hidden states) or the head trains: the fast heads then go the plain way, `lm_head(h)`."""
    import torch

    return isinstance(lm_head, torch.nn.Linear) and not lm_head.weight.requires_grad


def frozen_cast(module, dtype):
    """`module.weight` in `dtype`, converted once and kept on the module while the weight is
    unchanged: Gemma's head is its 262K x 640 embedding, and converting it for every example
    wrote 335 MB to fresh pages each time. Not for a weight that trains."""
    w = module.weight
    if w.dtype == dtype:
        return w
    key = (w.data_ptr(), w._version, dtype)
    kept = module.__dict__.get("_repro_cast")
    if kept is None or kept[0] != key:
        kept = (key, w.detach().to(dtype))
        module.__dict__["_repro_cast"] = kept
    return kept[1]


def _workspace(module, name: str, rows: int, cols: int, device):
    """An fp32 [rows, cols] scratch tensor, a view of one kept on `module` for later calls (and
    grown when too small); what it held before is garbage. For the chunked head's logits: a fresh
    256-MiB buffer per example cost 65K page faults each time on the CPU."""
    import torch

    kept = module.__dict__.setdefault("_repro_workspace", {})
    t = kept.get(name)
    if t is None or t.shape[0] < rows or t.shape[1] != cols or t.device != torch.device(device):
        kept.pop(name, None)  # the old one goes before the new one is allocated
        t = kept[name] = torch.empty((rows, cols), dtype=torch.float32, device=device)
    return t[:rows]


def chunked_head(h, lm_head, targets, softcap):
    """`logits_head`'s result and hidden-state gradient without the full [N, V] logits, in
    PyTorch ops (any device): the design of repro/kernels/cross_entropy.py. Rows go through in chunks;
    each chunk's logits give its loss and, at once, its rows' gradient (softmax - onehot, times
    the softcap's derivative) @ W, so the backward only scales what the forward stored. The
    head's weight gets no gradient: in a LoRA student it is frozen (Gemma ties it to the
    embedding); a head that trains, or carries a LoRA, goes the plain way (`plain_head`).

    Why: with Gemma's 262K vocabulary the full logits of 600 response tokens are 630 MB in fp32,
    and the cross-entropy's softmax and gradients hold several copies of them.
    """
    import torch

    if not plain_head(lm_head):
        return logits_head(h, lm_head, targets, softcap)

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden):
            w = lm_head.weight
            dev = hidden.device.type
            # Autocast's dtype for the matmul, cast once per call (autocast would cast the frozen
            # weight again for every chunk).
            dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
            with torch.autocast(dev, enabled=False):
                wd, hd = frozen_cast(lm_head, dt), hidden.to(dt)
                n, V = hd.shape[0], w.shape[0]
                chunk = max(1, min(n, CHUNK_ELEMENTS // V))
                total = torch.zeros((), dtype=torch.float32, device=hidden.device)
                grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
                # One fp32 buffer for every chunk's logits, worked on in place and kept between
                # calls: fresh 256-MiB temporaries per chunk (the float copy, logsumexp's, the
                # softmax) were each a new mmap on the CPU, faulted in page by page.
                buf = _workspace(lm_head, "logits", chunk, V, hidden.device)
                t_buf = _workspace(lm_head, "tanh", chunk, V, hidden.device) if softcap is not None else None
                for s in range(0, n, chunk):
                    e = min(n, s + chunk)
                    z = buf[:e - s]
                    if dt == torch.float32:
                        torch.mm(hd[s:e], wd.T, out=z)
                    else:
                        z.copy_(hd[s:e] @ wd.T)
                    y = targets[s:e, None]
                    t = None
                    if softcap is not None:
                        t = torch.div(z, softcap, out=t_buf[:e - s]).tanh_()
                        torch.mul(t, softcap, out=z)
                    m = z.amax(dim=-1, keepdim=True)
                    zy = z.gather(1, y)
                    sums = z.sub_(m).exp_().sum(dim=-1, keepdim=True)  # z: exp(z - max)
                    total += (m + sums.log() - zy).sum()  # logsumexp - target logit
                    if grad is not None:
                        g = z.div_(sums)  # softmax
                        g.scatter_add_(1, y, torch.full_like(zy, -1.0))
                        if t is not None:
                            g.mul_(t.mul_(t).neg_().add_(1.0))  # the softcap's derivative
                        grad[s:e] = (g.to(dt) @ wd).to(grad.dtype)
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, grad_out):
            (grad,) = ctx.saved_tensors
            return grad * grad_out.to(grad.dtype)

    return Fn.apply(h)


def batch_loss(model, ids, labels, head: Callable | None = None):
    """Summed cross-entropy over labels != -100 of a [batch, seq] batch, and the count.

    The decoder's hidden states are kept only where the next token is a label, and the head sees
    just those rows. Right padding needs no attention mask: under the causal mask no real token
    attends to the pads that follow it, and pads carry label -100.
    """
    lm = causal_lm(model)
    hidden = decoder(model)(input_ids=ids, use_cache=False).last_hidden_state
    keep = labels[:, 1:] != -100  # position t predicts token t+1
    targets = labels[:, 1:][keep]
    loss = (head or logits_head)(hidden[:, :-1][keep], lm.get_output_embeddings(), targets,
                                 getattr(lm.config, "final_logit_softcapping", None))
    return loss, int(targets.numel())
