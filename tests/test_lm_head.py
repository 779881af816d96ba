"""The fused, chunked LM-head log-probs: equal to log_softmax(h W^T + b).gather in values and gradients,
without ever holding the (B, T, V) logits; and the model-level path that every log-prob pass takes."""

import warnings

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from llm_rl.core import chunked_lm_head_logprobs
from llm_rl.memory_measure import TensorMeter
from llm_rl.models.forward import completion_logprobs
from llm_rl.models.value_head import PolicyWithValue

V, H = 50_000, 32  # a large vocabulary on a tiny hidden size: the logits dominate, as at 150k on a real model


def naive(hidden, weight, ids, bias=None, temperature=1.0):
    """Today's path, written out: the full (B, T, V) logits."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    z = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    logp = z.log_softmax(-1)
    return logp.gather(-1, ids[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def _inputs(batch=3, width=5, dtype=torch.float32, bias=True, seed=0, vocab=V):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, width, H, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(vocab, H, generator=g, dtype=dtype) * 0.5).requires_grad_()
    b = (torch.randn(vocab, generator=g, dtype=dtype) * 0.5).requires_grad_() if bias else None
    ids = torch.randint(0, vocab, (batch, width), generator=g)
    return hidden, weight, b, ids


def _grads(outputs, inputs, seed=1):
    """Gradients of a random linear function of the log-probs and the entropy."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, [x for x in inputs if x is not None])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens_per_chunk", [1, 4, 64])
