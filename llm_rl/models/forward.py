"""Per-token log-probs of completions under a causal LM, in one forward pass."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from llm_rl.core import entropy_from_logits, selective_log_softmax


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, matching what ``generate`` used: `(B, L)`."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def completion_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    output_hidden_states: bool = False,
    entropy_grad: bool = False,
    group_size: int = 1,
):
    """Log-probs `(B, C)` of the last ``C = completion_length`` tokens of ``input_ids`` `(B, P + C)`.

    Only the last ``C + 1`` positions go through the LM head (``logits_to_keep``), so the
    prompt never costs a `(P, V)` logits slice. Logits are divided by ``temperature`` as
    at sampling time, so these are the log-probs of the distribution that was sampled.
    ``group_size = G > 1`` says the rows come in consecutive groups of G with one prompt
    each (as ``generate_rollout`` makes them): each prompt then runs through the model once
    for its group (see ``shared_prefix_forward``).
    Returns ``(logprobs, entropy or None, last hidden states (B, C, H) or None)``; the entropy
    carries a gradient only with ``entropy_grad`` (for an entropy bonus), else it is a metric.
    """
    if group_size > 1 and can_share_prefix(model, input_ids.shape, completion_length, group_size):
        out = shared_prefix_forward(model, input_ids, attention_mask, completion_length, group_size, output_hidden_states)
    else:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            logits_to_keep=completion_length + 1,
            output_hidden_states=output_hidden_states,
            use_cache=False,
        )
    logits = out.logits[:, -completion_length - 1 : -1, :]  # (B, C, V): position t predicts token t + 1
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = selective_log_softmax(logits, input_ids[:, -completion_length:])  # (B, C)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logits(logits if entropy_grad else logits.detach())  # (B, C)
    hidden = out.hidden_states[-1][:, -completion_length - 1 : -1, :] if output_hidden_states else None
    return logprobs, entropy, hidden


def _inner(model):
    """The model inside a DDP / DeepSpeed wrapper (which have no ``config``)."""
    return getattr(model, "module", model)


def can_share_prefix(model, shape: torch.Size, completion_length: int, group_size: int) -> bool:
    """Whether ``shared_prefix_forward`` applies: whole groups, a prompt of 2+ tokens, and a
    KV cache that the forward keeps (transformers drops it under gradient checkpointing)."""
    batch, width = shape
    inner = _inner(model)
    checkpointing = getattr(inner, "is_activation_checkpointing", None)  # transformers >= 5.2x's name
    if checkpointing is None:
        checkpointing = getattr(inner, "is_gradient_checkpointing", False)
    checkpointing = checkpointing and torch.is_grad_enabled()
    return batch % group_size == 0 and width - completion_length >= 2 and not checkpointing and not (
        torch.is_grad_enabled() and _is_fully_sharded(inner)
    )


def _is_fully_sharded(model) -> bool:
    """FSDP2 re-gathers a unit's weights in backward through hooks on the forward's output tensors;
    the prefix forward's only output is the KV cache object, which it does not see, so backward
    through the prefix would read freed weights (``setStorage ... storage of size 0``)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())  # also a submodule of a sharded model


def shared_prefix_forward(model, input_ids, attention_mask, completion_length: int, group_size: int,
                          output_hidden_states: bool = False):  # fmt: skip
    """The forward of ``input_ids`` `(B, P + C)`, with each group's prompt run once instead of G times.

    Rows ``[i*G:(i+1)*G]`` share prompt ``i`` (the first ``P`` columns, left-padded). The
    prompts' first ``P - 1`` tokens go through the model once per prompt, `(B/G, P - 1)`,
    filling a KV cache that is repeated G times (``DynamicCache.batch_repeat_interleave``);
    then the last prompt token and the completion, `(B, 1 + C)`, attend to it. This is how
    ``generate_rollout`` prefills, applied to scoring and training: gradients reach the
    prompt positions through the repeated cache, summed over the group as in the full
    forward. Equal to the full forward up to float rounding; it saves ``(G - 1)/G`` of the
    prompt's compute and activation memory. Returns the model's output for the last
    ``C + 1`` positions (logits, and hidden states if asked).
    """
    prompt_width = input_ids.shape[1] - completion_length
    prompts, prompt_mask = input_ids[::group_size, :prompt_width], attention_mask[::group_size, :prompt_width]
    if not (
        torch.equal(prompts.repeat_interleave(group_size, 0), input_ids[:, :prompt_width])
        and torch.equal(prompt_mask.repeat_interleave(group_size, 0), attention_mask[:, :prompt_width])
    ):
        raise ValueError(f"group_size={group_size}, but rows of a group do not share their prompt")
    positions = position_ids_from_mask(attention_mask)  # (B, P + C)
    cache = DynamicCache(config=_inner(model).config)
    model(
        input_ids=prompts[:, :-1],  # (B/G, P - 1)
        attention_mask=prompt_mask[:, :-1],
        position_ids=positions[::group_size, : prompt_width - 1],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,  # its logits are not needed; 1 is the fewest the model computes
    )
    cache.batch_repeat_interleave(group_size)  # (B/G, ...) -> (B, ...)
    return model(
        input_ids=input_ids[:, prompt_width - 1 :],  # (B, 1 + C): last prompt token, then the completion
        attention_mask=attention_mask,  # (B, P + C): the cached prefix and the new tokens
        position_ids=positions[:, prompt_width - 1 :],
        cache=cache,
        use_cache=True,
        logits_to_keep=completion_length + 1,
        output_hidden_states=output_hidden_states,
    )
