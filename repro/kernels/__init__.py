"""Triton kernels for the CUDA training backend (see repro/kernels/README.md).

Each kernel stands beside a PyTorch reference and is a torch.library custom op (so torch.compile
keeps it whole, without a graph break), and tests/test_kernels.py
compares the two on random inputs (on the CPU under TRITON_INTERPRET=1, compiled on CUDA). The
CPU training path (repro/train.py) never imports this package.

Importing it needs neither a GPU nor triton: without triton the references still work and the
Triton functions raise one clear RuntimeError when called.
"""

from repro.kernels._triton import HAVE_TRITON
from repro.kernels.cross_entropy import fused_linear_cross_entropy, linear_cross_entropy_reference
from repro.kernels.gated_mlp import gated_act, gated_act_reference
from repro.kernels.lora import lora_linear, lora_linear_reference
from repro.kernels.rmsnorm import rmsnorm, rmsnorm_reference

KERNELS = {  # name -> (Triton function, PyTorch reference)
    "rmsnorm": (rmsnorm, rmsnorm_reference),
    "gated_act": (gated_act, gated_act_reference),
    "fused_linear_cross_entropy": (fused_linear_cross_entropy, linear_cross_entropy_reference),
    "lora_linear": (lora_linear, lora_linear_reference),
}

__all__ = ["KERNELS", "HAVE_TRITON", "rmsnorm", "rmsnorm_reference", "gated_act",
           "gated_act_reference", "fused_linear_cross_entropy", "linear_cross_entropy_reference",
           "lora_linear", "lora_linear_reference"]
