"""Triton kernels for the CUDA training backend (see kernels/README.md).

Each kernel will stand beside a PyTorch reference and an autograd Function, with a test that
compares the two on random inputs (on the CPU under TRITON_INTERPRET=1). The CPU training path
(repro/train.py) never imports this package.
"""

KERNELS: dict[str, object] = {}  # name -> autograd Function, filled as kernels land
