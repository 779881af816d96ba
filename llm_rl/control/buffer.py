"""The PPO rollout buffer: `n_steps x n_envs` transitions, preallocated once and written in place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Rollout:
    """One rollout, time first: `obs` `(T, N, obs_dim)`, `actions` `(T, N)` or `(T, N, D)`, the rest `(T, N)`."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_values: torch.Tensor  # V(final observation) where truncated; stale elsewhere, never read there


class RolloutBuffer:
    """Torch tensors for what the policy produced, numpy arrays for what the env returned (one copy each per step)."""

    def __init__(self, n_steps: int, n_envs: int, obs_shape: tuple, action_shape: tuple, device: torch.device):
        self.n_steps, self.n_envs, self.size = n_steps, n_envs, n_steps * n_envs
        self.device = device
        self.obs = torch.zeros(n_steps, n_envs, *obs_shape, device=device)
        discrete = len(action_shape) == 0
        self.actions = torch.zeros(n_steps, n_envs, *action_shape, dtype=torch.long if discrete else torch.float32, device=device)
        self.logprobs = torch.zeros(n_steps, n_envs, device=device)
        self.values = torch.zeros(n_steps, n_envs, device=device)
        self.final_values = torch.zeros(n_steps, n_envs, device=device)
        self.rewards = np.zeros((n_steps, n_envs), dtype=np.float32)
        self.terminated = np.zeros((n_steps, n_envs), dtype=bool)
        self.truncated = np.zeros((n_steps, n_envs), dtype=bool)
        self.ones = torch.ones(self.size, device=device)  # the core's mask: every transition is valid

    def add(self, t, obs, actions, logprobs, values, rewards, terminated, truncated) -> None:
        self.obs[t] = obs
        self.actions[t] = actions
        self.logprobs[t] = logprobs
        self.values[t] = values
        self.rewards[t] = rewards
        self.terminated[t] = terminated
        self.truncated[t] = truncated  # final_values[t] is written by the loop where truncated

    def finish(self) -> Rollout:
        """The rollout as tensors; views of the buffer, valid until the next rollout overwrites it."""
        to = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        return Rollout(
            self.obs,
            self.actions,
            self.logprobs,
            self.values,
            to(self.rewards),
            to(self.terminated),
            to(self.truncated),
            self.final_values,
        )
