"""Advantage estimators: group-relative (GRPO) and GAE (PPO).

Sources:
- GRPO: Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, section 4.1.2.
- Dr. GRPO (no std division): Liu et al. 2025, arXiv 2503.20783.
- GAE: Schulman et al. 2016, arXiv 1506.02438, eq. 16; loop as in CleanRL `ppo.py`.
"""

from collections.abc import Callable, Sequence

import torch


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

    grouped = rewards.view(-1, group_size)  # (N, G)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)  # (N, G)
    std_fn = _SCALES[scale]
    if std_fn is not None:
        advantages = advantages / (std_fn(grouped) + eps)
    # mean() of equal floats can round away from them; force the exact 0.
    all_equal = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # (N, 1)
    advantages = advantages.masked_fill(all_equal, 0.0)
    return advantages.view(-1)  # (N * G,)


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
