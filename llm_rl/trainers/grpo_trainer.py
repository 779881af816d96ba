"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300).

Each step: G completions per prompt -> rewards -> advantages (relative to the group, or
another estimator: RLOO, REINFORCE++; no value model) -> ``num_iterations`` updates of the
policy loss (PPO's clip per token or per sequence (GSPO), or CISPO), with a KL term to a
frozen reference in the loss (or in the reward). Dynamic sampling (DAPO) and the
rollout-mismatch correction are options of the same step. The math is in ``llm_rl.core``;
this file only orders it, and picks each variant from one small dict.
"""

from __future__ import annotations

from functools import partial

import torch

from llm_rl.core import (
    aggregate_loss,
    aggregation_denominator,
    cispo_policy_loss,
    clipped_policy_loss,
    group_advantages,
    kl_penalized_rewards,
    kl_penalty,
    masked_mean,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    rollout_correction,
)
from llm_rl.models.forward import completion_logprobs
from llm_rl.rollout import Rollout
from llm_rl.trainers.base import BaseRLTrainer, row_chunks
from llm_rl.trainers.dynamic_sampling import (
    Groups,
    choose_groups,
    concat_groups,
    gather_groups,
    informative_groups,
)
from llm_rl.trainers.grpo_config import GRPOConfig


def _clip_loss(args: GRPOConfig):
    eps_low, eps_high = args.clip_range
    return partial(clipped_policy_loss, eps_low=eps_low, eps_high=eps_high,
                   importance_sampling_level=args.importance_sampling_level)  # fmt: skip


# policy_loss -> the loss function (logprobs, old, advantages, mask, aggregation=, max_length=) -> (loss, stats)
POLICY_LOSSES = {
    "clip": _clip_loss,
    "cispo": lambda args: partial(cispo_policy_loss, ratio_cap=args.cispo_ratio_cap),
}


class GRPOTrainer(BaseRLTrainer):
    """``GRPOTrainer(model, reward_funcs, args=GRPOConfig(...), train_dataset=..., peft_config=None).train()``"""

    share_prompt_prefix = True  # micro-batches are whole groups, so each prompt runs once per forward

    def __init__(self, model, reward_funcs, args: GRPOConfig | None = None, train_dataset=None, **kwargs):
        args = args or GRPOConfig()
        self.needs_reference = args.beta > 0  # beta = 0: no reference model is loaded at all
        super().__init__(model, reward_funcs, args, train_dataset, **kwargs)
        # advantage_estimator -> (rewards (B,), loss mask, policy log-probs, reference log-probs) -> (B, T)
        self.estimate_advantages = {
            "grpo": self._grpo_advantages,
            "rloo": self._rloo_advantages,
            "reinforce_pp_baseline": self._reinforce_pp_baseline_advantages,
            "reinforce_pp": self._reinforce_pp_advantages,
        }[args.advantage_estimator]

    def updates_per_step(self) -> int:
        return self.args.num_iterations

    @property
    def policy_loss(self):
        """The policy loss ``policy_loss`` names, with its settings: ``(logprobs, old, A, mask, ...) -> (loss, stats)``."""
        return POLICY_LOSSES[self.args.policy_loss](self.args)

    @property
    def kl_in_reward(self) -> bool:
        return self.args.kl_in == "reward" and self.needs_reference

    def training_step(self) -> dict[str, float]:
        args, acc = self.args, self.accelerator

        # 1-2. rollout and score: G completions per prompt (with dynamic sampling, only informative groups)
        groups, sampling_metrics = self.sample_groups()
        rollout, rewards = groups.rollout, groups.rewards
        loss_mask = rollout.completion_mask * groups.trainable[:, None]  # (B, C)
        if args.mask_truncated_completions:
            loss_mask[rollout.truncated] = 0

        # 3. reference log-probs, and the policy's where the reward or the correction needs them
        #    (the forward's, not the sampler's: after top-k/top-p truncation those are not the policy's)
        ref_logprobs = self.reference_logprobs(rollout)
        policy_logprobs = None
        if self.kl_in_reward or args.rollout_correction is not None:
            with self.accelerator.autocast():  # at the training forward's precision
                policy_logprobs = self.logprobs_no_grad(self.lm, rollout)

        # 4. advantages (B, T), corrected for the sampler's log-probs if asked
        advantages = self.estimate_advantages(rewards, loss_mask, policy_logprobs, ref_logprobs)
        stats: dict[str, list[torch.Tensor]] = {}
        if args.rollout_correction is not None:
            weights, correction_stats = rollout_correction(
                policy_logprobs, rollout.sampling_logprobs, loss_mask, args.rollout_correction, args.rollout_correction_cap
            )
            advantages = advantages * weights
            loss_mask = loss_mask * (weights > 0)  # a rejected sequence leaves the denominators too
            stats.update({f"rollout_correction/{k}": [v] for k, v in correction_stats.items()})

        # 5. updates: num_iterations x (micro-batches accumulated into one optimizer step)
        denominator_local = aggregation_denominator(loss_mask, args.loss_aggregation, args.max_completion_length)
        # scale so that DDP's gradient average over processes gives the global aggregate (see core.losses)
        denominator = self.global_sum(denominator_local) / acc.num_processes
        old_logprobs = torch.zeros(loss_mask.shape, device=loss_mask.device)  # filled by the first iteration
        for iteration in range(args.num_iterations):
            for rows in row_chunks(torch.arange(len(rewards)), args.gradient_accumulation_steps):
                stats = self._accumulate(stats, rollout, rows, loss_mask, advantages, old_logprobs, ref_logprobs,
                                         denominator, iteration)  # fmt: skip
            stats.setdefault("grad_norm", []).append(torch.tensor(self.optimizer_update()["grad_norm"]))

        # 6. metrics, global over processes
        return {**self._metrics(rewards, groups.per_func, rollout, stats), **sampling_metrics}

    # ------------------------------------------------------------------ 1-2. rollout and score
    def _draw_round(self) -> Groups:
        """This process's next prompts from the stream, G sampled completions each, scored."""
        G = self.args.num_generations
        prompts, texts, columns, seeds = self.next_prompts()
        rollout = self.rollout_engine.generate(texts, seeds, G)
        rewards, per_func = self.score(prompts, rollout.completion_ids, columns, G)
        return Groups(rollout, rewards, per_func)

    def sample_groups(self) -> tuple[Groups, dict[str, float]]:
        """The step's scored groups; with dynamic sampling (DAPO), rounds of drawing until enough are informative.

        The keep-or-drop choice is made on every process's groups gathered in stream order,
        so N processes draw and train on exactly what one would (see ``dynamic_sampling``).
        """
        args, acc, G = self.args, self.accelerator, self.args.num_generations
        if not args.dynamic_sampling:
            return self._draw_round(), {}
        target, pad = self.stream.global_prompts, self.tokenizer.pad_token_id  # global groups per step
        drawn: list[Groups] = []
        while len(drawn) < args.max_sampling_rounds:
            drawn.append(gather_groups(acc, self._draw_round(), pad))
            informative = torch.cat([informative_groups(g.rewards, G) for g in drawn])  # (rounds * target,)
            if int(informative.sum()) >= target:
                break
        chosen, filler = choose_groups(informative, target)
        share = target // acc.num_processes  # this process trains on its slice of the chosen groups
        mine = slice(acc.process_index * share, (acc.process_index + 1) * share)
        groups = concat_groups(drawn, pad).select(chosen[mine], G)
        groups.trainable = ~filler[mine].repeat_interleave(G).to(groups.rewards.device)
        return groups, {"sampling_rounds": float(len(drawn)), "groups_dropped": float((~informative).sum())}

    # ------------------------------------------------------------------ 4. advantages, one per estimator
    def kl_shaped_rewards(self, rewards, mask, policy_logprobs, ref_logprobs) -> torch.Tensor:
        """``rewards`` less ``beta * sum_t k1_t`` with kl_in="reward" (the policy's log-probs from a forward)."""
        if not self.kl_in_reward:
            return rewards
        sequence_kl = torch.where(mask.bool(), kl_penalty(policy_logprobs, ref_logprobs, "k1"), 0.0).sum(-1)  # (B,)
        return rewards - self.args.beta * sequence_kl

    def _grpo_advantages(self, rewards, mask, policy_logprobs, ref_logprobs) -> torch.Tensor:
        """Group-relative advantages; with scale_rewards="batch" the std is over the global batch."""
        args, G = self.args, self.args.num_generations
        rewards = self.kl_shaped_rewards(rewards, mask, policy_logprobs, ref_logprobs)
        if args.scale_rewards != "batch":
            return _per_token(group_advantages(rewards, G, scale=args.scale_rewards), mask)
        everyone = self.accelerator.gather(rewards)  # (processes * B,), ordered by process
        start = self.accelerator.process_index * rewards.shape[0]
        return _per_token(group_advantages(everyone, G, scale="batch")[start : start + rewards.shape[0]], mask)

    def _rloo_advantages(self, rewards, mask, policy_logprobs, ref_logprobs) -> torch.Tensor:
        rewards = self.kl_shaped_rewards(rewards, mask, policy_logprobs, ref_logprobs)
        return _per_token(rloo_advantages(rewards, self.args.num_generations), mask)

    def _reinforce_pp_baseline_advantages(self, rewards, mask, policy_logprobs, ref_logprobs) -> torch.Tensor:
        rewards = self.kl_shaped_rewards(rewards, mask, policy_logprobs, ref_logprobs)
        return reinforce_pp_baseline_advantages(rewards, self.args.num_generations, mask, mean_var=self.global_mean_var)

    def _reinforce_pp_advantages(self, rewards, mask, policy_logprobs, ref_logprobs) -> torch.Tensor:
        """REINFORCE++: with kl_in="reward" the KL is a per-token reward (not summed into the score)."""
        zeros = torch.zeros(mask.shape, device=mask.device)  # no KL in the reward: a log-ratio of 0
        logprobs, ref = (policy_logprobs, ref_logprobs) if self.kl_in_reward else (zeros, zeros)
        token_rewards = kl_penalized_rewards(rewards, logprobs, ref, mask, self.args.beta, "k1")  # (B, T)
        return reinforce_pp_advantages(token_rewards, mask, mean_var=self.global_mean_var)[0]

    # ------------------------------------------------------------------ 5. one micro-batch of an update
    def _accumulate(self, stats, rollout, part, loss_mask, advantages, old_logprobs, ref_logprobs, denominator, iteration=0):
        """Forward + backward of one micro-batch (rows ``part``); returns the running stats."""
        args = self.args
        input_ids, attention_mask, width = rollout.model_inputs(part)
        mask = loss_mask[part, :width]
        logprobs, entropy, _ = completion_logprobs(
            self.model, input_ids, attention_mask, width, args.temperature, with_entropy=True,
            entropy_grad=args.entropy_coef > 0, group_size=args.num_generations, tokens_per_chunk=args.logprob_chunk_size,
        )
        if iteration == 0:  # the policy has not moved yet: this forward is the old policy's (ratio exactly 1)
            old_logprobs[part, :width] = logprobs.detach().float()
        loss, policy_stats = self.policy_loss(
            logprobs, old_logprobs[part, :width], advantages[part, :width], mask,
            aggregation=args.loss_aggregation, max_length=args.max_completion_length,
        )
        kl = torch.zeros((), device=logprobs.device)
        if ref_logprobs is not None:
            per_token_kl = kl_penalty(logprobs, ref_logprobs[part, :width], args.kl_estimator)
            kl = masked_mean(per_token_kl.detach(), mask)
            if args.kl_in == "loss":
                loss = loss + args.beta * aggregate_loss(per_token_kl, mask, args.loss_aggregation, args.max_completion_length)
        # entropy bonus (0 by default; the entropy carries a gradient only when its coefficient is > 0)
        loss = loss - args.entropy_coef * aggregate_loss(entropy, mask, args.loss_aggregation, args.max_completion_length)
        weight = aggregation_denominator(mask, args.loss_aggregation, args.max_completion_length) / denominator
        self.backward(loss * weight)
        for key, value in {**policy_stats, "loss": loss.detach(), "kl": kl, "entropy": masked_mean(entropy, mask)}.items():
            stats.setdefault(key, []).append(value.detach().float())
        return stats

    # ------------------------------------------------------------------ 6. metrics
    def _metrics(self, rewards, per_func, rollout: Rollout, stats) -> dict[str, float]:
        all_equal = ~informative_groups(self.accelerator.gather(rewards), self.args.num_generations)  # no gradient
        frac_zero_std = all_equal.float().mean().item()
        return {**self.rollout_metrics(rewards, per_func, rollout, stats), "frac_zero_std_groups": frac_zero_std}


def _per_token(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One advantage per sequence `(B,)` on each of its tokens: `(B, T)`."""
    return advantages[:, None].expand(mask.shape)
