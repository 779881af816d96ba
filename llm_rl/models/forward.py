"""Per-token log-probs of completions under a causal LM, in one forward pass."""

from __future__ import annotations

import torch

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
):
    """Log-probs `(B, C)` of the last ``C = completion_length`` tokens of ``input_ids`` `(B, P + C)`.

    Only the last ``C + 1`` positions go through the LM head (``logits_to_keep``), so the
    prompt never costs a `(P, V)` logits slice. Logits are divided by ``temperature`` as
    at sampling time, so these are the log-probs of the distribution that was sampled.
    Returns ``(logprobs, entropy or None, last hidden states (B, C, H) or None)``; the entropy
    carries a gradient only with ``entropy_grad`` (for an entropy bonus), else it is a metric.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=completion_length + 1,
        output_hidden_states=output_hidden_states,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :]  # (B, C, V): position t predicts token t + 1
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = selective_log_softmax(logits, input_ids[:, -completion_length:])  # (B, C)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logits(logits if entropy_grad else logits.detach())  # (B, C)
    hidden = out.hidden_states[-1][:, -completion_length - 1 : -1, :] if output_hidden_states else None
    return logprobs, entropy, hidden
