"""GRPO on gymnasium environments: groups of episodes from one start state, no critic.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300) samples G completions per prompt and
scores each against its group. On an environment the prompt becomes a start state:
1. pick `n_groups` seeds; reset the `n_groups * G` envs with every seed repeated G times
   (`env.reset(seed=[s0]*G + [s1]*G + ...)`), so the G envs of a group start identically;
2. run every episode to its end (termination or truncation), the policy sampling;
3. an episode's reward is its total return; `llm_rl.core.group_advantages` scores it against
   its group, and that one advantage goes to every step of the episode;
4. `n_epochs` of clipped updates (`clipped_policy_loss`) over minibatches of steps, with an
   optional `beta * KL` to a frozen copy of the initial policy (`kl_penalty`), as in the
   language-model GRPO trainer.

Where it differs from PPO: no critic, no discount, no per-step credit assignment (every step
of a long episode gets the same credit), and whole episodes per update. It works when episodes
are short and the simulator can be reset to a chosen state (a seed), as CartPole or Pendulum;
it does not suit long or never-ending tasks, where an update waits for the longest episode.
The wall time also pays for the envs of a group whose episodes ended first: the vector env
steps all of them until the last one ends (their steps are not counted nor trained on).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from llm_rl.control.base import BaseAlgorithm
from llm_rl.control.config import GRPOConfig
from llm_rl.core import clipped_policy_loss, group_advantages, kl_penalty, masked_mean


@dataclass
class Episodes:
    """The valid steps of one round of groups, flattened: `obs` `(M, obs_dim)`, the rest `(M,)`; per episode `(n_envs,)`."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor | None
    episode: torch.Tensor  # index of the env (episode) each step belongs to
    returns: np.ndarray  # (n_envs,) total reward of each episode
    lengths: np.ndarray  # (n_envs,)


