"""The memory-efficient SwiGLU: bitwise the same values and gradients, one saved tensor less per MLP."""

import pytest
import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from llm_rl.models.loading import frozen_copy
from llm_rl.models.swiglu import is_standard_swiglu, silu_mul, use_memory_efficient_swiglu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_equals_autograd_bitwise(dtype):
    torch.manual_seed(0)
    gate = (3 * torch.randn(5, 7, 33)).to(dtype).requires_grad_()
    up = torch.randn(5, 7, 33).to(dtype).requires_grad_()
    grad = torch.randn(5, 7, 33).to(dtype)
    want = nn.functional.silu(gate) * up
    want_gate, want_up = torch.autograd.grad(want, (gate, up), grad)
    got = silu_mul(gate, up)
    got_gate, got_up = torch.autograd.grad(got, (gate, up), grad)
    assert torch.equal(got, want) and torch.equal(got_gate, want_gate) and torch.equal(got_up, want_up)


def test_silu_mul_gradient_for_one_input_only():
    gate, up = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6)
    silu_mul(gate, up).sum().backward()
    sig = torch.sigmoid(gate.detach())
    torch.testing.assert_close(gate.grad, up * sig * (1 + gate.detach() * (1 - sig)))  # d silu(g)/dg by hand


def _qwen2(seed=0, act="silu"):
    config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, hidden_act=act)  # fmt: skip
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).train()


def _saved_bytes(model, ids):
    saved = []

    def pack(tensor):
        saved.append(tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids).logits.float().logsumexp(-1).mean()
    return loss, sum(saved)


def test_patched_qwen2_trains_bitwise_the_same_and_saves_one_intermediate_less_per_layer():
    plain, patched = _qwen2(), _qwen2()
    assert use_memory_efficient_swiglu(patched) == 3  # every decoder layer's MLP
    ids = torch.randint(0, 300, (2, 11))
    loss_plain, saved_plain = _saved_bytes(plain, ids)
    loss_patched, saved_patched = _saved_bytes(patched, ids)
    assert torch.equal(loss_plain, loss_patched)
    loss_plain.backward()
    loss_patched.backward()
    for (name, a), b in zip(plain.named_parameters(), patched.parameters()):
        assert torch.equal(a.grad, b.grad), name
    # silu(gate) is no longer kept: 2 rows x 11 tokens x 96 fp32 per layer
    assert saved_plain - saved_patched == 3 * 2 * 11 * 96 * 4


def test_only_standard_silu_mlps_are_switched_and_copies_use_their_own_weights():
    gelu = _qwen2(act="gelu")
    assert not any(is_standard_swiglu(m) for m in gelu.modules()) and use_memory_efficient_swiglu(gelu) == 0

    class Custom(nn.Module):  # the same attributes, another forward
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj, self.act_fn = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4), nn.SiLU()

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) + self.up_proj(x))

    assert not is_standard_swiglu(Custom())

    model = _qwen2()
    use_memory_efficient_swiglu(model)
    reference = frozen_copy(model)  # deepcopy rebinds the patched forward to the copy
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    ids = torch.randint(0, 300, (1, 6))
    fresh = _qwen2()  # the weights the reference was copied from
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, fresh.eval()(ids).logits)
