"""The Triton kernels against their PyTorch references, forward and gradients, on random inputs.

Without a GPU they run on the CPU in Triton's interpreter (TRITON_INTERPRET=1, set by
conftest.py) in fp32 and fp16: the interpreter mishandles bf16, so bf16 cases are `gpu`-marked.
On CUDA the same tests run the compiled kernels. Shapes are small and odd on purpose: ragged
blocks, leading batch dimensions, several programs per launch. At the end: the kernels' custom
ops under torch.library.opcheck and torch.compile (one graph, eager's loss and gradients).
"""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed (it is in the dev extra)")

import torch  # noqa: E402

from repro import kernels  # noqa: E402
from repro.kernels import (KERNELS, fused_linear_cross_entropy, gated_act, gated_act_reference,  # noqa: E402
                           linear_cross_entropy_reference, lora_linear, lora_linear_reference, rmsnorm,
                           rmsnorm_reference)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1 (tests/conftest.py sets it when "
                "there is no /dev/nvidia*)", allow_module_level=True)

DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]
# Elementwise kernels vs a reference that also computes in fp32: one rounding of the result
# apart (fp16 has 11 bits, bf16 8).
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}
# Matmul-based kernels vs an fp32 reference: the kernel rounds its inputs' products (logits,
# x A^T) to the inputs' dtype, as the models do.
MM_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
          torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


def _randn(*shape, dtype=torch.float32, scale=1.0, grad=True):
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype).requires_grad_(grad)


