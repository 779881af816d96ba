"""Clipped PPO/GRPO policy loss (per token or per sequence), CISPO, clipped value loss, aggregation.

Sources:
- PPO clipped surrogate and value clipping: Schulman et al. 2017, arXiv 1707.06347,
  eq. 7; value clipping as in OpenAI baselines / CleanRL `ppo.py`.
- Sequence-level ratio and clipping: GSPO, Zheng et al. 2025, arXiv 2507.18071, eqs. 5-7
  (TRL's `importance_sampling_level="sequence"`).
- Clipped importance-sampling weights (CISPO): MiniMax-M1, arXiv 2506.13585, eq. 4
  (TRL's `loss_type="cispo"`).
- Clip-higher (eps_high > eps_low) and token-mean aggregation: DAPO, arXiv 2503.14476.
- Sequence-mean aggregation: GRPO, DeepSeekMath, arXiv 2402.03300, eq. 3.
- Constant-normaliser aggregation: Dr. GRPO, arXiv 2503.20783.
"""

from collections.abc import Callable

import torch

from llm_rl.core.masked import masked_mean


def _token_mean(loss: torch.Tensor, mask: torch.Tensor, max_length: int | None) -> torch.Tensor:
    return masked_mean(loss, mask)  # sum over valid tokens / number of valid tokens


def _seq_mean(loss: torch.Tensor, mask: torch.Tensor, max_length: int | None) -> torch.Tensor:
    # An all-padding row has token mean 0 and still counts as one of the B rows.
    return masked_mean(loss, mask, dim=-1).mean()  # (B,) -> ()


def _seq_sum_norm(loss: torch.Tensor, mask: torch.Tensor, max_length: int | None) -> torch.Tensor:
    valid = torch.where(mask.bool(), loss, torch.zeros_like(loss))  # (B, T)
    return valid.sum() / (loss.shape[0] * _normalising_length(loss, max_length))  # / (B * L)


def _normalising_length(loss: torch.Tensor, max_length: int | None) -> int:
    if max_length is None:
        return loss.shape[-1]
    if max_length < loss.shape[-1]:
        raise ValueError(f"max_length={max_length} is shorter than the loss's {loss.shape[-1]} columns")
    return max_length


_AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int | None], torch.Tensor]] = {
    "token_mean": _token_mean,
    "seq_mean": _seq_mean,
    "seq_sum_norm": _seq_sum_norm,
}