def test_values_and_gradients_equal_the_full_logits_path(temperature, bias, tokens_per_chunk):
    hidden, weight, b, ids = _inputs(dtype=torch.float64, bias=bias, vocab=5_000)  # float64 is slow: a smaller V
    logprobs, entropy = chunked_lm_head_logprobs(hidden, weight, ids, b, temperature, tokens_per_chunk, with_entropy=True)
    expected_lp, expected_entropy = naive(hidden.double(), weight, ids, b, temperature)
    assert logprobs.shape == ids.shape and entropy.shape == ids.shape
    torch.testing.assert_close(logprobs, expected_lp.to(logprobs.dtype), rtol=0, atol=1e-10)
    torch.testing.assert_close(entropy, expected_entropy.to(entropy.dtype), rtol=0, atol=1e-10)
    inputs = (hidden, weight, b)
    for got, want in zip(_grads((logprobs, entropy), inputs), _grads((expected_lp, expected_entropy), inputs)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_float32_output_and_float32_tolerance():
    hidden, weight, b, ids = _inputs()
    logprobs, entropy = chunked_lm_head_logprobs(hidden, weight, ids, b, 0.9, tokens_per_chunk=4)
    assert logprobs.dtype == torch.float32 and entropy is None
    expected, _ = naive(hidden, weight, ids, b, 0.9)
    torch.testing.assert_close(logprobs, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads((logprobs,), (hidden, weight, b)), _grads((expected,), (hidden, weight, b))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_gradcheck_with_entropy_on_a_small_vocabulary():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    ids = torch.randint(0, 7, (2, 3), generator=g)
    fn = lambda h, w, b: chunked_lm_head_logprobs(h, w, ids, b, 0.8, tokens_per_chunk=2, with_entropy=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


def test_bf16_autocast_runs_the_matmul_in_bf16_like_the_models_head():
    hidden, weight, b, ids = _inputs(bias=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logprobs, entropy = chunked_lm_head_logprobs(hidden, weight, ids, b, 0.7, tokens_per_chunk=4, with_entropy=True)
        expected_lp, expected_entropy = naive(hidden, weight, ids, b, 0.7)  # linear in bf16 under autocast
    assert logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs, expected_lp, rtol=0, atol=1e-4)  # same bf16 logits, both reduced in fp32
    torch.testing.assert_close(entropy, expected_entropy, rtol=0, atol=1e-4)
    full_precision, _ = naive(hidden, weight, ids, b, 0.7)
    assert (logprobs - full_precision).abs().max() > 1e-3  # it did run in bf16
    inputs = (hidden, weight, b)
    for got, want in zip(_grads((logprobs, entropy), inputs), _grads((expected_lp, expected_entropy), inputs)):
        # the naive path sums the weight gradient in bf16; the chunks accumulate in fp32
        assert (got - want).norm() / want.norm() < 1e-2


def test_one_token_an_empty_batch_and_a_non_contiguous_input():
    hidden, weight, b, ids = _inputs(batch=1, width=1)
    logprobs, _ = chunked_lm_head_logprobs(hidden, weight, ids, b)
    torch.testing.assert_close(logprobs, naive(hidden, weight, ids, b)[0], rtol=1e-5, atol=1e-5)
    empty, entropy = chunked_lm_head_logprobs(hidden[:, :0], weight, ids[:, :0], b, with_entropy=True)
    assert empty.shape == (1, 0) and entropy.shape == (1, 0)
    hidden, weight, b, ids = _inputs(batch=2, width=6)
    strided = hidden[:, ::2]  # (2, 3, H), not contiguous
    torch.testing.assert_close(chunked_lm_head_logprobs(strided, weight, ids[:, ::2], b, tokens_per_chunk=2)[0],
                               naive(strided, weight, ids[:, ::2], b)[0], rtol=1e-5, atol=1e-5)  # fmt: skip


def test_padding_positions_get_no_gradient_through_the_mask():
    hidden, weight, b, ids = _inputs(batch=2, width=4)
    ids[1, 2:] = 0  # right padding with the pad id
    mask = torch.ones(2, 4)
    mask[1, 2:] = 0
    logprobs, _ = chunked_lm_head_logprobs(hidden, weight, ids, b, tokens_per_chunk=3)
    grad_h, grad_w = torch.autograd.grad((logprobs * mask).sum(), (hidden, weight))
    assert torch.all(grad_h[1, 2:] == 0)
    expected = torch.autograd.grad((naive(hidden, weight, ids, b)[0] * mask).sum(), (hidden, weight))
    torch.testing.assert_close(grad_h, expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_w, expected[1], rtol=1e-4, atol=1e-5)


def test_bad_shapes_and_settings_name_the_problem():
    hidden, weight, b, ids = _inputs()
    with pytest.raises(ValueError, match="ids"):
        chunked_lm_head_logprobs(hidden, weight, ids[:, :2], b)
    with pytest.raises(ValueError, match="weight"):
        chunked_lm_head_logprobs(hidden, weight[:, :3], ids, b)
    with pytest.raises(ValueError, match="tokens_per_chunk"):
        chunked_lm_head_logprobs(hidden, weight, ids, b, tokens_per_chunk=0)


def test_no_full_logits_are_saved_or_allocated():
    """Saved for backward: the inputs and (N,) statistics; allocated: one chunk's (n, V) at a time."""
    batch, width, chunk = 8, 16, 8  # 128 positions, 8 per chunk
    hidden, weight, b, ids = _inputs(batch, width)
    full_logits = batch * width * V * 4
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        logprobs, entropy = chunked_lm_head_logprobs(hidden, weight, ids, b, 0.7, chunk, with_entropy=True)
    assert max(saved) == V * H  # the weight itself; nothing of (B, T, V)
    with TensorMeter() as fused:
        logprobs, entropy = chunked_lm_head_logprobs(hidden, weight, ids, b, 0.7, chunk, with_entropy=True)
        (logprobs.sum() + entropy.sum()).backward()
    weight.grad = hidden.grad = b.grad = None
    with TensorMeter() as today:
        lp, ent = naive(hidden, weight, ids, b, 0.7)
        (lp.sum() + ent.sum()).backward()
    assert fused.largest < full_logits / 2  # the weight's gradient (V x H) is the biggest tensor
    assert today.largest >= full_logits
    weight_grad = V * H * 4
    assert fused.peak < 2 * weight_grad + 8 * chunk * V * 4  # gradients + a few chunk-sized temporaries
    assert fused.peak < today.peak / 3


# ---------------------------------------------------------------------------------- the model-level path
def _model(tied=True, seed=0):
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=tied)  # fmt: skip
    return Qwen2ForCausalLM(config)


def _batch(rows=4, prompt=5, completion=6, group_size=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, V, (rows // group_size, prompt), generator=g).repeat_interleave(group_size, 0)
    ids = torch.cat([prompts, torch.randint(0, V, (rows, completion), generator=g)], 1)
    mask = torch.ones_like(ids)
    mask[:group_size, :2] = 0  # a left-padded prompt (its whole group)
    mask[-1, -2:] = 0  # a short completion: right padding
    return ids, mask


def _both_paths(model, ids, mask, completion=6, **kwargs):
    """``(fused, today's)``: each ``(logprobs, entropy, hidden, gradients)`` of the same loss."""
    results = []
    for chunk in (3, 0):
        model.zero_grad()
        lp, ent, hidden = completion_logprobs(model, ids, mask, completion, tokens_per_chunk=chunk, **kwargs)
        loss = (lp * mask[:, -completion:]).sum() + (ent.sum() if ent is not None and ent.requires_grad else 0)
        loss = loss + (hidden.sum() if hidden is not None else 0)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((lp.detach(), ent, hidden, grads))
    return results


def _assert_same(fused, today, atol=1e-5, rtol=1e-4):
    torch.testing.assert_close(fused[0], today[0], atol=atol, rtol=rtol)
    if today[1] is not None:
        torch.testing.assert_close(fused[1].detach(), today[1].detach(), atol=atol, rtol=rtol)
    if today[2] is not None:
        torch.testing.assert_close(fused[2].detach(), today[2].detach(), atol=atol, rtol=rtol)
    assert fused[3].keys() == today[3].keys() and fused[3]
    for name, want in today[3].items():  # float rounding relative to each gradient's scale (chunked sums)
        torch.testing.assert_close(fused[3][name], want, atol=atol * (1 + want.abs().max().item()), rtol=rtol, msg=name)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("group_size", [1, 2])
def test_completion_logprobs_fused_equals_the_logits_path(tied, group_size):
    model = _model(tied)
    ids, mask = _batch(group_size=group_size)
    fused, today = _both_paths(model, ids, mask, temperature=0.7, with_entropy=True, group_size=group_size)
    _assert_same(fused, today)
    assert not fused[1].requires_grad  # a metric without entropy_grad


def test_differentiable_entropy_and_the_last_hidden_state_for_the_value_head():
    model = _model()
    ids, mask = _batch()
    fused, today = _both_paths(model, ids, mask, with_entropy=True, entropy_grad=True, output_hidden_states=True)
    assert fused[1].requires_grad and fused[2].shape == (4, 6, H)
    _assert_same(fused, today)


def test_bf16_autocast_model():
    model = _model()
    ids, mask = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, today = _both_paths(model, ids, mask, temperature=0.7, with_entropy=True)
    assert fused[0].dtype == torch.float32
    torch.testing.assert_close(fused[0], today[0], atol=2e-3, rtol=1e-3)
    for name, want in today[3].items():
        assert (fused[3][name] - want).norm() <= 2e-2 * want.norm() + 1e-6, name


@pytest.mark.parametrize("on_head", [False, True])
def test_lora_wrapped_model(on_head):
    """LoRA on every linear (the head read through peft's wrapper), or on the head too (W + s B A)."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "v_proj", "gate_proj", "lm_head"] if on_head else "all-linear"
    model = get_peft_model(_model(tied=False), LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    ids, mask = _batch()
    fused, today = _both_paths(model, ids, mask, temperature=0.7, with_entropy=True)
    assert any("lm_head.lora" in n for n in fused[3]) == on_head
    _assert_same(fused, today)
    with model.disable_adapter():  # the reference: the base weights
        with torch.no_grad():
            base = completion_logprobs(model, ids, mask, 6, tokens_per_chunk=3)[0]
            base_today = completion_logprobs(model, ids, mask, 6, tokens_per_chunk=0)[0]
    torch.testing.assert_close(base, base_today, atol=1e-5, rtol=1e-4)
    assert (base - fused[0]).abs().max() > 1e-3  # the adapters were on before


def test_policy_with_value_equals_the_logits_path():
    policy = PolicyWithValue(_model())
    torch.nn.init.normal_(policy.value_head.weight)  # zero-initialised: make the values depend on the hidden states
    ids, mask = _batch()
    results = []
    for chunk in (3, 0):
        policy.zero_grad()
        lp, ent, values = policy(ids, mask, 6, 0.7, entropy_grad=True, tokens_per_chunk=chunk)
        (lp.sum() + values.sum() + ent.sum()).backward()
        results.append((lp, ent, values, {n: p.grad.clone() for n, p in policy.named_parameters()}))
    for got, want in zip(results[0][:3], results[1][:3]):
        torch.testing.assert_close(got.detach(), want.detach(), atol=1e-5, rtol=1e-4)
    for name, want in results[1][3].items():
        torch.testing.assert_close(results[0][3][name], want, atol=1e-5 * (1 + want.abs().max().item()), rtol=1e-4, msg=name)


def test_the_models_forward_holds_no_full_logits():
    model = _model()
    ids, mask = _batch(rows=4, completion=16)
    full_logits = 4 * 17 * V * 4
    with TensorMeter() as fused:
        lp, ent, _ = completion_logprobs(model, ids, mask, 16, with_entropy=True, tokens_per_chunk=8)
        lp.sum().backward()
    model.zero_grad()
    with TensorMeter() as today:
        lp, ent, _ = completion_logprobs(model, ids, mask, 16, with_entropy=True, tokens_per_chunk=0)
        lp.sum().backward()
    assert today.largest >= full_logits > 2 * fused.largest
    assert fused.peak < today.peak / 2


class _ScaledLogits(Qwen2ForCausalLM):
    """An "unusual architecture": it rescales the logits after its head (as Cohere and Gemma's soft-capping do)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out


def test_a_model_that_transforms_its_logits_falls_back_with_one_warning():
    config = _model().config
    torch.manual_seed(0)
    model = _ScaledLogits(config)
    ids, mask = _batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = completion_logprobs(model, ids, mask, 6, tokens_per_chunk=3)[0]
        again = completion_logprobs(model, ids, mask, 6, tokens_per_chunk=3)[0]
    messages = [str(w.message) for w in caught if "_ScaledLogits" in str(w.message)]
    assert len(messages) == 1 and "full logits" in messages[0]
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=7).logits[:, :-1] * 1.0  # already x2
    expected = logits.log_softmax(-1).gather(-1, ids[:, -6:, None]).squeeze(-1)
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-4)


def test_logprob_chunk_size_is_validated():
    from llm_rl.trainers.config import ConfigError, RLConfig

    assert RLConfig(logprob_chunk_size=0).logprob_chunk_size == 0  # the full-logits path
    with pytest.raises(ConfigError, match="logprob_chunk_size"):
        RLConfig(logprob_chunk_size=-1)


@pytest.mark.parametrize("share_prompt_prefix", [False, True])
def test_no_grad_passes_run_per_device_batch_size_prompts_at_a_time(share_prompt_prefix):
    """BaseRLTrainer.logprobs_no_grad: one forward per micro-batch of per_device_batch_size x G rows, each
    trimmed to its own padding; equal to one forward over the whole rollout, zero past each row's width."""
    from types import SimpleNamespace

    from llm_rl.rollout import Rollout
    from llm_rl.trainers.base import BaseRLTrainer

    model = _model()
    G, prompts = 2, 6
    ids, mask = _batch(rows=prompts * G, group_size=G)
    prompt_ids, completion_ids = ids[:, :5], ids[:, 5:]
    prompt_mask, completion_mask = mask[:, :5], mask[:, 5:]
    prompt_mask[2:4, :3] = 0  # a second group with more left padding
    completion_mask[-4:, 3:] = 0  # the last micro-batch's completions are short: it is narrower
    rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.zeros(prompts * G, 6),
                      torch.zeros(prompts * G, dtype=torch.bool))  # fmt: skip
    trainer = SimpleNamespace(share_prompt_prefix=share_prompt_prefix,
                              args=SimpleNamespace(num_generations=G, per_device_batch_size=2, temperature=0.7,
                                                   logprob_chunk_size=4))  # fmt: skip
    calls = []
    hook = model.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    logprobs = BaseRLTrainer.logprobs_no_grad(trainer, model, rollout)
    hook.remove()
    assert len(calls) == (6 if share_prompt_prefix else 3)  # 3 micro-batches of 2 prompts (x2 with a prefix pass)
    with torch.no_grad():
        whole = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, 6, 0.7, tokens_per_chunk=0)[0]
    valid = completion_mask.bool()
    torch.testing.assert_close(logprobs[valid], whole[valid], atol=1e-5, rtol=1e-4)
    assert torch.all(logprobs[-4:, 3:] == 0)  # columns trimmed off the last micro-batch
