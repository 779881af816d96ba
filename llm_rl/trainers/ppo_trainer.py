"""PPO for language models with a value head (Ziegler et al. 2019; InstructGPT, arXiv 2203.02155).

Each step: completions -> scores -> token-level rewards (the score on the last valid
token, ``-kl_coef * KL`` on every token) -> values -> GAE -> whitened advantages ->
``num_ppo_epochs`` passes of mini-batch updates of the clipped policy loss plus the
clipped value loss. PPO-penalty is ``kl_controller="adaptive"``, optionally with
``cliprange=None``. ``advantage_estimator="reinforce_pp"`` drops the critic: the advantages
are the whitened return-to-go of the same token rewards (REINFORCE++, arXiv 2501.03262) and
there is no value loss. The math is in ``llm_rl.core``; this file only orders it.
"""

from __future__ import annotations

import torch

from llm_rl.core import (
    AdaptiveKLController,
    FixedKLController,
    aggregation_denominator,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_penalized_rewards,
    kl_penalty,
    masked_mean,
    masked_whiten,
    reinforce_pp_advantages,
)
from llm_rl.models.loading import load_backbone, resolve_model_path
from llm_rl.models.value_head import PolicyWithValue
from llm_rl.rollout import Rollout
from llm_rl.trainers.base import BaseRLTrainer, ready_for_training, row_chunks
from llm_rl.trainers.ppo_config import PPOConfig


