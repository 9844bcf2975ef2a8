"""RMSNorm forward and backward in Triton, beside its PyTorch reference.

y = x / sqrt(mean(x**2) + eps) * (offset + w), per row of the last dimension. offset=0 is
Llama/Qwen's RMSNorm, offset=1 is Gemma's (which stores w - 1).

The kernel normalises and multiplies by the weight in fp32 for both families and rounds once to
x's dtype. That is Gemma's order; HF Llama/Qwen round the normalised x to the input dtype before
multiplying by the weight, so in bf16 our output can differ from theirs by one bf16 rounding.
"""

import math

import torch

from repro.kernels._triton import require_triton, num_warps, tl, triton

MAX_BLOCK_H = 65536  # one row must fit in one program's block


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float,
                      offset: float = 0.0) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (offset + weight.float())
    return y.to(x.dtype)


@triton.jit
def _rmsnorm_fwd(X, W, Y, RSTD, H, eps, offset, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    x = tl.load(X + row * H + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / H + eps)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * H + cols, (x * rstd * (offset + w)).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rmsnorm_bwd(DY, X, W, RSTD, DX, DW, n_rows, H, offset, rows_per_program,
                 BLOCK_H: tl.constexpr, COMPUTE_DW: tl.constexpr):
    # Each program walks a run of rows and keeps its share of dw in registers: one fp32 partial
    # row per program instead of one per input row.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    w = offset + tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_H], dtype=tl.float32)
    start = pid * rows_per_program
    end = tl.minimum(start + rows_per_program, n_rows)
    first = start.to(tl.int64)
    for i in range(0, end - start):
        row = first + i
        base = row * H
        x = tl.load(X + base + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + base + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        dyw = dy * w
        # d/dx of x*rstd*w: rstd * (dy*w - xhat * mean(dy*w*xhat))
        dx = rstd * (dyw - xhat * (tl.sum(dyw * xhat, axis=0) / H))
        tl.store(DX + base + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if COMPUTE_DW:
            dw += dy * xhat
    if COMPUTE_DW:
        tl.store(DW + pid * H + cols, dw, mask=mask)


def _n_programs(x: torch.Tensor, n_rows: int) -> int:
    if x.is_cuda:
        return min(n_rows, torch.cuda.get_device_properties(x.device).multi_processor_count)
    return min(n_rows, 4)  # the interpreter: few programs, each a Python loop


# torch.library custom ops, so torch.compile sees each launch as one opaque op (no graph break)
# and traces its shapes through the fake implementations below instead of the Triton launch.
@torch.library.custom_op("repro_kernels::rmsnorm_fwd", mutates_args=())
def _rmsnorm_fwd_op(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y (x's shape, contiguous) and each row's 1/rms (fp32). Checks nothing: see rmsnorm()."""
    H = x.shape[-1]
    x2 = x.reshape(-1, H).contiguous()
    y = torch.empty_like(x2)
    rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
    if x2.shape[0]:
        block = triton.next_power_of_2(H)
        _rmsnorm_fwd[(x2.shape[0],)](x2, weight.contiguous(), y, rstd, H, eps, offset,
                                     BLOCK_H=block, num_warps=num_warps(block))
    return y.view(x.shape), rstd


@_rmsnorm_fwd_op.register_fake
def _(x, weight, eps, offset):
    return x.new_empty(x.shape), x.new_empty(math.prod(x.shape[:-1]), dtype=torch.float32)


@torch.library.custom_op("repro_kernels::rmsnorm_bwd", mutates_args=())
def _rmsnorm_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor,
                    offset: float, need_dw: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dx (x's shape) and dw (weight's dtype; empty unless need_dw)."""
    H = x.shape[-1]
    x2 = x.reshape(-1, H).contiguous()
    n_rows = x2.shape[0]
    dy2 = dy.reshape(-1, H).contiguous()
    dx = torch.empty_like(x2)
    programs = max(1, _n_programs(x2, n_rows))
    dw_part = torch.zeros((programs, H) if need_dw else (1,), dtype=torch.float32,
                          device=x2.device)
    if n_rows:
        block = triton.next_power_of_2(H)
        _rmsnorm_bwd[(programs,)](dy2, x2, weight.contiguous(), rstd, dx, dw_part, n_rows, H,
                                  offset, triton.cdiv(n_rows, programs), BLOCK_H=block,
                                  COMPUTE_DW=need_dw, num_warps=num_warps(block))
    dw = dw_part.sum(0).to(weight.dtype) if need_dw else weight.new_empty(0)
    return dx.view(x.shape), dw


@_rmsnorm_bwd_op.register_fake
def _(dy, x, weight, rstd, offset, need_dw):
    return x.new_empty(x.shape), weight.new_empty(weight.shape if need_dw else (0,))


def _rmsnorm_setup(ctx, inputs, output):
    x, weight, _, offset = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.offset = offset


def _rmsnorm_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    need_dw = ctx.needs_input_grad[1]
    dx, dw = _rmsnorm_bwd_op(dy, x, weight, rstd, ctx.offset, need_dw)
    return dx, dw if need_dw else None, None, None


_rmsnorm_fwd_op.register_autograd(_rmsnorm_backward, setup_context=_rmsnorm_setup)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0) -> torch.Tensor:
    """RMSNorm over the last dimension of x[..., H] with weight[H]; gradients for x and weight.

    Same value as rmsnorm_reference (fp32 inside, returned in x's dtype); rows up to 65536 wide.
    A torch.library op (repro_kernels::rmsnorm_fwd/_bwd): torch.compile does not trace into it.
    """
    require_triton()
    if triton.next_power_of_2(x.shape[-1]) > MAX_BLOCK_H:
        raise ValueError(f"rmsnorm: hidden size {x.shape[-1]} is over the kernel's {MAX_BLOCK_H}")
    return _rmsnorm_fwd_op(x, weight, float(eps), float(offset))[0]