class GRPO(BaseAlgorithm):
    """Group-relative policy optimisation on an environment. Settings: see `GRPOConfig`.

    `env`: an env id (built as n_groups * group_size copies) or a SAME_STEP `VectorEnv` of that size.
    """

    config_class = GRPOConfig
    uses_critic = False

    def __init__(self, policy="MlpPolicy", env=None, **kwargs):
        super().__init__(policy, env, **kwargs)
        self.rng = np.random.default_rng(self.config.seed)  # start-state seeds

    def _n_envs(self) -> int:
        return self.config.n_groups * self.config.group_size

    def _build(self, observation_space, action_space) -> None:
        super()._build(observation_space, action_space)
        # The frozen reference: a copy of the initial policy (beta = 0 needs none).
        self.ref_policy = copy.deepcopy(self.policy).requires_grad_(False) if self.config.beta > 0 else None

    def reset_groups(self) -> np.ndarray:
        """Reset every env, the G of a group with the same seed: identical start observations per group."""
        seeds = self.rng.integers(0, 2**31 - 1, size=self.config.n_groups)
        obs, _ = self.env.reset(seed=np.repeat(seeds, self.config.group_size).tolist())
        return np.asarray(obs, dtype=np.float32)

    def collect(self) -> Episodes:
        """Run one episode in every env from the group start states, to termination or truncation."""
        n_envs = self.env.num_envs
        obs = self.reset_groups()
        alive = np.ones(n_envs, dtype=bool)
        returns, lengths = np.zeros(n_envs), np.zeros(n_envs, dtype=np.int64)
        steps = []  # per time step: (obs, actions, logprobs, ref_logprobs, alive)
        with torch.inference_mode():
            while alive.any():
                obs_t = torch.as_tensor(obs, device=self.device)  # (N, obs_dim)
                actions, logprobs = self.policy.act(obs_t)
                ref = self.ref_policy.evaluate(obs_t, actions)[0] if self.ref_policy is not None else None
                obs, rewards, terminated, truncated, _ = self.env.step(self._env_actions(actions))
                obs = np.asarray(obs, dtype=np.float32)
                steps.append((obs_t, actions, logprobs, ref, torch.from_numpy(alive.copy())))
                returns += np.where(alive, rewards, 0.0)
                lengths += alive
                # An env whose episode has ended is reset by the vector env and keeps stepping; its steps are masked.
                alive &= ~(terminated | truncated)
        valid = torch.stack([s[4] for s in steps]).to(self.device)  # (L, N)
        pick = lambda i: torch.stack([s[i] for s in steps])[valid]  # noqa: E731  (L, N, ...) -> (M, ...)
        episode = torch.arange(n_envs, device=self.device).expand(valid.shape)[valid]  # (M,)
        return Episodes(pick(0), pick(1), pick(2), pick(3) if self.ref_policy is not None else None, episode, returns, lengths)

    def learn(self, total_timesteps: int, progress_bar: bool = False) -> GRPO:
        """Train until at least `total_timesteps` episode steps (whole rounds of groups) have been used."""
        total_timesteps = self._check_learn(total_timesteps)
        cfg = self.config
        start_time, start_steps, target = time.perf_counter(), self.num_timesteps, self.num_timesteps + total_timesteps
        bar = tqdm(total=total_timesteps, disable=not progress_bar, unit="step")
        while self.num_timesteps < target:
            lr = self._learning_rate(1.0 - (self.num_timesteps - start_steps) / total_timesteps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr

            # 1. G episodes from each of n_groups start states.
            ep = self.collect()
            n_steps = int(ep.lengths.sum())
            self.num_timesteps += n_steps
            bar.update(n_steps)
            self._record_episodes(ep.returns, ep.lengths, self.num_timesteps)

            # 2. One advantage per episode (llm_rl.core.group_advantages), broadcast to its steps.
            episode_adv = group_advantages(
                torch.as_tensor(ep.returns, dtype=torch.float32), cfg.group_size, scale=cfg.advantage_scale
            )
            advantages = episode_adv.to(self.device)[ep.episode]  # (M,)

            # 3. Clipped updates over minibatches of steps.
            stats = self._update(ep, advantages)
            stats["learning_rate"] = lr
            stats["return_mean"] = float(ep.returns.mean())
            stats["groups_with_signal"] = float((episode_adv.view(-1, cfg.group_size) != 0).any(1).float().mean())
            self._log({k: float(v) for k, v in stats.items()}, start_time, start_steps)
        bar.close()
        return self

    def _update(self, ep: Episodes, advantages: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, policy = self.config, self.policy
        ones = torch.ones(cfg.batch_size, 1, device=self.device)  # the core's mask: every step is valid
        keys = ("policy_loss", "entropy", "kl", "approx_kl", "clip_fraction")
        totals, n = torch.zeros(len(keys), device=self.device), 0
        for _ in range(cfg.n_epochs):
            for idx in torch.randperm(advantages.shape[0], device=self.device).split(cfg.batch_size):
                mask = ones[: idx.shape[0]]  # (B, 1); the last minibatch may be smaller
                logprobs, entropy = policy.evaluate(ep.obs[idx], ep.actions[idx])  # (B,), (B,)
                policy_loss, pstats = clipped_policy_loss(
                    logprobs[:, None], ep.logprobs[idx][:, None], advantages[idx][:, None], mask, eps_low=cfg.clip_range
                )
                entropy = entropy.mean()
                loss = policy_loss - cfg.ent_coef * entropy
                if ep.ref_logprobs is not None:  # beta * KL(policy || initial policy), as the LM GRPO trainer's loss
                    kl = masked_mean(kl_penalty(logprobs[:, None], ep.ref_logprobs[idx][:, None], cfg.kl_estimator), mask)
                    loss = loss + cfg.beta * kl
                else:
                    kl = torch.zeros((), device=self.device)

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm, foreach=True)
                self.optimizer.step()
                with torch.no_grad():
                    totals += torch.stack([policy_loss, entropy, kl, pstats["approx_kl"], pstats["clip_fraction"]])
                n += 1
        return dict(zip(keys, totals / n))
