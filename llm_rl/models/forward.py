"""Per-token log-probs of completions under a causal LM, in one forward pass.

The log-probs come straight from the LM head's input, a chunk of positions at a time
(``FusedHead`` and ``llm_rl.core.chunked_lm_head_logprobs``): the `(B, C, V)` logits never
exist. The model is still called whole, through its wrapper's ``__call__``: DDP then
synchronises the gradients, and FSDP2 / ZeRO-3 gather each unit's weights inside that call,
where the head reads its weight (its own module hooks run too).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch import nn
from transformers import DynamicCache

from llm_rl.core import chunked_lm_head_logprobs, entropy_from_logits, selective_log_softmax


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
    tokens_per_chunk: int = 256,
):
    """Log-probs `(B, C)` of the last ``C = completion_length`` tokens of ``input_ids`` `(B, P + C)`.

    Only the last ``C + 1`` positions reach the LM head (``logits_to_keep``), so the prompt
    never costs a `(P, V)` logits slice. Logits are divided by ``temperature`` as at sampling
    time, so these are the log-probs of the distribution that was sampled.
    ``tokens_per_chunk > 0`` (the default): the head computes the log-probs itself, that many
    positions at a time, from its input (``chunked_lm_head_logprobs``, see ``FusedHead``): the
    `(B, C, V)` logits never exist, and the model returns `(B, C, 1 or 2)` log-probs (and
    entropy) in its ``logits`` field. ``0``, or a model whose head cannot be read that way:
    the model's logits, then ``selective_log_softmax`` (warned once per architecture).
    ``group_size = G > 1`` says the rows come in consecutive groups of G with one prompt
    each (as ``generate_rollout`` makes them): each prompt then runs through the model once
    for its group (see ``shared_prefix_forward``).
    Returns ``(logprobs, entropy or None, last hidden states (B, C, H) or None)``; the entropy
    carries a gradient only with ``entropy_grad`` (for an entropy bonus), else it is a metric.
    """
    targets = input_ids[:, -completion_length:]  # (B, C): position t predicts token t + 1
    head = FusedHead.for_model(model, tokens_per_chunk)
    out = None
    if head is not None:
        with head.computing(targets, temperature, tokens_per_chunk, with_entropy, entropy_grad, output_hidden_states):
            out = _forward(model, input_ids, attention_mask, completion_length, group_size, False)
        result = head.result(out.logits)
        if result is not None:
            return result
        if head.fired or output_hidden_states:
            out = None  # those were not the model's logits, or the hidden states are missing: run it again
    # today's path: the model's (B, C + 1, V) logits
    if out is None:
        out = _forward(model, input_ids, attention_mask, completion_length, group_size, output_hidden_states)
    logits = out.logits[:, -completion_length - 1 : -1, :]  # (B, C, V)
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = selective_log_softmax(logits, targets)  # (B, C)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logits(logits if entropy_grad else logits.detach())  # (B, C)
    hidden = out.hidden_states[-1][:, -completion_length - 1 : -1, :] if output_hidden_states else None
    return logprobs, entropy, hidden


def _forward(model, input_ids, attention_mask, completion_length: int, group_size: int, output_hidden_states: bool):
    """The model's output for the last ``C + 1`` positions, through the wrapper's ``__call__`` (DDP, FSDP hooks)."""
    if group_size > 1 and can_share_prefix(model, input_ids.shape, completion_length, group_size):
        return shared_prefix_forward(model, input_ids, attention_mask, completion_length, group_size, output_hidden_states)
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=completion_length + 1,
        output_hidden_states=output_hidden_states,
        use_cache=False,
    )


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def _base_model(model):
    """The causal LM under the DDP / DeepSpeed / peft wrappers (the one whose ``forward`` calls its head)."""
    inner = _inner(model)
    get_base = getattr(inner, "get_base_model", None)  # peft
    return get_base() if callable(get_base) else inner


def head_weights(head, check_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None] | bool | None:
    """``(weight (V, H), bias or None)`` that ``head(x)`` applies as ``x W^T + b``, or None if it is not a plain linear.

    An ``nn.Linear`` (also under FSDP2, whose unit classes subclass it), or a peft LoRA linear
    with vanilla adapters and no active dropout: ``W + sum_a scaling_a B_a A_a`` (a `(V, H)`
    tensor through which the adapters get their gradient). Read inside the head's own forward,
    where FSDP2 and ZeRO-3 hold the whole weight. ``check_only``: whether it can be read (no
    `(V, H)` sum is made).
    """
    from peft.tuners.lora import Linear as LoraLinear

    if isinstance(head, LoraLinear):
        base = head.get_base_layer()
        if not isinstance(base, nn.Linear) or (head.merged and head.disable_adapters):
            return None
        if head.disable_adapters or head.merged:
            return True if check_only else (base.weight, base.bias)
        weight = base.weight
        for name in head.active_adapters:
            if name not in head.lora_A:
                continue
            dropout = head.lora_dropout[name]
            active_dropout = isinstance(dropout, nn.Dropout) and dropout.p > 0 and dropout.training
            if name in head.lora_variant or active_dropout or head.lora_B[name].bias is not None:
                return None  # DoRA and friends, dropout on the adapter's input, an adapter bias
            if not check_only:
                weight = weight + head.get_delta_weight(name).to(weight.dtype)
        return True if check_only else (weight, base.bias)
    if isinstance(head, nn.Linear):
        return True if check_only else (head.weight, head.bias)
    return None


class FusedHead:
    """The model's LM head, made to return log-probs of given tokens for one model call.

    Inside ``computing(...)`` the head module's ``forward`` (an instance attribute, so its
    module hooks still run: FSDP2 and ZeRO-3 gather its weight, DDP sees the whole graph) maps
    its input, the final hidden states of the last ``C + 1`` positions `(B, C + 1, H)`, to
    ``chunked_lm_head_logprobs`` of the targets: `(B, C, 1)` log-probs, or `(B, C, 2)` with the
    entropy. The model returns that in its ``logits`` field, so a wrapper's upcast
    (accelerate's ``convert_outputs_to_fp32``) and FSDP2's backward hooks see only it. Other
    calls of the head (a shared-prefix forward's prefix pass) run the head as usual.
    ``result(out.logits)`` checks that the model handed the head's output back unchanged: a
    model that transforms its logits after the head (Gemma's soft-capping, Cohere's scale)
    cannot use this path, and the caller falls back to the model's logits (warned once; that
    first call runs the model twice, and never again for that architecture).
    """

    def __init__(self, model, head: nn.Module):
        self.model, self.head = model, head
        self.fired = False

    @classmethod
    def for_model(cls, model, tokens_per_chunk: int) -> FusedHead | None:
        if tokens_per_chunk <= 0:
            return None
        base = _base_model(model)
        name = type(base).__name__
        if name in _unfusable:
            return None
        get_head = getattr(base, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if head is None or head_weights(head, check_only=True) is None:
            _warn_once(f"head:{name}:{type(head).__name__}", f"{name}'s LM head ({type(head).__name__}) is not a linear "
                       "layer llm_rl can read: log-probs come from the model's full logits (more memory)")  # fmt: skip
            return None
        return cls(base, head)

    @contextmanager
    def computing(self, targets, temperature, tokens_per_chunk, with_entropy, entropy_grad, keep_hidden):
        original = self.head.forward
        batch, width = targets.shape
        self.fired, self.expected, self.hidden, self.entropy_grad = False, None, None, entropy_grad

        def forward(hidden, *args, **kwargs):
            weights = head_weights(self.head)  # now, inside the head's call: whole weights under FSDP2 / ZeRO-3
            if hidden.shape[:2] != (batch, width + 1) or args or kwargs or weights is None:
                return original(hidden, *args, **kwargs)
            hidden = hidden[:, :-1]  # (B, C, H): the last position predicts past the sequence
            logprobs, entropy = chunked_lm_head_logprobs(
                hidden, weights[0], targets, weights[1], temperature, tokens_per_chunk, with_entropy
            )
            if entropy is not None and not entropy_grad:
                entropy = entropy.detach()  # a metric: no gradient pass for it
            packed = logprobs[..., None] if entropy is None else torch.stack([logprobs, entropy], dim=-1)
            self.fired, self.expected = True, packed.detach().clone()
            self.hidden = hidden if keep_hidden else None
            return packed  # (B, C, 1 or 2)

        self.head.forward = forward
        try:
            yield self
        finally:
            del self.head.forward  # back to the class's forward (or the instance attribute it had)
            if self.head.forward != original:
                self.head.forward = original

    def result(self, logits: torch.Tensor):
        """``(logprobs, entropy or None, hidden or None)`` from the model's output, or None: use the logits path."""
        name = type(self.model).__name__
        if not self.fired:  # the head ran as usual: not on these positions, or a LoRA head it cannot read now
            _warn_once(f"unfired:{name}", f"{name}'s LM head was not called on the completion positions as a plain "
                       "linear layer: log-probs come from the model's full logits (more memory)")  # fmt: skip
            return None
        if logits.shape != self.expected.shape or not torch.equal(logits.detach(), self.expected):
            _unfusable.add(name)
            _warn_once(f"tail:{name}", f"{name} does not return its LM head's output unchanged (it transforms the "
                       "logits after the head): log-probs come from the model's full logits (more memory)")  # fmt: skip
            return None
        entropy = None
        if logits.shape[-1] == 2:
            entropy = logits[..., 1] if self.entropy_grad else logits[..., 1].detach()
        return logits[..., 0], entropy, self.hidden


_unfusable: set[str] = set()  # architectures found to transform the head's output


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