class PPOTrainer(BaseRLTrainer):
    """``PPOTrainer(model, reward_funcs, args=PPOConfig(...), train_dataset=..., value_model=None, peft_config=None).train()``

    ``reward_funcs`` are reward functions and/or paths of learned reward models.
    ``value_model`` (a name or path) gives the critic its own backbone; by default the
    value head sits on the policy's last hidden state (one model copy).
    """

    lm_state_prefix = "policy."
    update_entry = "_forward"  # its first call also stands in for the rollout-policy pass (fuses_first_pass)

    def __init__(self, model, reward_funcs, args: PPOConfig | None = None, train_dataset=None, value_model=None, **kwargs):
        args = args or PPOConfig()
        if value_model is not None and args.advantage_estimator == "reinforce_pp":
            raise ValueError(
                "advantage_estimator='reinforce_pp' trains no critic, so value_model would be loaded for nothing: "
                "drop value_model, or use advantage_estimator='gae'"
            )
        self.value_model_name = value_model
        self.needs_reference = args.kl_coef > 0 or args.kl_controller == "adaptive"
        self.kl_controller = (
            AdaptiveKLController(args.kl_coef, args.target_kl, args.horizon)
            if args.kl_controller == "adaptive"
            else FixedKLController(args.kl_coef)
        )
        super().__init__(model, reward_funcs, args, train_dataset, **kwargs)
        # advantage_estimator -> (token rewards, old values, mask) -> (advantages, returns), each (B, T)
        self.estimate_advantages = {"gae": self._gae_advantages, "reinforce_pp": self._reinforce_pp_advantages}[
            args.advantage_estimator
        ]

    # ------------------------------------------------------------------ setup hooks
    def wrap_policy(self, policy):
        critic = None
        if self.value_model_name is not None:
            name = resolve_model_path(self.value_model_name)
            critic = load_backbone(name, self.args.trust_remote_code, self.args.model_dtype)
            critic = ready_for_training(critic, self.args)
        return PolicyWithValue(policy, critic).train()

    @property
    def lm(self):
        return self.unwrapped.policy

    @property
    def uses_critic(self) -> bool:
        """GAE needs the value head; REINFORCE++ (critic-free) neither trains nor reads it."""
        return self.args.advantage_estimator == "gae"

    def _optimizer_and_scheduler(self, trainable):
        if not self.uses_critic:  # frozen before prepare: DDP then expects no gradient for it
            trainable.value_head.requires_grad_(False)
        return super()._optimizer_and_scheduler(trainable)

    @property
    def fuses_first_pass(self) -> bool:
        """One mini-batch of one micro-batch: the first update's forward is the rollout policy's.

        Its detached log-probs and values are then the old ones, and the separate no-grad
        pass over the batch (about a fifth of a step) is skipped; the numbers are the same.
        """
        return self.args.num_mini_batches == 1 and self.args.gradient_accumulation_steps == 1

    def updates_per_step(self) -> int:
        return self.args.num_ppo_epochs * self.args.num_mini_batches

    def extra_state(self) -> dict:
        return {"kl_controller": self.kl_controller.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.kl_controller.load_state_dict(state["kl_controller"])

    def write_model(self, path, state) -> None:
        super().write_model(path, state)
        self.unwrapped.save_value_model(path, state)

    # ------------------------------------------------------------------ the step
    def scores_with_penalties(self, scores: torch.Tensor, rollout: Rollout) -> torch.Tensor:
        args = self.args
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * rollout.truncated.float()
        if args.reward_clip is not None:
            scores = scores.clamp(-args.reward_clip, args.reward_clip)
        return scores

    def training_step(self) -> dict[str, float]:
        args, acc = self.args, self.accelerator

        # 1. rollout
        prompts, texts, columns, seeds = self.next_prompts()
        rollout = self.rollout_engine.generate(texts, seeds, args.num_generations)
        mask = rollout.completion_mask.clone()
        if args.mask_truncated_completions:
            mask[rollout.truncated] = 0

        # 2. score
        raw_scores, per_func = self.score(prompts, rollout.completion_ids, columns, args.num_generations)
        scores = self.scores_with_penalties(raw_scores, rollout)

        # 3. reference log-probs; log-probs and values of the rollout policy
        with torch.no_grad():
            ref_logprobs = self.reference_logprobs(rollout)
        all_rows = torch.arange(len(scores), device=scores.device)
        first_pass = None
        if self.fuses_first_pass:
            first_pass = self._forward(rollout, all_rows)
            old_logprobs, old_values = (_pad_columns(t.detach(), mask.shape[1]) for t in (first_pass[0], first_pass[2]))
        else:
            # per_device_batch_size prompts' rows per forward (as BaseRLTrainer.logprobs_no_grad), zero-padded to the width
            old_logprobs, old_values = torch.zeros(mask.shape, device=mask.device), torch.zeros(mask.shape, device=mask.device)
            for rows in all_rows.split(args.per_device_batch_size * args.num_generations):
                input_ids, attention_mask, width = rollout.model_inputs(rows)
                with torch.no_grad():
                    logprobs, _, values = self.unwrapped(
                        input_ids, attention_mask, width, args.temperature, tokens_per_chunk=args.logprob_chunk_size
                    )
                old_logprobs[rows, :width], old_values[rows, :width] = logprobs, values
        if ref_logprobs is None:
            ref_logprobs = old_logprobs  # kl_coef == 0: no penalty, no reference model

        # 4. token-level KL-penalised rewards; advantages (GAE, whitened; or REINFORCE++'s), returns
        with torch.no_grad():
            kl_coef = self.kl_controller.value
            rewards = kl_penalized_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef, args.kl_estimator)
            # whitening statistics are global, so N processes whiten exactly as one would
            if args.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False, mean_var=self.global_mean_var(rewards, mask))
            advantages, returns = self.estimate_advantages(rewards, old_values, mask)
            sequence_kl = (kl_penalty(old_logprobs, ref_logprobs, args.kl_estimator) * mask).sum(-1)  # (B,)

        # 5. epochs x mini-batches (x micro-batches accumulated into one update)
        stats: dict[str, list] = {}
        order = torch.Generator().manual_seed(args.seed * 7919 + self.step)
        rows_total = len(scores)
        targets = (mask, old_logprobs, old_values, advantages, returns)
        for epoch in range(args.num_ppo_epochs):
            permutation = torch.randperm(rows_total, generator=order).to(scores.device)
            for mini_batch in row_chunks(permutation, args.num_mini_batches):
                denominator = self.global_sum(aggregation_denominator(mask[mini_batch], "token_mean")) / acc.num_processes
                for micro in row_chunks(mini_batch, args.gradient_accumulation_steps):
                    if epoch == 0 and first_pass is not None:
                        self._backward(stats, all_rows, first_pass, targets, denominator)
                        first_pass = None  # free its graph
                    else:
                        self._backward(stats, micro, self._forward(rollout, micro), targets, denominator)
                stats.setdefault("grad_norm", []).append(torch.tensor(self.optimizer_update()["grad_norm"]))
            epoch_kl = self.global_sum(torch.stack(stats["approx_kl"][-args.num_mini_batches * args.gradient_accumulation_steps :]).mean())
            if args.max_approx_kl is not None and epoch_kl.item() / acc.num_processes > args.max_approx_kl:
                break  # the policy moved too far from the rollout policy: stop re-using this batch

        # 6. KL controller (PPO-penalty), metrics
        mean_kl = self.global_sum(sequence_kl.sum()).item() / self.global_sum(torch.tensor(float(rows_total))).item()
        self.kl_controller.update(mean_kl, n_steps=int(self.global_sum(torch.tensor(float(rows_total))).item()))
        metrics = self.rollout_metrics(raw_scores, per_func, rollout, stats)
        metrics.update(
            kl=mean_kl,
            kl_coef=kl_coef,
            returns_mean=(self.global_sum((returns * mask).sum()) / self.global_sum(mask.sum())).item(),
        )
        if self.uses_critic:
            metrics["explained_variance"] = explained_variance(old_values, returns, mask).item()
        return metrics

    def _gae_advantages(self, rewards, old_values, mask):
        advantages, returns = gae(rewards, old_values, mask, self.args.gamma, self.args.lam)
        return masked_whiten(advantages, mask, mean_var=self.global_mean_var(advantages, mask)), returns

    def _reinforce_pp_advantages(self, rewards, old_values, mask):
        return reinforce_pp_advantages(rewards, mask, self.args.gamma, mean_var=self.global_mean_var)

    def _forward(self, rollout: Rollout, rows: torch.Tensor):
        """``(logprobs, entropy, values)`` of ``rows`` with gradients, each ``(len(rows), width)``."""
        input_ids, attention_mask, width = rollout.model_inputs(rows)
        return self.model(input_ids, attention_mask, width, self.args.temperature, entropy_grad=self.args.entropy_coef > 0,
                          tokens_per_chunk=self.args.logprob_chunk_size)

    def _backward(self, stats, rows, forward, targets, denominator):
        """Loss of one micro-batch (indices ``rows``, its ``forward`` outputs), backward, and running stats."""
        args = self.args
        logprobs, entropy, values = forward
        mask, old_logprobs, old_values, advantages, returns = (t[rows, : logprobs.shape[1]] for t in targets)
        policy_loss, policy_stats = clipped_policy_loss(
            logprobs, old_logprobs, advantages, mask, args.cliprange, None, "token_mean"
        )
        entropy_mean = masked_mean(entropy, mask)
        loss = policy_loss - args.entropy_coef * entropy_mean
        values_stats = {**policy_stats, "policy_loss": policy_loss, "entropy": entropy_mean}
        if self.uses_critic:
            value_loss, value_stats = clipped_value_loss(values, old_values, returns, mask, args.cliprange_value)
            loss = loss + args.vf_coef * value_loss
            values_stats.update(value_stats, value_loss=value_loss)
        weight = aggregation_denominator(mask, "token_mean") / denominator
        self.backward(loss * weight)
        values_stats["loss"] = loss
        for key, value in values_stats.items():
            stats.setdefault(key, []).append(value.detach().float())


def _pad_columns(values: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, w)`` zero-padded on the right to ``(B, width)``: trimmed padding columns back in place."""
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))
