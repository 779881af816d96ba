"""The shared-prefix forward (each prompt run once for its group) equals the full forward."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_rl.models.forward import can_share_prefix, completion_logprobs

pytestmark = pytest.mark.xdist_group("test_shared_prefix")  # one worker: its module-scoped fixtures are built once


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()  # dropout is 0: train mode is deterministic


def grouped_batch(tokenizer, group_size: int, completion_length: int = 5, seed: int = 0):
    """Left-padded prompts of very different lengths (one of a single token), each repeated G times,
    followed by random completions with some right padding: `(B, P + C)` ids and mask."""
    texts = ["What is 13 + 7? Answer:", "7", "Twice 4 is"]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    prompt_ids = enc["input_ids"].repeat_interleave(group_size, 0)  # (B, P)
    prompt_mask = enc["attention_mask"].repeat_interleave(group_size, 0)
    g = torch.Generator().manual_seed(seed)
    B = prompt_ids.shape[0]
    completion_ids = torch.randint(5, len(tokenizer), (B, completion_length), generator=g)
    lengths = torch.randint(1, completion_length + 1, (B,), generator=g)
    completion_mask = (torch.arange(completion_length)[None, :] < lengths[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    assert enc["attention_mask"][1].sum() == 1  # the single-token prompt is all padding before its last token
    return torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), completion_length


@pytest.mark.parametrize("group_size", [2, 4])
def test_logprobs_entropy_and_hidden_match_the_full_forward(model, tiny_tokenizer, group_size):
    ids, mask, C = grouped_batch(tiny_tokenizer, group_size)
    with torch.no_grad():
        full = completion_logprobs(model, ids, mask, C, 0.7, with_entropy=True, output_hidden_states=True)
        shared = completion_logprobs(model, ids, mask, C, 0.7, with_entropy=True, output_hidden_states=True,
                                     group_size=group_size)  # fmt: skip
    for a, b in zip(full, shared):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_gradients_match_the_full_forward(model, tiny_tokenizer):
    ids, mask, C = grouped_batch(tiny_tokenizer, 3)
    weights = torch.randn(ids.shape[0], C, generator=torch.Generator().manual_seed(1)) * mask[:, -C:]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for group_size in (1, 3):
        logprobs, _, _ = completion_logprobs(model, ids, mask, C, group_size=group_size)
        grads.append(torch.autograd.grad((logprobs * weights).sum(), params))
    for full, shared in zip(*grads):
        torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in grads[1])  # the loss really reaches the weights


def test_rows_of_a_group_must_share_their_prompt(model, tiny_tokenizer):
    ids, mask, C = grouped_batch(tiny_tokenizer, 2)
    ids[1, -C - 1] = (ids[1, -C - 1] + 1) % len(tiny_tokenizer)  # row 1's prompt now differs from row 0's
    with pytest.raises(ValueError, match="do not share their prompt"), torch.no_grad():
        completion_logprobs(model, ids, mask, C, group_size=2)


def test_falls_back_to_the_full_forward_where_sharing_does_not_apply(model, tiny_tokenizer):
    assert not can_share_prefix(model, torch.Size([6, 9]), 8, 2)  # a one-token prompt: no prefix to share
    assert not can_share_prefix(model, torch.Size([5, 9]), 4, 2)  # rows are not whole groups
    assert can_share_prefix(model, torch.Size([6, 9]), 4, 2)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:  # transformers drops the KV cache under gradient checkpointing, so the full forward is used
        assert not can_share_prefix(model, torch.Size([6, 9]), 4, 2)
        ids, mask, C = grouped_batch(tiny_tokenizer, 2)
        logprobs, _, _ = completion_logprobs(model, ids, mask, C, group_size=2)
        with torch.no_grad():
            assert can_share_prefix(model, torch.Size([6, 9]), 4, 2)  # no backward, so the cache is kept
            reference, _, _ = completion_logprobs(model, ids, mask, C)
        torch.testing.assert_close(logprobs.detach(), reference, atol=1e-5, rtol=1e-5)
    finally:
        model.activation_checkpointing_disable()
