"""PPO on gymnasium environments: `PPO("MlpPolicy", "CartPole-v1").learn(50_000)`.

One loop, read top to bottom as CleanRL's `ppo.py`: collect `n_steps` from `n_envs` vectorised
environments, bootstrap the last value, GAE with episode ends in the middle, `n_epochs` of
shuffled minibatches, log. The math is llm_rl.core's, the same functions the language-model
PPO trainer calls: `episodic_gae`, `masked_whiten`, `clipped_policy_loss`, `clipped_value_loss`,
`explained_variance`.

Sources: Schulman et al. 2017, arXiv 1707.06347 (PPO); Huang et al. 2022, "The 37
implementation details of PPO" (ICLR blog track); CleanRL `ppo.py`; Stable-Baselines3's API.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from llm_rl.control.base import BaseAlgorithm
from llm_rl.control.buffer import Rollout, RolloutBuffer
from llm_rl.control.config import PPOConfig
from llm_rl.control.envs import episode_returns, final_observations
from llm_rl.core import clipped_policy_loss, clipped_value_loss, episodic_gae, explained_variance, masked_whiten


class PPO(BaseAlgorithm):
    """Proximal Policy Optimization with a separate critic. Settings: see `PPOConfig` (SB3's names).

    `env`: an env id (built as `n_envs` copies with `gymnasium.make_vec`), a `gymnasium.Env`
    (n_envs=1), or a `gymnasium.vector.VectorEnv` in SAME_STEP autoreset mode.
    """

    config_class = PPOConfig
    uses_critic = True
    _obs = None  # the observation the next rollout starts from (None: reset first)

    def _n_envs(self) -> int:
        return self.config.n_envs

    def learn(self, total_timesteps: int, progress_bar: bool = False) -> PPO:
        """Train for at least `total_timesteps` environment steps (whole rollouts of n_steps * n_envs)."""
        total_timesteps = self._check_learn(total_timesteps)
        cfg, env, policy = self.config, self.env, self.policy
        n_envs = env.num_envs
        if cfg.batch_size > cfg.n_steps * n_envs or (cfg.n_steps * n_envs) % cfg.batch_size:
            raise ValueError(f"batch_size={cfg.batch_size} does not divide n_steps * num_envs = {cfg.n_steps} * {n_envs}")
        buffer = RolloutBuffer(cfg.n_steps, n_envs, self.observation_space.shape, self.action_space.shape, self.device)
        n_updates = -(-total_timesteps // buffer.size)  # ceil
        start_time, start_steps = time.perf_counter(), self.num_timesteps
        if self._obs is None:  # the first learn(); a later one goes on with the running episodes
            self._obs, _ = env.reset(seed=cfg.seed)
            self._ep_return, self._ep_length = np.zeros(n_envs), np.zeros(n_envs, dtype=np.int64)
        bar = tqdm(total=n_updates * buffer.size, disable=not progress_bar, unit="step")

        for update in range(n_updates):
            lr = self._learning_rate(1.0 - update / n_updates)
            for group in self.optimizer.param_groups:
                group["lr"] = lr

            # 1. Rollout: n_steps of every env, then V of the observation after the last step.
            b, last_values = self.collect_rollout(buffer)
            bar.update(buffer.size)

            # 2. Advantages over the (T, N) rollout, episode ends inside it (llm_rl.core.episodic_gae).
            advantages, returns = episodic_gae(
                b.rewards, b.values, b.terminated, b.truncated, b.final_values, last_values, cfg.gamma, cfg.gae_lambda
            )

            # 3. n_epochs of shuffled minibatches.
            stats = self._update(b, advantages.reshape(-1), returns.reshape(-1))
            stats["explained_variance"] = explained_variance(b.values.reshape(-1), returns.reshape(-1), buffer.ones)
            stats["learning_rate"] = lr
            if policy.continuous:
                stats["std"] = policy.log_std.detach().exp().mean()
            self._log({k: float(v) for k, v in stats.items()}, start_time, start_steps)
        bar.close()
        return self

    @torch.inference_mode()
    def collect_rollout(self, buffer: RolloutBuffer) -> tuple[Rollout, torch.Tensor]:
        """Fill `buffer` with n_steps of every env, one policy call per step for all of them.

        Continues from `self._obs`; returns the rollout and V of the observation after its last step `(N,)`.
        """
        policy, n_envs = self.policy, self.env.num_envs
        obs = self._obs
        for t in range(buffer.n_steps):
            obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)  # (N, obs_dim)
            actions, logprobs = policy.act(obs_t)
            values = policy.value(obs_t)  # (N,)
            obs, rewards, terminated, truncated, infos = self.env.step(self._env_actions(actions))
            # Truncation (time limit) bootstraps with V(final observation); termination does not.
            if truncated.any():
                final = final_observations(np.asarray(obs, dtype=np.float32), truncated, infos)
                buffer.final_values[t] = policy.value(torch.as_tensor(final, device=self.device))
            buffer.add(t, obs_t, actions, logprobs, values, rewards, terminated, truncated)

            done = terminated | truncated
            self._ep_return += rewards
            self._ep_length += 1
            if done.any():
                at = self.num_timesteps + (t + 1) * n_envs
                self._record_episodes(episode_returns(infos, done, self._ep_return), self._ep_length[done], at)
                self._ep_return[done], self._ep_length[done] = 0.0, 0
        self._obs = obs
        self.num_timesteps += buffer.size
        last_values = policy.value(torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device))  # (N,)
        return buffer.finish(), last_values

    def _update(self, b: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
        """n_epochs x (rollout / batch_size) clipped updates; returns the mean of each statistic."""
        cfg, policy = self.config, self.policy
        n, batch = advantages.shape[0], cfg.batch_size
        obs_dim = b.obs.shape[-1]
        # One (n, obs_dim + action_dim + 4) table, shuffled with one gather per epoch instead of six per minibatch.
        columns = [b.obs.reshape(n, obs_dim), b.actions.reshape(n, -1).float(), b.logprobs.reshape(n, 1),
                   b.values.reshape(n, 1), returns[:, None], advantages[:, None]]  # fmt: skip
        table = torch.cat(columns, dim=1)
        act_end = obs_dim + columns[1].shape[1]
        ones = torch.ones(n // batch, batch, device=self.device)  # every sample is valid: the core's mask
        keys = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "value_clip_fraction")
        totals, n_minibatches = torch.zeros(len(keys), device=self.device), 0
        for _ in range(cfg.n_epochs):
            shuffled = table[torch.randperm(n, device=self.device)].view(n // batch, batch, -1)  # (n_mb, B, columns)
            adv = shuffled[..., -1]  # (n_mb, B)
            if cfg.normalize_advantage:  # per minibatch (SB3, CleanRL), all minibatches of the epoch at once
                adv = masked_whiten(adv, ones, mean_var=(adv.mean(1, keepdim=True), adv.var(1, keepdim=True)))
            for i in range(shuffled.shape[0]):
                mb = shuffled[i]  # (B, columns)
                actions = mb[:, obs_dim:act_end] if policy.continuous else mb[:, obs_dim].long()
                old_logprobs, old_values, mb_returns = (
                    mb[:, act_end : act_end + 1],
                    mb[:, act_end + 1 : act_end + 2],
                    mb[:, act_end + 2 : act_end + 3],
                )
                logprobs, entropy = policy.evaluate(mb[:, :obs_dim], actions)  # (B,), (B,)
                values = policy.value(mb[:, :obs_dim])  # (B,)
                mask = ones[i][:, None]  # (B, 1)
                policy_loss, pstats = clipped_policy_loss(
                    logprobs[:, None], old_logprobs, adv[i][:, None], mask, eps_low=cfg.clip_range
                )
                value_loss, vstats = clipped_value_loss(values[:, None], old_values, mb_returns, mask, clip=cfg.clip_range_vf)
                entropy = entropy.mean()
                loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm, foreach=True)
                self.optimizer.step()
                with torch.no_grad():
                    step = (policy_loss, value_loss, entropy, pstats["approx_kl"], pstats["clip_fraction"], vstats["value_clip_fraction"])
                    totals += torch.stack(step)
                n_minibatches += 1
        return dict(zip(keys, totals / n_minibatches))
