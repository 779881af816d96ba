"""Advantage estimators: group-relative (GRPO), leave-one-out (RLOO), REINFORCE++, and GAE (PPO).

Sources:
- GRPO: Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, section 4.1.2.
- Dr. GRPO (no std division): Liu et al. 2025, arXiv 2503.20783.
- RLOO: Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740, eq. 6 (Kool et al. 2019).
- REINFORCE++: Hu et al. 2025, arXiv 2501.03262 (global advantage normalisation; with and
  without the group-mean baseline, as OpenRLHF's "reinforce_baseline" and "reinforce").
- GAE: Schulman et al. 2016, arXiv 1506.02438, eq. 16; loop as in CleanRL `ppo.py`.
"""

from collections.abc import Callable, Sequence

import torch

from llm_rl.core.masked import masked_mean, masked_var, masked_whiten

# Global statistics for whitening: a `(mean, var)` pair computed elsewhere, or a function
# `(x, mask) -> (mean, var)` called on the values about to be whitened (e.g. one that reduces
# over every data-parallel process, as the trainers' `global_mean_var`).
MeanVar = tuple[torch.Tensor, torch.Tensor] | Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _group_std(grouped: torch.Tensor) -> torch.Tensor:
    return grouped.std(dim=1, keepdim=True)  # (N, 1), Bessel-corrected


def _batch_std(grouped: torch.Tensor) -> torch.Tensor:
    return grouped.std()  # (), Bessel-corrected over all N*G rewards


# scale -> std to divide by, or None for no division (Dr. GRPO).
_SCALES: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "group": _group_std,
    "batch": _batch_std,
    "none": None,
}


