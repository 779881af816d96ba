"""A SwiGLU MLP that saves two of its four intermediate tensors for backward, not four.

transformers' Llama-family MLP (Llama, Qwen2, Qwen3, Mistral, ...) computes
``down_proj(silu(gate_proj(x)) * up_proj(x))``. Autograd then keeps, per token and layer,
``gate`` (for SiLU's backward), ``silu(gate)`` and ``up`` (for the product's) and the product
(down_proj's input): 4 x intermediate_size values, the largest activations of a training
forward (at Qwen2.5-0.5B's shape, 4,864 per token against a hidden size of 896).
``silu_mul`` keeps ``gate`` and ``up`` only and recomputes ``silu(gate)`` in backward, as
Liger-Kernel's SwiGLU does (Hsu et al. 2024, arXiv 2410.10989): one (tokens, intermediate)
tensor less per layer. Forward and backward run the same kernels as autograd's
(``silu``, ``mul``, ``aten.silu_backward``), so values and gradients are bitwise the same.
"""

from __future__ import annotations

import types

import torch
from torch import nn


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        # what autograd computes for silu(gate) * up: d/d up = grad * silu(gate); d/d silu = grad * up,
        # then SiLU's own backward kernel
        grad_up = grad * nn.functional.silu(gate) if ctx.needs_input_grad[1] else None
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, saving only ``gate`` and ``up`` for backward."""
    return _SiluMul.apply(gate, up)


def _swiglu_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def _standard_forward_code() -> types.CodeType:
    from transformers.models.llama.modeling_llama import LlamaMLP

    return LlamaMLP.forward.__code__


def is_standard_swiglu(module: nn.Module) -> bool:
    """A module whose forward is transformers' ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` with a SiLU.

    Compared by bytecode with ``LlamaMLP.forward``: the model families that copy it (Qwen2, Qwen3,
    Mistral, ...) match; anything else (a gated GELU, a fused gate_up_proj, remote code) is left as it is.
    """
    act = getattr(module, "act_fn", None)
    if not all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj")):
        return False
    if not (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"):
        return False
    code, standard = type(module).forward.__code__, _standard_forward_code()
    return code.co_code == standard.co_code and code.co_names == standard.co_names


def use_memory_efficient_swiglu(model: nn.Module) -> int:
    """Switch every standard SwiGLU MLP of ``model`` to ``silu_mul`` (in place); returns how many."""
    count = 0
    for module in model.modules():
        if is_standard_swiglu(module):
            module.forward = types.MethodType(_swiglu_forward, module)
            count += 1
    return count
