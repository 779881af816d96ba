"""Pairwise preference loss for reward-model training.

Source: the Bradley-Terry model of paired comparisons (Bradley & Terry 1952,
Biometrika 39(3/4)), P(chosen > rejected) = sigmoid(r_c - r_r), as the reward-model
loss of InstructGPT (Ouyang et al. 2022, arXiv 2203.02155, eq. 1). The optional
margin is Llama 2's (Touvron et al. 2023, arXiv 2307.09288, eq. 2).
"""

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    margin: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the preferences under the Bradley-Terry model.

    Shapes: `chosen_scores`, `rejected_scores` `(N,)`, one scalar reward per pair;
    `margin` a float or `(N,)` -> `(loss, stats)`.

    Formula (arXiv 2203.02155, eq. 1; margin as in arXiv 2307.09288, eq. 2):
        loss = mean_i -log sigmoid(r_c[i] - r_r[i] - margin[i])
    computed as `-logsigmoid(x)`, which stays finite where `log(sigmoid(x))`
    underflows to `-inf` (x below about -100 in float32).

    stats (detached 0-dim): "accuracy", the fraction of pairs with r_c > r_r (a tie
    counts as wrong); "margin_mean", the mean of r_c - r_r (without `margin`).
    """
    if chosen_scores.dim() != 1 or chosen_scores.shape != rejected_scores.shape or chosen_scores.numel() == 0:
        raise ValueError(
            f"chosen_scores and rejected_scores must both have shape (N,) with N >= 1, "
            f"got {tuple(chosen_scores.shape)} and {tuple(rejected_scores.shape)}"
        )
    score_gap = chosen_scores - rejected_scores  # (N,)
    logits = score_gap if margin is None else score_gap - margin  # (N,)
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        stats = {
            "accuracy": (score_gap > 0).float().mean(),
            "margin_mean": score_gap.float().mean(),
        }
    return loss, stats