def group_advantages(
    rewards: torch.Tensor | Sequence[float],
    group_size: int,
    scale: str = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Group-relative advantages, one per completion.

    Shapes: `rewards` `(N * G,)` with the G completions of prompt i at
    `[i*G:(i+1)*G]` -> advantages `(N * G,)`. A list is accepted too.

    Formula (GRPO, arXiv 2402.03300): `A = (r - mean_group(r)) / (std + eps)`,
    where `std` is `torch.std` (Bessel-corrected) of the group for
    `scale="group"`, of the whole batch for `scale="batch"`, and no division at
    all for `scale="none"` (Dr. GRPO, arXiv 2503.20783). A group whose rewards
    are all equal carries no signal and gets advantage exactly 0.

    Example: `group_advantages([1, 0, 0, 1], 2, scale="none")` -> `[0.5, -0.5, -0.5, 0.5]`.
    """
    if scale not in _SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(_SCALES)}")
    grouped = _grouped(rewards, group_size)  # (N, G)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)  # (N, G)
    std_fn = _SCALES[scale]
    if std_fn is not None:
        advantages = advantages / (std_fn(grouped) + eps)
    return _zero_all_equal_groups(advantages, grouped).view(-1)  # (N * G,)


def _grouped(rewards: torch.Tensor | Sequence[float], group_size: int) -> torch.Tensor:
    """`(N * G,)` rewards (a list too) as a float `(N, G)` view, after checking the shapes."""
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N * group_size,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to compare completions, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into whole groups of {group_size}: pass all {group_size} "
            f"rewards of every prompt, one group after another ({group_size} x the number of prompts)"
        )
    return rewards.view(-1, group_size)


def _zero_all_equal_groups(advantages: torch.Tensor, grouped: torch.Tensor) -> torch.Tensor:
    # mean() of equal floats can round away from them; force the exact 0.
    all_equal = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # (N, 1)
    return advantages.masked_fill(all_equal, 0.0)


def rloo_advantages(rewards: torch.Tensor | Sequence[float], group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages, one per completion.

    Shapes: `rewards` `(N * G,)`, grouped as in `group_advantages` -> `(N * G,)`.

    Formula (RLOO, arXiv 2402.14740, eq. 6): `A_i = r_i - mean_{j != i} r_j`, the baseline of
    each sample the mean of the other G - 1 of its group, so it is independent of the sample
    and the estimate unbiased. Equals `G / (G - 1) * (r_i - mean_group(r))`. Needs G >= 2.
    An all-equal group gets exactly 0.

    Example: `rloo_advantages([1, 0, 0, 0], 4)` -> `[1, -1/3, -1/3, -1/3]`.
    """
    grouped = _grouped(rewards, group_size)  # (N, G)
    # Equivalent loop: A[i] = r[i] - (sum(group) - r[i]) / (G - 1)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (N, G)
    return _zero_all_equal_groups(grouped - others_mean, grouped).view(-1)  # (N * G,)


def _resolve_mean_var(x: torch.Tensor, mask: torch.Tensor, mean_var: MeanVar | None) -> tuple[torch.Tensor, torch.Tensor]:
    if mean_var is None:
        return masked_mean(x, mask), masked_var(x, mask)
    return mean_var(x, mask) if callable(mean_var) else mean_var


def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor | Sequence[float],
    group_size: int,
    mask: torch.Tensor,
    mean_var: MeanVar | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """REINFORCE++ with the group-mean baseline: token advantages whitened over the global batch.

    Shapes: `rewards` `(N * G,)` grouped as in `group_advantages`, `mask` `(N * G, T)` -> `(N * G, T)`.

    Formula (REINFORCE++, arXiv 2501.03262; OpenRLHF's "reinforce_baseline"):
        c_i   = r_i - mean_group(r)              (exactly 0 for an all-equal group)
        A_i,t = (c_i - mu) / sqrt(sigma^2 + eps) on the valid tokens of row i, 0 on padding
    with `mu`, `sigma^2` the mean and Bessel-corrected variance of `c` over all valid tokens
    of the batch (each row counts once per valid token). Normalising by the global batch
    instead of the group keeps groups with a tiny spread from being blown up. `mean_var`
    passes those statistics computed over every process (see `MeanVar`); by default they are
    this batch's. Note the shift by `mu`: an all-equal group gets `-mu / sigma`, not 0.
    """
    centred = group_advantages(rewards, group_size, scale="none")  # (N * G,)
    if mask.dim() != 2 or mask.shape[0] != centred.shape[0]:
        raise ValueError(f"mask must be (N * group_size, T) = ({centred.shape[0]}, T), got shape {tuple(mask.shape)}")
    token_values = torch.where(mask.bool(), centred[:, None], torch.zeros((), dtype=centred.dtype))  # (N * G, T)
    return masked_whiten(token_values, mask, eps=eps, mean_var=_resolve_mean_var(token_values, mask, mean_var))


def return_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Discounted return from each token to the end of its completion: `(B, T) -> (B, T)`.

    Formula: `R_t = sum_{s >= t} gamma^(s - t) r_s` over valid tokens, 0 on padding. This is
    GAE with values 0 and lambda 1 (`delta_t = r_t`), so it reuses `gae`'s tested scan.
    """
    advantages, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)
    return advantages


def reinforce_pp_advantages(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    mean_var: MeanVar | None = None,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (no group baseline): whitened return-to-go of token-level KL-penalised rewards.

    Shapes: `token_rewards`, `mask` `(B, T)` -> `(advantages, returns)`, both `(B, T)`, 0 on padding.

    Formula (REINFORCE++, arXiv 2501.03262, eqs. 5-7):
        r_t = -beta * KL_t (+ score on the last valid token)   (`kl_penalized_rewards` builds these)
        R_t = sum_{s >= t} gamma^(s - t) r_s                    (`return_to_go`)
        A_t = (R_t - mu) / sqrt(sigma^2 + eps)                  (mean and variance over all valid
                                                                 tokens of the global batch)
    No value model and no group: valid with one completion per prompt. `mean_var` passes
    global statistics of the returns (see `MeanVar`); by default they are this batch's.
    """
    returns = return_to_go(token_rewards, mask, gamma)  # (B, T)
    advantages = masked_whiten(returns, mask, eps=eps, mean_var=_resolve_mean_var(returns, mask, mean_var))
    return advantages, returns


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a padded batch of completions.

    Shapes: `rewards`, `values`, `mask` `(B, T)` -> `(advantages, returns)`,
    both `(B, T)` and 0 where `mask` is 0. `mask` is 1 on completion tokens, a
    contiguous run from position 0; the episode ends with the completion, so
    the value after the last valid token is 0.

    Formula (arXiv 1506.02438, eq. 16):
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V
    Pass detached values: this is a target, not part of the graph.
    """
    keep = mask.bool()  # (B, T)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    rewards = torch.where(keep, rewards, zero)
    values = torch.where(keep, values, zero)  # padding value 0 => V after the last token is 0
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # (B, T)
    deltas = rewards + gamma * next_values - values  # (B, T)

    # Reverse scan over time, vectorised over the batch (CleanRL's `lastgaelam`).
    # Zeroing A on padding makes A_{t+1} = 0 after the last valid token.
    last_gae_lam = torch.zeros_like(values[:, 0])  # (B,)
    reversed_advantages = []
    for t in reversed(range(values.shape[1])):
        last_gae_lam = torch.where(keep[:, t], deltas[:, t] + gamma * lam * last_gae_lam, zero)
        reversed_advantages.append(last_gae_lam)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)  # (B, T)
    returns = torch.where(keep, advantages + values, zero)
    return advantages, returns
