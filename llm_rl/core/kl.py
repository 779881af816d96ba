"""KL(policy || reference) estimators, KL-shaped rewards, and KL-coefficient controllers.

Sources:
- Estimators k1/k2/k3: Schulman 2020, "Approximating KL divergence",
  http://joschu.net/blog/kl-approx.html
- Per-token KL penalty with the score on the last token: Ouyang et al. 2022
  (InstructGPT, arXiv 2203.02155, eq. 2); TRL `PPOTrainer`.
- Adaptive KL controller: Ziegler et al. 2019, arXiv 1909.08593, section 2.2.
"""

from collections.abc import Callable

import torch

# k3 exponentiates the log-ratio; clamp it so exp() cannot overflow to inf
# (exp(20) ~ 5e8 already means the policy has left the reference far behind).
_K3_LOG_RATIO_CLAMP = 20.0


def _k1(log_ratio: torch.Tensor) -> torch.Tensor:
    return log_ratio  # unbiased, high variance, can be negative


def _k2(log_ratio: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_ratio**2  # biased, low variance, >= 0


def _k3(log_ratio: torch.Tensor) -> torch.Tensor:
    # With q/p = exp(ref - logp): (q/p - 1) - log(q/p); unbiased, low variance, >= 0.
    ref_minus_logp = (-log_ratio).clamp(-_K3_LOG_RATIO_CLAMP, _K3_LOG_RATIO_CLAMP)
    return torch.exp(ref_minus_logp) - ref_minus_logp - 1


_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled by the policy.

    Shapes: `logprobs`, `ref_logprobs` `(B, T)` -> `(B, T)` (any matching shape works).
    Formula, with `log_ratio = logp - ref` (Schulman 2020):
        k1 = log_ratio
        k2 = 0.5 * log_ratio**2
        k3 = exp(ref - logp) - (ref - logp) - 1, with `ref - logp` clamped to [-20, 20]
    All three are exactly 0 where `logp == ref`. Padding is not masked here.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {sorted(_ESTIMATORS)}")
    return _ESTIMATORS[estimator](logprobs - ref_logprobs)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
    estimator: str = "k1",
) -> torch.Tensor:
    """Token-level PPO rewards: a KL penalty on every token, the score on the last.

    Shapes: `scores` `(B,)`; `logprobs`, `ref_logprobs`, `mask` `(B, T)` -> `(B, T)`.
    Formula (InstructGPT eq. 2, TRL PPO):
        r_t = -kl_coef * kl_t            on valid tokens, 0 on padding
        r_t += scores[b]                 at the last valid token of row b
    A row with no valid token gets all zeros.
    """
    keep = mask.bool()  # (B, T)
    kl = kl_penalty(logprobs, ref_logprobs, estimator)  # (B, T)
    rewards = torch.where(keep, -kl_coef * kl, torch.zeros_like(kl))  # (B, T)

    positions = torch.arange(keep.shape[1], device=keep.device)  # (T,)
    last = torch.where(keep, positions, -1).max(dim=1).values  # (B,), -1 for an empty row
    has_token = last >= 0  # (B,)
    # Equivalent loop: for b in range(B): if has_token[b]: rewards[b, last[b]] += scores[b]
    bonus = torch.where(has_token, scores.to(rewards.dtype), torch.zeros_like(scores, dtype=rewards.dtype))
    return rewards.scatter_add(1, last.clamp_min(0)[:, None], bonus[:, None])


class AdaptiveKLController:
    """KL coefficient that steers the observed KL towards a target (Ziegler et al. 2019, arXiv 1909.08593).

    Update rule, with proportional error clipped to +-0.2:
        e = clip(current_kl / target - 1, -0.2, 0.2)
        value *= 1 + e * n_steps / horizon
    KL above target raises the coefficient (stronger penalty); below lowers it.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class FixedKLController:
    """Constant KL coefficient with the same interface as `AdaptiveKLController`."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
