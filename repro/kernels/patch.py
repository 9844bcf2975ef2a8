"""Install our kernels into a transformers + PEFT model, in place (the `triton` training backend).

    counts = patch_model(peft_model)                    # the Triton kernels (CUDA)
    counts = patch_model(peft_model, impl="reference")  # their PyTorch references (any device)

What is replaced, by module class (the forward math read from transformers 5.x):

- RMSNorm: `Gemma3RMSNorm` computes x·rsqrt(mean x² + eps)·(1 + w) (offset 1.0, weights stored
  around zero); `Qwen2RMSNorm`, `Qwen3RMSNorm` and `LlamaRMSNorm` multiply by w (offset 0.0).
  Gemma's per-head q_norm/k_norm are the same class and are patched too.
- The MLP's activation: `down(act(gate(x)) · up(x))` with act = gelu_pytorch_tanh (GeGLU, Gemma 3)
  or silu (SwiGLU, Qwen/Llama). gate_proj/up_proj/down_proj stay modules, so LoRA on them still
  applies (and is itself patched, below). An MLP with another activation is left alone and counted.
- PEFT's `lora.Linear`: base projection and low-rank path in one call, `xWᵀ + b + s·(xAᵀ)Bᵀ`.
  Only plain LoRA with one active adapter and no dropout is patched (dropout would need its own
  mask inside the kernel); DoRA, dropout, several adapters are left on PEFT's code and counted.
  At run time the patched forward falls back to PEFT's whenever the adapter is disabled or merged.

Not a module patch: the loss. `kernel_functions(impl).linear_cross_entropy` is the fused
linear + cross-entropy that repro.train uses on the decoder's hidden states, never building the
full logits.

Dtypes: under autocast the replaced code would have run its matmuls in the autocast dtype, so the
LoRA patch casts its inputs to it; our custom ops are not autocast-aware themselves.
"""

from __future__ import annotations

import types
from types import SimpleNamespace

# class name -> (RMSNorm weight offset, attribute holding eps)
NORMS = {
    "Gemma3RMSNorm": (1.0, "eps"),
    "Qwen2RMSNorm": (0.0, "variance_epsilon"),
    "Qwen3RMSNorm": (0.0, "variance_epsilon"),
    "LlamaRMSNorm": (0.0, "variance_epsilon"),
}
# class name -> config attribute naming the activation
MLPS = {"Gemma3MLP": "hidden_activation", "Qwen2MLP": "hidden_act", "Qwen3MLP": "hidden_act", "LlamaMLP": "hidden_act"}
ACTIVATIONS = {"gelu_pytorch_tanh": "geglu", "silu": "swiglu"}


def kernel_functions(impl: str = "triton") -> SimpleNamespace:
    """The four functions to install: the Triton kernels or their PyTorch references."""
    import repro.kernels as K

    if impl == "triton":
        return SimpleNamespace(rmsnorm=K.rmsnorm, gated_act=K.gated_act, lora_linear=K.lora_linear,
                               linear_cross_entropy=K.fused_linear_cross_entropy)
    if impl == "reference":
        return SimpleNamespace(rmsnorm=K.rmsnorm_reference, gated_act=K.gated_act_reference,
                               lora_linear=K.lora_linear_reference,
                               linear_cross_entropy=K.linear_cross_entropy_reference)
    raise ValueError(f"impl={impl!r}: expected 'triton' or 'reference'")


def patch_model(model, impl: str = "triton") -> dict:
    """Replace the forwards described in the module docstring; return what was (not) patched.

    The result is {"rmsnorm": n, "mlp": n, "lora_linear": n, "left_alone": {reason: n}}. Patching
    sets an instance attribute `forward`; `del module.forward` restores the class's.
    """
    fns = kernel_functions(impl)
    counts: dict = {"rmsnorm": 0, "mlp": 0, "lora_linear": 0, "left_alone": {}}

    def left_alone(reason: str) -> None:
        counts["left_alone"][reason] = counts["left_alone"].get(reason, 0) + 1

    lora_linear_cls = _peft_lora_linear()
    for module in model.modules():
        cls = type(module).__name__
        if cls in NORMS:
            offset, eps_attr = NORMS[cls]
            module._kernel = fns.rmsnorm
            module._kernel_offset = offset
            module._kernel_eps = getattr(module, eps_attr)
            module.forward = types.MethodType(_rmsnorm_forward, module)
            counts["rmsnorm"] += 1
        elif cls in MLPS:
            act = getattr(module.config, MLPS[cls], None)
            if act not in ACTIVATIONS:
                left_alone(f"{cls} activation {act}")
                continue
            module._kernel = fns.gated_act
            module._kernel_kind = ACTIVATIONS[act]
            module.forward = types.MethodType(_mlp_forward, module)
            counts["mlp"] += 1
        elif lora_linear_cls is not None and isinstance(module, lora_linear_cls):
            reason = _lora_unpatchable(module)
            if reason:
                left_alone(f"lora.Linear: {reason}")
                continue
            module._kernel = fns.lora_linear
            module.forward = types.MethodType(_lora_forward, module)
            counts["lora_linear"] += 1
    return counts


def _peft_lora_linear():
    try:
        from peft.tuners.lora import Linear
    except ImportError:  # a model without PEFT: norms and MLPs only
        return None
    return Linear


def _rmsnorm_forward(self, x):
    # The kernels take rows; q_norm/k_norm get [batch, seq, heads, head_dim].
    y = self._kernel(x.reshape(-1, x.shape[-1]), self.weight, self._kernel_eps, offset=self._kernel_offset)
    return y.view(x.shape)


def _mlp_forward(self, x):
    gate, up = self.gate_proj(x), self.up_proj(x)
    h = self._kernel(gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1]), self._kernel_kind)
    return self.down_proj(h.view(gate.shape))


def _lora_unpatchable(m) -> str | None:
    import torch

    if not isinstance(m.base_layer, torch.nn.Linear):
        return "base layer is not nn.Linear"
    if len(m.lora_A) != 1:
        return "several adapters"
    name = next(iter(m.lora_A))
    if name in getattr(m, "lora_variant", {}) or getattr(m, "use_dora", {}).get(name, False):
        return "DoRA or another LoRA variant"
    if not isinstance(m.lora_dropout[name], torch.nn.Identity):
        return "lora_dropout > 0"
    return None


def _lora_forward(self, x, *args, **kwargs):
    active = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(active) != 1 or active[0] not in self.lora_A:
        return type(self).forward(self, x, *args, **kwargs)  # PEFT's own code for everything else
    name = active[0]
    dtype = _compute_dtype(x)
    base = self.base_layer
    bias = None if base.bias is None else base.bias.to(dtype)
    y = self._kernel(x.reshape(-1, x.shape[-1]).to(dtype), base.weight.to(dtype), bias,
                     self.lora_A[name].weight.to(dtype), self.lora_B[name].weight.to(dtype), self.scaling[name])
    return y.view(*x.shape[:-1], y.shape[-1])


def _compute_dtype(x):
    """The dtype nn.Linear would compute in here: autocast's, else the input's."""
    import torch

    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
