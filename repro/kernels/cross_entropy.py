"""Fused linear + cross-entropy that never holds the full [N, V] logits, beside its reference.

The language-model head's logits are the largest activation of a training step: N tokens x V
vocabulary, 262K wide for Gemma. Here rows go through in chunks: a chunk's logits come from one
torch matmul, a Triton kernel turns each row into its loss and overwrites the row with the
gradient of the loss with respect to the logits (softmax - onehot, times the softcap's
derivative), and the chunk's share of the hidden states' (and, if asked, the weight's) gradient
is taken right away, during the forward pass (as Liger-Kernel does). The backward only scales the
stored gradients by the incoming one. Memory: one chunk of logits plus the gradients.

The loss is the SUM over labels != ignore_index (divide by the number of counted tokens for the
mean, as HF's causal-LM loss does).
"""

import torch

from repro.kernels._triton import num_warps, require_triton, tl, triton

MAX_BLOCK_V = 32768  # vocabulary entries a program handles per step of its loop over a row
CHUNK_ELEMENTS = 2 ** 26  # default chunk: rows whose logits make ~256 MiB in fp32


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor,
                                   labels: torch.Tensor, ignore_index: int = -100,
                                   softcap: float | None = None) -> torch.Tensor:
    logits = hidden.reshape(-1, hidden.shape[-1]).float() @ weight.float().T
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.nn.functional.cross_entropy(logits, labels.reshape(-1), ignore_index=ignore_index,
                                             reduction="sum")


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))  # never overflows; libdevice's tanh moved across versions
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _ce_loss_and_grad(LOGITS, LABELS, LOSS, V, stride, ignore_index, softcap,
                      HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr):
    """One row: its loss into LOSS[row], d loss / d logits over the row itself."""
    row = tl.program_id(0).to(tl.int64)
    ptr = LOGITS + row * stride
    label = tl.load(LABELS + row)
    if label == ignore_index:
        for off in range(0, V, BLOCK_V):
            cols = off + tl.arange(0, BLOCK_V)
            tl.store(ptr + cols, tl.zeros([BLOCK_V], dtype=tl.float32).to(LOGITS.dtype.element_ty),
                     mask=cols < V)
        tl.store(LOSS + row, 0.0)
        return

    # Pass 1: running max m and sum d of exp(z - m) (online softmax).
    m = float("-inf")
    d = 0.0
    for off in range(0, V, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        mask = cols < V
        z = tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            z = softcap * _tanh(z / softcap)
        z = tl.where(mask, z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    z_label = tl.load(ptr + label).to(tl.float32)
    if HAS_SOFTCAP:
        z_label = softcap * _tanh(z_label / softcap)
    tl.store(LOSS + row, tl.log(d) + m - z_label)

    # Pass 2: the gradient, in place.
    for off in range(0, V, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        mask = cols < V
        z = tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            t = _tanh(z / softcap)
            z = softcap * t
        grad = tl.exp(z - m) / d
        grad = tl.where(cols == label, grad - 1.0, grad)
        if HAS_SOFTCAP:
            grad = grad * (1.0 - t * t)
        tl.store(ptr + cols, grad.to(LOGITS.dtype.element_ty), mask=mask)


# A torch.library custom op, so torch.compile sees the whole chunked loop as one opaque op (no
# graph break, and no tracing of the Python loop over chunks).
@torch.library.custom_op("repro_kernels::fused_linear_cross_entropy", mutates_args=())
def _flce_op(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int,
             softcap: float | None, chunk_size: int | None, need_h: bool,
             need_w: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The summed loss (fp32 scalar), d loss / d hidden (hidden's shape and dtype; empty unless
    need_h), d loss / d weight (fp32, weight's shape; empty unless need_w)."""
    H = hidden.shape[-1]
    h = hidden.reshape(-1, H)
    y = labels.reshape(-1).contiguous()
    N, V = h.shape[0], weight.shape[0]
    bad = (y != ignore_index) & ((y < 0) | (y >= V))
    if bad.any():
        raise ValueError(f"fused_linear_cross_entropy: a label is outside [0, {V}) and is not "
                         f"ignore_index={ignore_index}")
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // V)
    block = min(MAX_BLOCK_V, triton.next_power_of_2(V))
    loss_rows = torch.empty(N, dtype=torch.float32, device=h.device)
    grad_h = torch.empty(h.shape, dtype=h.dtype, device=h.device) if need_h else h.new_empty(0)
    # The weight's gradient sums over every chunk: keep that sum in fp32.
    grad_w = torch.zeros(weight.shape if need_w else (0,), dtype=torch.float32, device=h.device)
    for start in range(0, N, chunk):
        hc = h[start:start + chunk]
        logits = (hc @ weight.T).contiguous()  # [chunk, V]; becomes d loss / d logits
        _ce_loss_and_grad[(hc.shape[0],)](
            logits, y[start:start + chunk], loss_rows[start:start + chunk], V,
            logits.stride(0), ignore_index, 1.0 if softcap is None else float(softcap),
            HAS_SOFTCAP=softcap is not None, BLOCK_V=block, num_warps=num_warps(block))
        if need_h:
            grad_h[start:start + chunk] = logits @ weight
        if need_w:
            with torch.autocast(h.device.type, enabled=False):
                grad_w.addmm_(logits.T.float(), hc.float())
    return loss_rows.sum(), grad_h.view(hidden.shape) if need_h else grad_h, grad_w


@_flce_op.register_fake
def _(hidden, weight, labels, ignore_index, softcap, chunk_size, need_h, need_w):
    return (hidden.new_empty((), dtype=torch.float32), hidden.new_empty(hidden.shape if need_h else (0,)),
            hidden.new_empty(weight.shape if need_w else (0,), dtype=torch.float32))


def _flce_setup(ctx, inputs, output):
    _, weight, _, _, _, _, need_h, need_w = inputs
    ctx.save_for_backward(output[1], output[2])
    ctx.need_h, ctx.need_w, ctx.weight_dtype = need_h, need_w, weight.dtype


def _flce_backward(ctx, grad_out, _dgh, _dgw):
    # The gradients were taken in the forward pass: only scale them by the incoming one.
    grad_h, grad_w = ctx.saved_tensors
    dh = grad_h * grad_out.to(grad_h.dtype) if ctx.need_h else None
    dw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.need_w else None
    return dh, dw, None, None, None, None, None, None


_flce_op.register_autograd(_flce_backward, setup_context=_flce_setup)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               ignore_index: int = -100, softcap: float | None = None,
                               chunk_size: int | None = None) -> torch.Tensor:
    """Sum of cross-entropy of (hidden @ weight.T) against labels, without the full logits.

    hidden[..., H], weight[V, H] (lm_head or the tied embedding), labels[...] matching hidden's
    leading shape. softcap: Gemma-2's final_logit_softcapping (logits -> c*tanh(logits/c)).
    chunk_size: rows per chunk (default: ~256 MiB of fp32 logits). The logits are computed in
    the inputs' dtype (as HF's lm_head does) and the loss from them in fp32. Returns an fp32
    scalar; gradients for hidden and, if it requires grad, weight. Labels outside [0, V) other
    than ignore_index raise ValueError (one device sync per call). A torch.library op
    (repro_kernels::fused_linear_cross_entropy): torch.compile does not trace into it.
    """
    require_triton()
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_size must be >= 1, got {chunk_size}")
    N = hidden.numel() // hidden.shape[-1] if hidden.shape[-1] else 0
    if labels.numel() != N:
        raise ValueError(f"fused_linear_cross_entropy: {N} rows of hidden, {labels.numel()} labels")
    grad = torch.is_grad_enabled()
    loss, _, _ = _flce_op(hidden, weight, labels, int(ignore_index),
                          None if softcap is None else float(softcap), chunk_size,
                          grad and hidden.requires_grad, grad and weight.requires_grad)
    return loss
