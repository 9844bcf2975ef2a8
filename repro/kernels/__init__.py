"""Triton kernels for the CUDA training backend (see repro/kernels/README.md).

Each kernel stands beside a PyTorch reference and an autograd Function, and tests/test_kernels.py
compares the two on random inputs (on the CPU under TRITON_INTERPRET=1, compiled on CUDA). The
CPU training path (repro/train.py) never imports this package.

Importing it needs neither a GPU nor triton: without triton the references still work and the
Triton functions raise one clear RuntimeError when called.
"""

import types

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False
    # Stand-ins so the kernel modules can still define (never launch) their @triton.jit kernels:
    # defining one only needs `triton.jit` and the `tl.constexpr` annotation.
    triton = types.SimpleNamespace(jit=lambda fn: fn)
    tl = types.SimpleNamespace(constexpr=None)

NO_TRITON = "kernels: triton is not installed; pip install triton, or use train.backend=peft"


def require_triton() -> None:
    if not HAVE_TRITON:
        raise RuntimeError(NO_TRITON)


def num_warps(block: int) -> int:
    """Warps for a one-row-per-program kernel over `block` elements (Liger's rule of thumb)."""
    return 32 if block >= 32768 else 16 if block >= 8192 else 8 if block >= 2048 else 4


# The kernel modules import the names above from this partly initialised package: keep them
# defined before these imports.
from repro.kernels.cross_entropy import fused_linear_cross_entropy, linear_cross_entropy_reference  # noqa: E402
from repro.kernels.gated_mlp import gated_act, gated_act_reference  # noqa: E402
from repro.kernels.lora import lora_linear, lora_linear_reference  # noqa: E402
from repro.kernels.rmsnorm import rmsnorm, rmsnorm_reference  # noqa: E402

KERNELS = {  # name -> (Triton function, PyTorch reference)
    "rmsnorm": (rmsnorm, rmsnorm_reference),
    "gated_act": (gated_act, gated_act_reference),
    "fused_linear_cross_entropy": (fused_linear_cross_entropy, linear_cross_entropy_reference),
    "lora_linear": (lora_linear, lora_linear_reference),
}

__all__ = ["KERNELS", "HAVE_TRITON", "rmsnorm", "rmsnorm_reference", "gated_act",
           "gated_act_reference", "fused_linear_cross_entropy", "linear_cross_entropy_reference",
           "lora_linear", "lora_linear_reference"]
