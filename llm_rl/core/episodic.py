"""GAE over a rollout of vectorised environments, with episode boundaries anywhere in it.

`gae` in `advantages.py` scores one completion per row, whose episode always ends with the
row. A classic-control rollout is different: each of N environments runs T steps, episodes
end (and the environment resets) in the middle, and the rollout itself usually stops
mid-episode. Two kinds of episode end must be told apart (Pardo et al. 2018, "Time Limits in
Reinforcement Learning", arXiv 1712.00378):
- termination (the MDP ended: the pole fell): the value after the last step is 0;
- truncation (a time limit cut the episode): the episode could have gone on, so bootstrap
  with the critic's value of the final observation.

Sources: GAE, Schulman et al. 2016, arXiv 1506.02438, eq. 16; the reverse scan as in
CleanRL `ppo.py` (`lastgaelam`); truncation bootstrap as in Stable-Baselines3's
`OnPolicyAlgorithm.collect_rollouts`.
"""

import torch


def episodic_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    final_values: torch.Tensor,
    last_values: torch.Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns for a `(T, N)` rollout of N environments (time first).

    Shapes: `rewards`, `values`, `terminated`, `truncated`, `final_values` `(T, N)`;
    `last_values` `(N,)` -> `(advantages, returns)`, both `(T, N)`.
    - `values[t]` is V(s_t), the critic's value of the observation acted on at step t;
    - `terminated[t]` / `truncated[t]`: the episode ended at step t (termination wins if both);
    - `final_values[t]`: V of the episode's final observation where `truncated[t]` (read only there);
    - `last_values`: V of the observation after the rollout's last step (read only where the
      episode goes on past the rollout).

    Formula, with `done_t = terminated_t or truncated_t`:
        next_t  = 0                if terminated_t
                  final_values_t   if truncated_t
                  values_{t+1}     otherwise (last_values for t = T - 1)
        delta_t = r_t + gamma * next_t - V_t
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},   A_T = 0
        returns = A + V
    Pass detached values: this is a target, not part of the graph.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (T, N), time first, got shape {tuple(rewards.shape)}")
    for name, tensor in (
        ("values", values),
        ("terminated", terminated),
        ("truncated", truncated),
        ("final_values", final_values),
    ):
        if tensor.shape != rewards.shape:
            raise ValueError(f"{name} must have the shape of rewards {tuple(rewards.shape)}, got {tuple(tensor.shape)}")
    if last_values.shape != rewards.shape[1:]:
        raise ValueError(f"last_values must be (N,) = {tuple(rewards.shape[1:])}, got {tuple(last_values.shape)}")

    terminated = terminated.bool()
    done = terminated | truncated.bool()  # (T, N)
    next_values = torch.cat([values[1:], last_values[None]], dim=0)  # (T, N): V_{t+1}, no episode end
    next_values = torch.where(truncated.bool(), final_values, next_values)  # time limit: bootstrap
    next_values = torch.where(terminated, torch.zeros_like(next_values), next_values)  # true end: 0
    deltas = rewards + gamma * next_values - values  # (T, N)
    carry = gamma * lam * (~done).to(values.dtype)  # (T, N): the advantage stops at an episode end

    # Reverse scan over time, vectorised over the N environments (CleanRL's `lastgaelam`).
    last_gae_lam = torch.zeros_like(last_values)  # (N,), A_T = 0
    advantages = torch.empty_like(values)
    for t in reversed(range(values.shape[0])):
        last_gae_lam = deltas[t] + carry[t] * last_gae_lam
        advantages[t] = last_gae_lam
    return advantages, advantages + values
