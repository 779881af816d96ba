"""MlpPolicy: a separate actor and critic MLP, with a categorical or diagonal-Gaussian action head.

As in the PPO paper's implementations (OpenAI baselines, CleanRL `ppo.py`, Stable-Baselines3's
MlpPolicy): 64-64 tanh, orthogonal init with gain sqrt(2) on hidden layers, 0.01 on the policy
head (near-uniform first actions), 1 on the value head, biases 0; for Box actions a
state-independent log standard deviation (Huang et al. 2022, "The 37 implementation details
of PPO", ICLR blog track).

The distributions are written out instead of `torch.distributions` objects: on a tiny MLP the
per-call cost of building a distribution (argument validation, broadcasting) is a sizeable
share of a step. tests/test_control_policies.py checks them against `torch.distributions`.
"""

from __future__ import annotations

import math

import torch
from gymnasium.spaces import Box, Discrete
from torch import nn

from llm_rl.core import entropy_from_logits

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def mlp(in_dim: int, hidden: list[int], out_dim: int, activation: str, out_gain: float) -> nn.Sequential:
    """Linear -> activation, per hidden width, then a linear head; orthogonal init."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [_orthogonal(nn.Linear(in_dim, width), math.sqrt(2)), ACTIVATIONS[activation]()]
        in_dim = width
    layers.append(_orthogonal(nn.Linear(in_dim, out_dim), out_gain))
    return nn.Sequential(*layers)


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class Categorical:
    """Discrete actions; the head's output `(B, A)` are the logits."""

    @staticmethod
    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1)  # (B,) int64

    @staticmethod
    def mode(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)  # (B,)

    @staticmethod
    def log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        # log_softmax(x)_a; core's selective_log_softmax saves vocabulary-sized memory row by row,
        # which a handful of actions does not need.
        return torch.log_softmax(logits, dim=-1).gather(-1, actions.long()[:, None]).squeeze(-1)  # (B,)

    @staticmethod
    def entropy(logits: torch.Tensor) -> torch.Tensor:
        return entropy_from_logits(logits)  # (B,)


class DiagGaussian:
    """Box actions; the head's output `(B, D)` is the mean, `log_std` `(D,)` a free parameter.

    log N(a; mu, sigma) = sum_d [-(a_d - mu_d)^2 / (2 sigma_d^2) - log sigma_d - log(2 pi) / 2]
    H = sum_d [1/2 + log(2 pi) / 2 + log sigma_d]
    Log-probs are of the unclipped sample; clipping to the bounds happens only in the env call.
    """

    @staticmethod
    def sample(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        return mean + log_std.exp() * torch.randn_like(mean)  # (B, D)

    @staticmethod
    def mode(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        return mean

    @staticmethod
    def log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - mean) * torch.exp(-log_std)  # (B, D)
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)  # (B,)

    @staticmethod
    def entropy(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        per_dim = 0.5 + 0.5 * math.log(2 * math.pi) + log_std  # (D,)
        return per_dim.sum().expand(mean.shape[0])  # (B,)


DISTRIBUTIONS: dict[type, type] = {Discrete: Categorical, Box: DiagGaussian}


class MlpPolicy(nn.Module):
    """Actor (and, unless `critic=False`, a critic) for a 1-D Box observation space.

    `forward` is not used; call `act` (rollout), `evaluate` (update) and `value`.
    """

    def __init__(
        self,
        observation_space: Box,
        action_space: Discrete | Box,
        net_arch: list[int] | None = None,
        activation_fn: str = "tanh",
        log_std_init: float = 0.0,
        critic: bool = True,
    ):
        super().__init__()
        hidden = [64, 64] if net_arch is None else list(net_arch)
        obs_dim = observation_space.shape[0]
        self.distribution = DISTRIBUTIONS[type(action_space)]
        self.continuous = isinstance(action_space, Box)
        out_dim = action_space.shape[0] if self.continuous else int(action_space.n)
        self.actor = mlp(obs_dim, hidden, out_dim, activation_fn, out_gain=0.01)
        self.critic = mlp(obs_dim, hidden, 1, activation_fn, out_gain=1.0) if critic else None
        self.log_std = nn.Parameter(torch.full((out_dim,), float(log_std_init))) if self.continuous else None

    def _params(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head = self.actor(obs)  # (B, A) logits or (B, D) mean
        return (head, self.log_std) if self.continuous else (head,)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)  # (B,)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions `(B,)` or `(B, D)` and their log-probs `(B,)` for observations `(B, obs_dim)`."""
        params = self._params(obs)
        actions = self.distribution.mode(*params) if deterministic else self.distribution.sample(*params)
        return actions, self.distribution.log_prob(*params, actions)

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies `(B,)` of `actions` under the current actor."""
        params = self._params(obs)
        return self.distribution.log_prob(*params, actions), self.distribution.entropy(*params)
