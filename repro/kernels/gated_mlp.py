"""The gated MLP activation act(gate) * up in Triton, forward and backward, beside its reference.

kind "swiglu": silu(gate) * up (Qwen, Llama); kind "geglu": gelu_tanh(gate) * up (Gemma, whose
config says gelu_pytorch_tanh). One elementwise pass each way instead of PyTorch's chain of
intermediate tensors; the backward recomputes act(gate) rather than saving it.
"""

import torch
import torch.nn.functional as F

from repro.kernels._triton import require_triton, tl, triton

KINDS = {"swiglu": 0, "geglu": 1}
BLOCK = 1024


def gated_act_reference(gate: torch.Tensor, up: torch.Tensor, kind: str) -> torch.Tensor:
    g = gate.float()
    if kind == "swiglu":
        act = F.silu(g)
    elif kind == "geglu":
        act = F.gelu(g, approximate="tanh")
    else:
        raise ValueError(f"gated_act: unknown kind {kind!r}; one of {sorted(KINDS)}")
    return (act * up.float()).to(gate.dtype)


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))  # never overflows
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _act_and_grad(g, KIND: tl.constexpr):
    """act(g) and act'(g) in fp32. tanh is 2*sigmoid(2z) - 1: portable across Triton versions."""
    if KIND == 0:
        s = _sigmoid(g)
        act = g * s
        dact = s * (1.0 + g * (1.0 - s))
    else:
        c = 0.7978845608028654  # sqrt(2 / pi)
        t = 2.0 * _sigmoid(2.0 * c * (g + 0.044715 * g * g * g)) - 1.0
        act = 0.5 * g * (1.0 + t)
        dact = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * g * g)
    return act, dact


@triton.jit
def _gated_fwd(G, U, Y, n, KIND: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    act, _ = _act_and_grad(g, KIND)
    tl.store(Y + offs, (act * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gated_bwd(DY, G, U, DG, DU, n, KIND: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    act, dact = _act_and_grad(g, KIND)
    tl.store(DG + offs, (dy * u * dact).to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + offs, (dy * act).to(DU.dtype.element_ty), mask=mask)


# torch.library custom ops, so torch.compile sees each launch as one opaque op (no graph break).
@torch.library.custom_op("repro_kernels::gated_act_fwd", mutates_args=())
def _gated_fwd_op(gate: torch.Tensor, up: torch.Tensor, kind: int) -> torch.Tensor:
    """act(gate) * up, contiguous, gate's dtype. Checks nothing: see gated_act()."""
    gate, up = gate.contiguous(), up.contiguous()
    y = torch.empty_like(gate)
    n = gate.numel()
    if n:
        _gated_fwd[(triton.cdiv(n, BLOCK),)](gate, up, y, n, KIND=kind, BLOCK=BLOCK)
    return y


@_gated_fwd_op.register_fake
def _(gate, up, kind):
    return gate.new_empty(gate.shape)


@torch.library.custom_op("repro_kernels::gated_act_bwd", mutates_args=())
def _gated_bwd_op(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                  kind: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d gate, d up (contiguous, in gate's and up's dtypes)."""
    dy, gate, up = dy.contiguous(), gate.contiguous(), up.contiguous()
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    if n:
        _gated_bwd[(triton.cdiv(n, BLOCK),)](dy, gate, up, dg, du, n, KIND=kind, BLOCK=BLOCK)
    return dg, du


@_gated_bwd_op.register_fake
def _(dy, gate, up, kind):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _gated_setup(ctx, inputs, output):
    gate, up, kind = inputs
    ctx.save_for_backward(gate, up)
    ctx.kind = kind


def _gated_backward(ctx, dy):
    gate, up = ctx.saved_tensors
    dg, du = _gated_bwd_op(dy, gate, up, ctx.kind)
    return dg, du, None


_gated_fwd_op.register_autograd(_gated_backward, setup_context=_gated_setup)


def gated_act(gate: torch.Tensor, up: torch.Tensor, kind: str) -> torch.Tensor:
    """act(gate) * up for gate, up of the same shape; gradients for both; returns gate's dtype.

    Computes in fp32 inside. Both inputs are made contiguous (a copy if they are views). A
    torch.library op (repro_kernels::gated_act_fwd/_bwd): torch.compile does not trace into it.
    """
    if kind not in KINDS:
        raise ValueError(f"gated_act: unknown kind {kind!r}; one of {sorted(KINDS)}")
    if gate.shape != up.shape:
        raise ValueError(f"gated_act: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    require_triton()
    return _gated_fwd_op(gate, up, KINDS[kind])
