"""The LoRA projection x W^T + b + s (x A^T) B^T with the low-rank path fused into the matmul.

PEFT runs a LoRA linear as three launches and a sum over the full output (base matmul, x A^T,
(x A^T) B^T, add). Here x A^T (N x r, small) is a torch matmul, and one Triton matmul computes
x W^T and adds s (x A^T) B^T (+ b) in its epilogue, while the output tile is still in registers:
the rank-r product is one more tl.dot per tile. The backward's dx = dy W + (dy B s) A uses the
same kernel; the small gradients of A and B are torch matmuls.

The base weight and bias are frozen: their gradients are never computed (lora_linear refuses
ones that require grad). Dropout on the LoRA path is not supported: the triton training backend
sets lora_dropout to 0.
"""

import torch

from repro.kernels._triton import require_triton, tl, triton


def lora_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    y = x @ weight.T + scale * ((x @ lora_A.T) @ lora_B.T)
    return y + bias if bias is not None else y


@triton.jit
def _matmul_lowrank(A, B, P, Q, BIAS, C, M, N, K, R,
                    s_am, s_ak, s_bk, s_bn, s_pm, s_pr, s_qr, s_qn, s_cm, s_cn, scale,
                    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
                    GROUP_M: tl.constexpr):
    """C[M, N] = A[M, K] @ B[K, N] + scale * P[M, R] @ Q[R, N] (+ BIAS[N]), fp32 accumulation.

    Every operand comes with its strides, so transposed views need no copy.
    """
    # Grouped tile order: GROUP_M row-tiles share the same columns of B while they are in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    a_ptrs = A + rm[:, None].to(tl.int64) * s_am + rk[None, :] * s_ak
    b_ptrs = B + rk[:, None] * s_bk + rn[None, :].to(tl.int64) * s_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=m_ok[:, None] & (rk[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(rk[:, None] < k_left) & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b.to(a.dtype), acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * s_ak
        b_ptrs += BLOCK_K * s_bk

    # Epilogue: the rank-R path on this output tile (R padded with zeros to BLOCK_R >= 16).
    rr = tl.arange(0, BLOCK_R)
    p = tl.load(P + rm[:, None].to(tl.int64) * s_pm + rr[None, :] * s_pr,
                mask=m_ok[:, None] & (rr[None, :] < R), other=0.0)
    q = tl.load(Q + rr[:, None] * s_qr + rn[None, :].to(tl.int64) * s_qn,
                mask=(rr[:, None] < R) & n_ok[None, :], other=0.0)
    acc += scale * tl.dot(p, q.to(p.dtype), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    c_ptrs = C + rm[:, None].to(tl.int64) * s_cm + rn[None, :] * s_cn
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _fused_matmul(a, b, b_strides, p, q, q_strides, bias, scale, n_out):
    """a[M, K] @ b + scale * p[M, R] @ q (+ bias), with b as [K, n_out] and q as [R, n_out]
    given by the (k, n) strides of the tensors b and q."""
    M, K = a.shape
    R = p.shape[1]
    c = torch.empty((M, n_out), dtype=a.dtype, device=a.device)
    if a.is_cuda:
        bm, bn, bk, warps, stages = (128, 128, 32 if a.dtype == torch.float32 else 64, 8, 3)
    else:  # the interpreter: small tiles, so tests cover several tiles and ragged edges
        bm, bn, bk, warps, stages = 32, 32, 32, 4, 1
    grid = (triton.cdiv(M, bm) * triton.cdiv(n_out, bn),)
    if M and n_out:
        _matmul_lowrank[grid](
            a, b, p, q, bias if bias is not None else c, c, M, n_out, K, R,
            a.stride(0), a.stride(1), *b_strides, p.stride(0), p.stride(1), *q_strides,
            c.stride(0), c.stride(1), float(scale), HAS_BIAS=bias is not None,
            # fp32 inputs: IEEE products (Triton's default there is TF32, torch's is not).
            PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=max(16, triton.next_power_of_2(R)),
            GROUP_M=8, num_warps=warps, num_stages=stages)
    return c


# torch.library custom ops, so torch.compile sees each launch as one opaque op (no graph break).
@torch.library.custom_op("repro_kernels::lowrank_matmul", mutates_args=())
def _lowrank_mm_op(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor, q: torch.Tensor,
                   bias: torch.Tensor | None, scale: float, trans: bool) -> torch.Tensor:
    """a[M, K] @ b' + scale * p[M, R] @ q' (+ bias), b' and q' being b.T and q.T if trans else
    b and q; in a's dtype. Neither a nor p is copied unless it is a non-contiguous view."""
    a, p = a.contiguous(), p.contiguous()
    if trans:  # b [n, K] read as [K, n] through its strides: no transposed copy
        return _fused_matmul(a, b, (b.stride(1), b.stride(0)), p, q, (q.stride(1), q.stride(0)),
                             bias, scale, b.shape[0])
    return _fused_matmul(a, b, (b.stride(0), b.stride(1)), p, q, (q.stride(0), q.stride(1)),
                         bias, scale, b.shape[1])


@_lowrank_mm_op.register_fake
def _(a, b, p, q, bias, scale, trans):
    return a.new_empty((a.shape[0], b.shape[0] if trans else b.shape[1]))


@torch.library.custom_op("repro_kernels::lora_linear", mutates_args=())
def _lora_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 lora_A: torch.Tensor, lora_B: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x[M, in] @ weight.T + bias + scale * (x @ lora_A.T) @ lora_B.T, and x @ lora_A.T
    (kept for the backward). All in x's dtype; checks nothing: see lora_linear()."""
    xa = x @ lora_A.T  # [M, r]
    return _lowrank_mm_op(x, weight, xa, lora_B, bias, scale, True), xa


@_lora_fwd_op.register_fake
def _(x, weight, bias, lora_A, lora_B, scale):
    return x.new_empty((x.shape[0], weight.shape[0])), x.new_empty((x.shape[0], lora_A.shape[0]))


def _lora_setup(ctx, inputs, output):
    x, weight, _, lora_A, lora_B, scale = inputs
    ctx.save_for_backward(x, weight, lora_A, lora_B, output[1])
    ctx.scale = scale


def _lora_backward(ctx, dy, _dxa):
    x, weight, A, B, xa = ctx.saved_tensors
    dy = dy.to(x.dtype)
    d_xa = (dy @ B) * ctx.scale  # [M, r]
    dx = dA = dB = None
    if ctx.needs_input_grad[0]:
        # dy [M, out] @ weight [out, in] + d_xa [M, r] @ lora_A [r, in]: the same fused kernel
        dx = _lowrank_mm_op(dy, weight, d_xa, A, None, 1.0, False)
    if ctx.needs_input_grad[3]:
        dA = d_xa.T @ x
    if ctx.needs_input_grad[4]:
        dB = (dy.T @ xa) * ctx.scale
    return dx, None, None, dA, dB, None


_lora_fwd_op.register_autograd(_lora_backward, setup_context=_lora_setup)


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """x[..., in] @ weight.T + bias + scale * (x @ lora_A.T) @ lora_B.T, in x's dtype.

    weight [out, in] and bias [out] or None: frozen (ValueError if they require grad while
    autograd is on). lora_A [r, in], lora_B [out, r]: PEFT's lora_A.weight / lora_B.weight,
    cast to x's dtype for the product, their gradients returned in their own dtype. No dropout.
    A torch.library op (repro_kernels::lora_linear, ::lowrank_matmul): torch.compile does not
    trace into it.
    """
    require_triton()
    frozen = [t for t in (weight, bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in frozen):
        raise ValueError("lora_linear: weight and bias must be frozen (requires_grad=False); "
                         "their gradients are not computed")
    x2 = x.reshape(-1, x.shape[-1])
    # The casts are autograd's: A's and B's gradients come back in their own dtypes.
    y, _ = _lora_fwd_op(x2, weight, bias, lora_A.to(x.dtype), lora_B.to(x.dtype), float(scale))
    return y.view(*x.shape[:-1], weight.shape[0])
