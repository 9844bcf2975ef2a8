"""triton, or stand-ins where it is not installed, and what every kernel module shares."""

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