def _forward_backward(fn, tensors, args, cotangent=None):
    """fn(*tensors, *args) and the gradients of sum(out * cotangent) for tensors requiring grad."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
    out = fn(*leaves, *args)
    (out * cotangent if cotangent is not None else out).float().sum().backward()
    return out, [t.grad for t in leaves if t.requires_grad]


def _assert_close(got, want, tol, upcast=False):
    for g, w in zip(got, want, strict=True):
        assert upcast or g.dtype == w.dtype
        torch.testing.assert_close(g.float(), w.float(), **tol)


@pytest.mark.parametrize("shape", [(37, 64), (2, 5, 33)])
@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm_matches_reference(shape, offset, dtype):
    torch.manual_seed(0)
    x, w = _randn(*shape, dtype=dtype), _randn(shape[-1], dtype=dtype, scale=0.5)
    dy = _randn(*shape, dtype=dtype, grad=False)
    y, grads = _forward_backward(rmsnorm, [x, w], (1e-6, offset), dy)
    y_ref, grads_ref = _forward_backward(rmsnorm_reference, [x, w], (1e-6, offset), dy)
    _assert_close([y, *grads], [y_ref, *grads_ref], TOL[dtype])


def test_rmsnorm_frozen_weight_gets_no_gradient():
    torch.manual_seed(0)
    x, w = _randn(3, 7, 40), _randn(40, grad=False)
    (y, (dx,)), (y_ref, (dx_ref,)) = (_forward_backward(f, [x, w], (1e-5,))
                                      for f in (rmsnorm, rmsnorm_reference))
    _assert_close([y, dx], [y_ref, dx_ref], TOL[torch.float32])


@pytest.mark.parametrize("kind", ["swiglu", "geglu"])
@pytest.mark.parametrize("shape", [(37, 50), (2, 3, 1029)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_act_matches_reference(kind, shape, dtype):
    torch.manual_seed(0)
    gate, up = _randn(*shape, dtype=dtype, scale=3.0), _randn(*shape, dtype=dtype)
    dy = _randn(*shape, dtype=dtype, grad=False)
    y, grads = _forward_backward(gated_act, [gate, up], (kind,), dy)
    y_ref, grads_ref = _forward_backward(gated_act_reference, [gate, up], (kind,), dy)
    _assert_close([y, *grads], [y_ref, *grads_ref], TOL[dtype])


def test_gated_act_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown kind"):
        gated_act(_randn(4), _randn(4), "relu")


def _ce_inputs(dtype, n=37, h=24, v=300):
    hidden = _randn(n, h, dtype=dtype)
    weight = _randn(v, h, dtype=dtype, scale=0.3)
    labels = torch.randint(0, v, (n,), device=DEVICE)
    labels[::4] = -100
    labels[8:16] = -100  # with chunk_size=8: one whole chunk ignored
    return hidden, weight, labels


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("weight_grad", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_linear_cross_entropy_matches_reference(softcap, weight_grad, dtype, monkeypatch):
    # Blocks of 64 over V=300: the online softmax runs over several blocks, the last one ragged.
    monkeypatch.setattr(kernels.cross_entropy, "MAX_BLOCK_V", 64)
    torch.manual_seed(0)
    hidden, weight, labels = _ce_inputs(dtype)
    weight.requires_grad_(weight_grad)
    scale = torch.tensor(0.37, device=DEVICE)  # as if divided by the number of counted tokens
    got = _forward_backward(fused_linear_cross_entropy, [hidden, weight],
                            (labels, -100, softcap, 8), scale)
    want = _forward_backward(linear_cross_entropy_reference, [hidden, weight],
                             (labels, -100, softcap), scale)
    assert got[0].dtype == torch.float32 and got[0].shape == ()
    _assert_close([got[0], *got[1]], [want[0], *want[1]], MM_TOL[dtype])
    assert len(got[1]) == (2 if weight_grad else 1)
    assert not got[1][0][8:16].any()  # the ignored chunk's rows get no gradient


def test_fused_linear_cross_entropy_chunks_change_nothing():
    torch.manual_seed(0)
    hidden, weight, labels = _ce_inputs(torch.float32)
    hidden3 = hidden.detach().reshape(1, 37, 24).requires_grad_()
    runs = [_forward_backward(fused_linear_cross_entropy, [hidden3, weight],
                              (labels.reshape(1, 37), -100, None, chunk))
            for chunk in (5, 37, None)]
    for loss, grads in runs[1:]:
        torch.testing.assert_close(loss, runs[0][0], rtol=1e-6, atol=1e-6)
        _assert_close(grads, runs[0][1], dict(rtol=1e-6, atol=1e-6))
    assert runs[0][1][0].shape == (1, 37, 24)


def test_fused_linear_cross_entropy_all_ignored_is_zero():
    hidden, weight, _ = _ce_inputs(torch.float32)
    labels = torch.full((37,), -100, device=DEVICE)
    loss, (dh, dw) = _forward_backward(fused_linear_cross_entropy, [hidden, weight],
                                       (labels, -100, None, 8))
    assert loss.item() == 0.0 and not dh.any() and not dw.any()


def test_fused_linear_cross_entropy_without_autograd_gives_the_same_loss():
    hidden, weight, labels = _ce_inputs(torch.float32)
    with torch.no_grad():
        loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=8)
    want = linear_cross_entropy_reference(hidden, weight, labels)
    torch.testing.assert_close(loss, want, **MM_TOL[torch.float32])
    assert loss.grad_fn is None


def test_fused_linear_cross_entropy_rejects_out_of_range_labels():
    hidden, weight, labels = _ce_inputs(torch.float32)
    labels[1] = 300
    with pytest.raises(ValueError, match="outside"):
        fused_linear_cross_entropy(hidden, weight, labels)


@pytest.mark.parametrize("lead,d_in,d_out", [((37,), 48, 40), ((2, 5), 33, 70)])
@pytest.mark.parametrize("r", [4, 8])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_linear_matches_reference(lead, d_in, d_out, r, with_bias, dtype):
    torch.manual_seed(0)
    x = _randn(*lead, d_in, dtype=dtype)
    weight = _randn(d_out, d_in, dtype=dtype, scale=d_in ** -0.5, grad=False)
    bias = _randn(d_out, dtype=dtype, grad=False) if with_bias else None
    lora_A = _randn(r, d_in, dtype=dtype, scale=d_in ** -0.5)
    lora_B = _randn(d_out, r, dtype=dtype, scale=0.1)
    dy = _randn(*lead, d_out, dtype=dtype, grad=False)
    scale = 16 / r  # lora_alpha / r
    y, grads = _forward_backward(lambda x, a, b: lora_linear(x, weight, bias, a, b, scale),
                                 [x, lora_A, lora_B], (), dy)
    f32 = [t.float() if t is not None else None for t in (weight, bias)]
    y_ref, grads_ref = _forward_backward(
        lambda x, a, b: lora_linear_reference(x, f32[0], f32[1], a, b, scale),
        [t.float() for t in (x, lora_A, lora_B)], (), dy.float())
    assert y.dtype == dtype and [g.dtype for g in grads] == [dtype] * 3
    _assert_close([y, *grads], [y_ref, *grads_ref], MM_TOL[dtype], upcast=True)


def test_lora_linear_refuses_a_trainable_base_weight():
    w = _randn(8, 16)
    with pytest.raises(ValueError, match="frozen"):
        lora_linear(_randn(3, 16), w, None, _randn(4, 16), _randn(8, 4), 2.0)


def test_registry_pairs_each_kernel_with_its_reference():
    assert KERNELS == {"rmsnorm": (rmsnorm, rmsnorm_reference),
                       "gated_act": (gated_act, gated_act_reference),
                       "fused_linear_cross_entropy": (fused_linear_cross_entropy,
                                                      linear_cross_entropy_reference),
                       "lora_linear": (lora_linear, lora_linear_reference)}


def test_without_triton_references_work_and_kernels_fail_in_one_line():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\nfrom repro import kernels\n"
            "x = torch.ones(2, 4)\n"
            "assert kernels.rmsnorm_reference(x, torch.ones(4), 1e-6).shape == (2, 4)\n"
            "kernels.rmsnorm(x, torch.ones(4), 1e-6)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": ""})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == ("RuntimeError: kernels: triton is not "
                                                    "installed; pip install triton, or use "
                                                    "train.backend=peft")


# torch.compile: every kernel is a torch.library custom op with a fake implementation, so Dynamo
# records each as one opaque op. backend="aot_eager" traces the forward and backward graphs with
# the fake implementations and then runs the ops' real implementations (the Triton kernels, here
# in the interpreter); Inductor would call the same ops as external kernels, but needs a C++
# compiler on the CPU, so it is left to the GPU bench.

def _op_cases():
    t = lambda *s, grad=False: _randn(*s, grad=grad)  # noqa: E731
    ops = torch.ops.repro_kernels
    return {
        "rmsnorm_fwd": (ops.rmsnorm_fwd, (t(3, 5, 24, grad=True), t(24, grad=True), 1e-6, 1.0)),
        "rmsnorm_bwd": (ops.rmsnorm_bwd, (t(3, 5, 24), t(3, 5, 24), t(24),
                                          torch.rand(15, device=DEVICE) + 0.5, 1.0, True)),
        "gated_act_fwd": (ops.gated_act_fwd, (t(4, 7, grad=True), t(4, 7, grad=True), 1)),
        "gated_act_bwd": (ops.gated_act_bwd, (t(4, 7), t(4, 7), t(4, 7), 0)),
        "fused_linear_cross_entropy": (ops.fused_linear_cross_entropy, (
            t(9, 8, grad=True), t(30, 8, grad=True), torch.randint(0, 30, (9,), device=DEVICE),
            -100, None, 4, True, True)),
        "lora_linear": (ops.lora_linear, (t(9, 8, grad=True), t(12, 8), t(12), t(4, 8, grad=True),
                                          t(12, 4, grad=True), 2.0)),
        "lowrank_matmul": (ops.lowrank_matmul, (t(9, 8), t(12, 8), t(9, 4), t(12, 4), None, 2.0,
                                                True)),
    }


@pytest.mark.parametrize("name", list(_op_cases()))
def test_custom_op_registration_passes_opcheck(name):
    # Schema, fake (meta) implementation against the real one, autograd registration, and a
    # trace with dynamic shapes: what torch.compile relies on.
    torch.manual_seed(0)
    op, args = _op_cases()[name]
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


class _TinyBlock(torch.nn.Module):
    """norm -> LoRA gate projection, plain up projection -> GeGLU -> fused head: all four ops."""

    def __init__(self, h=24, inter=40, vocab=50, r=4):
        super().__init__()
        p = lambda *s, scale, grad=True: torch.nn.Parameter(  # noqa: E731
            torch.randn(*s, device=DEVICE) * scale, requires_grad=grad)
        self.norm = p(h, scale=0.1)
        self.gate, self.up = p(inter, h, scale=h ** -0.5, grad=False), p(inter, h, scale=h ** -0.5)
        self.lora_A, self.lora_B = p(r, h, scale=0.2), p(inter, r, scale=0.2)
        self.head = p(vocab, inter, scale=0.2, grad=False)

    def forward(self, x, labels):
        h = rmsnorm(x, self.norm, 1e-6, 1.0)
        gate = lora_linear(h, self.gate, None, self.lora_A, self.lora_B, 2.0)
        act = gated_act(gate, h @ self.up.T, "geglu")
        return fused_linear_cross_entropy(act, self.head, labels, chunk_size=4) / 7


def _loss_and_grads(fn, module, x, labels):
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    loss = fn(x, labels)
    loss.backward()
    return [loss.detach(), x.grad, *(p.grad for p in module.parameters() if p.requires_grad)]


def test_kernels_compile_without_graph_breaks_and_match_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = _TinyBlock()
    x = _randn(2, 5, 24, grad=False)
    labels = torch.randint(0, 50, (2, 5), device=DEVICE)
    labels[0, :3] = -100
    explained = torch._dynamo.explain(block)(x, labels)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    eager = _loss_and_grads(block, block, x, labels)
    compiled = _loss_and_grads(torch.compile(block, backend="aot_eager", fullgraph=True), block,
                               x, labels)
    assert len(eager) == 6  # loss; gradients of x, the norm, up, and the LoRA pair A, B
    _assert_close(compiled, eager, dict(rtol=1e-5, atol=1e-6))
    torch._dynamo.reset()


def test_patched_student_decoder_compiles_in_one_graph_and_matches_eager(tiny_model):
    """The triton backend with train.compile=true, in miniature: the tiny Gemma 3 with LoRA and
    every kernel patched in (repro.student.kernel_backend), its decoder compiled in place as
    repro.student.load_model does. aot_eager, not Inductor: see above."""
    from repro import student
    from repro.config import TrainConfig

    if DEVICE != "cpu":
        pytest.skip("the CPU interpreter check; on CUDA bench/train.py runs triton+compile")
    torch._dynamo.reset()
    model = student.add_lora(tiny_model, TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0))
    for n, p in model.named_parameters():  # PEFT starts B at zero: make the LoRA path count
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    backend, counts = student.kernel_backend(model, "cpu", False, impl="triton")
    assert counts["left_alone"] == {} and counts["lora_linear"] == 14
    ids = torch.randint(4, tiny_model.config.vocab_size, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss, _ = student.batch_loss(model, ids, labels, backend.head)
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters() if p.requires_grad]

    eager = loss_and_grads()
    decoder = student.decoder(model)
    explained = torch._dynamo.explain(decoder)(input_ids=ids)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
    decoder.compile(backend="aot_eager", fullgraph=True)
    compiled = loss_and_grads()
    assert len(compiled) == 29  # the loss and 14 LoRA pairs
    _assert_close(compiled, eager, dict(rtol=1e-5, atol=1e-5))
    torch._dynamo.reset()
