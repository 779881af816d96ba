"""Rollout-training mismatch correction: importance weights from the trainer's over the sampler's log-probs.

The log-probs a sampler drew tokens with can differ from the ones the trainer computes for
the same tokens: another precision, another kernel, an inference engine, or a sampling
distribution truncated by top-k/top-p. The policy gradient is then off-policy by
`pi_train / pi_rollout`; these weights correct for it.

Sources:
- Truncated importance sampling (TIS): Yao et al. 2025, "Your efficient RL framework secretly
  brings you off-policy RL training" (blog post); the truncation as in IMPALA's V-trace
  (Espeholt et al. 2018, arXiv 1802.01561).
- Masked importance sampling at the sequence level (MIS): Liu, Li et al. 2025, "When speed
  kills stability: demystifying RL collapse from the training-inference mismatch" (blog post).
  The mode names follow ms-swift's `rollout_importance_sampling_mode`. As slime and verl do, a
  rejected sequence is best left out of the loss's denominators too, not only weighted by 0.
"""

from collections.abc import Callable

import torch

from llm_rl.core.masked import masked_mean

# exp() of a log-ratio this large is already far outside any cap; clamping keeps the logged
# mean ratio finite (the weights themselves never exceed the cap).
_LOG_RATIO_CLAMP = 20.0


def _token_truncate(log_ratio: torch.Tensor, keep: torch.Tensor, cap: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ratio = log_ratio.clamp(max=_LOG_RATIO_CLAMP).exp()  # (B, T)
    weights = torch.where(keep, ratio.clamp(max=cap), torch.zeros_like(ratio))  # min(ratio, C) per token
    return weights, {"mean_ratio": masked_mean(ratio, keep), "truncated_fraction": masked_mean((ratio > cap).float(), keep)}


def _sequence_mask(log_ratio: torch.Tensor, keep: torch.Tensor, cap: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    sequence_log_ratio = torch.where(keep, log_ratio, torch.zeros_like(log_ratio)).sum(-1)  # (B,) log prod_t ratio_t
    # compared in log space: ratio in [1/C, C]  <=>  |log ratio| <= log C (no overflow for long sequences)
    accepted = sequence_log_ratio.abs() <= torch.log(torch.tensor(cap, dtype=log_ratio.dtype))  # (B,)
    weights = (keep & accepted[:, None]).to(log_ratio.dtype)  # (B, T)
    rows = keep.any(-1)  # an all-padding row is neither accepted nor masked
    ratio = sequence_log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP).exp()
    return weights, {"mean_ratio": masked_mean(ratio, rows), "masked_fraction": masked_mean((~accepted).float(), rows)}


_MODES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {
    "token_truncate": _token_truncate,
    "sequence_mask": _sequence_mask,
}


@torch.no_grad()
def rollout_correction(
    train_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    cap: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Detached importance weights `(B, T)` that correct the policy gradient for rollout-training mismatch.

    Shapes: `train_logprobs` (the trainer's, of the policy that the update starts from),
    `rollout_logprobs` (the sampler's), `mask` `(B, T)` -> `(weights (B, T), stats)`.
    Multiply each token's policy loss (or, the same for weights >= 0, its advantage) by them.

    Modes, with `ratio_t = exp(train_t - rollout_t)`:
        "token_truncate" (TIS): `w_t = min(ratio_t, cap)` per valid token
        "sequence_mask"  (MIS): `w_t = 1` on the valid tokens of rows whose sequence ratio
                          `exp(sum_t (train_t - rollout_t))` lies in `[1/cap, cap]`, else 0
    Weights are 0 on padding. `cap >= 1`.

    stats (0-dim): "mean_ratio" (per valid token for "token_truncate", per non-empty row of
    the sequence ratio for "sequence_mask"), "truncated_fraction" (valid tokens whose ratio
    exceeds the cap) or "masked_fraction" (non-empty rows rejected).
    """
    if mode not in _MODES:
        raise ValueError(f"unknown rollout correction mode {mode!r}; choose one of {sorted(_MODES)}")
    if not cap >= 1:
        raise ValueError(f"cap must be >= 1 (the ratio range is [1/cap, cap]), got {cap}")
    keep = mask.bool()
    log_ratio = torch.where(keep, train_logprobs.float() - rollout_logprobs.float(), torch.zeros_like(train_logprobs, dtype=torch.float32))
    return _MODES[mode](log_ratio, keep, cap)