def aggregate_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, mode: str, max_length: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss `(B, T)` with mask `(B, T)` to a 0-dim loss.

    Modes:
        "token_mean":   sum of valid tokens / number of valid tokens (DAPO, arXiv 2503.14476)
        "seq_mean":     mean over rows of each row's token mean (GRPO, arXiv 2402.03300)
        "seq_sum_norm": sum of valid tokens / (B * L) (Dr. GRPO, arXiv 2503.20783), L the
                        generation budget `max_length` (max_completion_length, a constant as in
                        the paper and TRL's "dr_grpo"), or the padded width T when not given

    Across data-parallel shards, token_mean is only the global token mean if
    you combine `loss * n_valid` and `n_valid` (sum both, then divide), not by
    averaging the shards' means.
    """
    if mode not in _AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {sorted(_AGGREGATIONS)}")
    return _AGGREGATIONS[mode](per_token_loss, mask, max_length)


_DENOMINATORS: dict[str, Callable[[torch.Tensor, int | None], float]] = {
    "token_mean": lambda mask, max_length: mask.sum(),
    "seq_mean": lambda mask, max_length: float(mask.shape[0]),
    "seq_sum_norm": lambda mask, max_length: float(mask.shape[0] * _normalising_length(mask, max_length)),
}


def aggregation_denominator(mask: torch.Tensor, mode: str, max_length: int | None = None) -> torch.Tensor:
    """The count `aggregate_loss(x, mask, mode, max_length)` divides by: valid tokens, rows, or B * L.

    Splitting a batch into micro-batches (or shards) k, the global aggregate is
    `sum_k aggregate_loss(x_k, m_k, mode) * d_k / sum_k d_k` with
    `d_k = aggregation_denominator(m_k, mode)`: exact for "token_mean" and "seq_mean", and
    for "seq_sum_norm" given `max_length` (without it, only when every part has the same
    padded width).
    """
    if mode not in _DENOMINATORS:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {sorted(_DENOMINATORS)}")
    return torch.as_tensor(_DENOMINATORS[mode](mask, max_length), device=mask.device).float()


def _token_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return log_ratio  # (B, T): one ratio per token (PPO, GRPO)


def _sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # GSPO eq. 7: log s_i = mean_t (logp - old) over the row's valid tokens, on every valid token.
    # Its gradient is mean_t grad logp, so d s_i = s_i * mean_t grad logp (GSPO eq. 10).
    row_mean = masked_mean(log_ratio, mask, dim=-1)  # (B,); 0 for an all-padding row
    return torch.where(mask.bool(), row_mean[:, None], torch.zeros_like(log_ratio))  # (B, T)


# importance_sampling_level -> the log-ratio each valid token's loss uses
_IMPORTANCE_LEVELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token": _token_log_ratio,
    "sequence": _sequence_log_ratio,
}


def _masked_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Zero the log-ratio on padding so garbage there cannot overflow exp().
    return torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros_like(logprobs))  # (B, T)


def _ratio_stats(log_ratio: torch.Tensor, ratio: torch.Tensor, clipped: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            "clip_fraction": masked_mean(clipped.to(ratio.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float | None = 0.2,
    eps_high: float | None = None,
    aggregation: str = "token_mean",
    max_length: int | None = None,
    importance_sampling_level: str = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss, as used by PPO and GRPO, per token or per sequence (GSPO).

    Shapes: `logprobs`, `old_logprobs`, `mask` `(B, T)`; `advantages` `(B,)`
    (one per sequence, broadcast over tokens) or `(B, T)` -> `(loss, stats)`.

    Formula (arXiv 1707.06347, eq. 7), per valid token:
        ratio = exp(logp - old)
        loss_t = -min(ratio * A, clamp(ratio, 1 - eps_low, 1 + eps_high) * A)
    `eps_high=None` means `eps_low`; a larger `eps_high` is DAPO's clip-higher
    (arXiv 2503.14476). `eps_low=None` disables clipping: plain `-ratio * A`
    (used by PPO with a KL penalty instead of clipping).
    `importance_sampling_level="sequence"` is GSPO (arXiv 2507.18071): every valid token's
    log-ratio is replaced by its row's masked mean, `s_i = exp(mean_t(logp - old))`, so ratio
    and clip are per sequence and the gradient is `s_i * mean_t grad logp` (the paper uses
    clip ranges of 3e-4 / 4e-4 with it, and `aggregation="seq_mean"` is its exact objective).
    The per-token loss is reduced with `aggregate_loss(..., aggregation, max_length)`.

    stats (detached 0-dim): "clip_fraction" (valid tokens whose gradient the
    clip zeroes; with "sequence", every token of a clipped sequence), "approx_kl" (masked
    mean of 0.5 * (logp - old)**2 per token, the k2 estimator), "ratio_mean" (of the ratio
    the loss used).
    """
    if eps_low is None and eps_high is not None:
        raise ValueError("eps_high needs eps_low; pass eps_low=None alone for an unclipped loss")
    if importance_sampling_level not in _IMPORTANCE_LEVELS:
        raise ValueError(
            f"unknown importance_sampling_level {importance_sampling_level!r}; choose one of {sorted(_IMPORTANCE_LEVELS)}"
        )
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # (B,) -> (B, 1), broadcast over tokens
    token_log_ratio = _masked_log_ratio(logprobs, old_logprobs, mask)  # (B, T)
    log_ratio = _IMPORTANCE_LEVELS[importance_sampling_level](token_log_ratio, mask)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    per_token_loss = -advantages * ratio  # (B, T)

    if eps_low is None:
        clipped = torch.zeros_like(mask, dtype=torch.bool)
    else:
        eps_high = eps_low if eps_high is None else eps_high
        clipped_ratio = ratio.clamp(1 - eps_low, 1 + eps_high)
        per_token_loss = torch.maximum(per_token_loss, -advantages * clipped_ratio)  # = -min(...)
        clipped = ((ratio < 1 - eps_low) & (advantages < 0)) | ((ratio > 1 + eps_high) & (advantages > 0))

    loss = aggregate_loss(per_token_loss, mask, aggregation, max_length)
    return loss, _ratio_stats(token_log_ratio, ratio, clipped, mask)


def cispo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ratio_cap: float = 5.0,
    aggregation: str = "token_mean",
    max_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO: REINFORCE with a clipped, stop-gradient importance weight on every token.

    Shapes: as `clipped_policy_loss` -> `(loss, stats)`.

    Formula (MiniMax-M1, arXiv 2506.13585, eq. 4, with only the upper bound, as TRL's
    `loss_type="cispo"` with `epsilon_high` as the cap), per valid token:
        w_t    = stopgrad(min(exp(logp - old), ratio_cap))
        loss_t = -w_t * A * logp
    Unlike PPO's clip, which zeroes the gradient of a token whose ratio left the range,
    the cap only bounds its weight: every token keeps a gradient `-w_t * A * grad logp`.
    The per-token loss is reduced with `aggregate_loss(..., aggregation, max_length)`.

    stats (detached 0-dim): "clip_fraction" (valid tokens where the cap applies),
    "approx_kl", "ratio_mean" (of the uncapped ratio), as `clipped_policy_loss`.
    """
    if ratio_cap <= 0:
        raise ValueError(f"ratio_cap must be > 0, got {ratio_cap}")
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # (B,) -> (B, 1), broadcast over tokens
    log_ratio = _masked_log_ratio(logprobs, old_logprobs, mask)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    weight = ratio.clamp(max=ratio_cap).detach()  # (B, T)
    # Padding may hold garbage log-probs (-inf); it is masked out of the aggregate, and
    # where() keeps it from reaching the sum as nan.
    per_token_loss = torch.where(mask.bool(), -weight * advantages * logprobs, torch.zeros_like(logprobs))
    loss = aggregate_loss(per_token_loss, mask, aggregation, max_length)
    return loss, _ratio_stats(log_ratio, ratio, ratio > ratio_cap, mask)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO value-head loss with the value prediction clipped around the rollout's values.

    Shapes: `values`, `old_values`, `returns`, `mask` `(B, T)` -> `(loss, stats)`.
    Formula (OpenAI baselines / CleanRL `ppo.py`):
        v_clip = clamp(v, old - clip, old + clip)
        loss = 0.5 * masked_mean(max((v - R)**2, (v_clip - R)**2))
    `clip=None` gives the plain `0.5 * masked_mean((v - R)**2)`.
    stats (detached 0-dim): "value_clip_fraction", the valid tokens where the
    clipped term is larger (so it is the one used and its gradient is 0).
    """
    unclipped = (values - returns) ** 2  # (B, T)
    if clip is None:
        per_token_loss, clipped = unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        values_clipped = torch.clamp(values, old_values - clip, old_values + clip)  # (B, T)
        clipped_loss = (values_clipped - returns) ** 2
        per_token_loss = torch.maximum(unclipped, clipped_loss)
        clipped = clipped_loss > unclipped
    loss = 0.5 * masked_mean(per_token_loss, mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean(clipped.to(unclipped.dtype), mask)}
    return loss, stats
