"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300).

Each step: G completions per prompt -> rewards -> advantages relative to the group
(no value model) -> ``num_iterations`` clipped updates, with a KL term to a frozen
reference in the loss (or in the reward). The math is in ``llm_rl.core``; this file
only orders it.
"""

from __future__ import annotations

import torch

from llm_rl.core import aggregate_loss, aggregation_denominator, clipped_policy_loss, group_advantages, kl_penalty, masked_mean
from llm_rl.models.forward import completion_logprobs
from llm_rl.rollout import Rollout, generate_rollout
from llm_rl.trainers.base import BaseRLTrainer, row_chunks
from llm_rl.trainers.grpo_config import GRPOConfig


class GRPOTrainer(BaseRLTrainer):
    """``GRPOTrainer(model, reward_funcs, args=GRPOConfig(...), train_dataset=..., peft_config=None).train()``"""

    share_prompt_prefix = True  # micro-batches are whole groups, so each prompt runs once per forward

    def __init__(self, model, reward_funcs, args: GRPOConfig | None = None, train_dataset=None, **kwargs):
        args = args or GRPOConfig()
        self.needs_reference = args.beta > 0  # beta = 0: no reference model is loaded at all
        super().__init__(model, reward_funcs, args, train_dataset, **kwargs)

    def updates_per_step(self) -> int:
        return self.args.num_iterations

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Group-relative advantages; with scale_rewards="batch" the std is over the global batch."""
        args = self.args
        if args.scale_rewards != "batch":
            return group_advantages(rewards, args.num_generations, scale=args.scale_rewards)
        everyone = self.accelerator.gather(rewards)  # (processes * B,), ordered by process
        start = self.accelerator.process_index * rewards.shape[0]
        return group_advantages(everyone, args.num_generations, scale="batch")[start : start + rewards.shape[0]]

    def training_step(self) -> dict[str, float]:
        args, acc = self.args, self.accelerator
        G = args.num_generations

        # 1. rollout: G completions per prompt, sampled with per-prompt seeds
        prompts, texts, columns, seeds = self.next_prompts()
        with self.generating():
            rollout = generate_rollout(
                self.lm, self.tokenizer, texts, seeds, G, args.max_completion_length,
                args.temperature, args.top_p, args.top_k, args.min_completion_length,
            )
        loss_mask = rollout.completion_mask.clone()
        if args.mask_truncated_completions:
            loss_mask[rollout.truncated] = 0

        # 2. score
        rewards, per_func = self.score(prompts, rollout.completion_ids, columns, G)

        # 3. reference (and, for several iterations, old-policy) log-probs
        ref_logprobs = self.reference_logprobs(rollout)
        if ref_logprobs is not None and args.kl_in == "reward":
            sequence_kl = (kl_penalty(rollout.sampling_logprobs, ref_logprobs, "k1") * rollout.completion_mask).sum(-1)
            rewards = rewards - args.beta * sequence_kl
        # With one iteration the old policy is the current one: the training forward's detached
        # log-probs serve as old log-probs, and no extra pass is needed.
        old_logprobs = self.logprobs_no_grad(self.lm, rollout) if args.num_iterations > 1 else None

        # 4. group-relative advantages
        advantages = self.advantages(rewards)  # (B,)

        # 5. updates: num_iterations x (micro-batches accumulated into one optimizer step)
        denominator_local = aggregation_denominator(loss_mask, args.loss_aggregation, args.max_completion_length)
        # scale so that DDP's gradient average over processes gives the global aggregate (see core.losses)
        denominator = self.global_sum(denominator_local) / acc.num_processes
        stats: dict[str, torch.Tensor] = {}
        for _ in range(args.num_iterations):
            for rows in row_chunks(torch.arange(len(rewards)), args.gradient_accumulation_steps):
                stats = self._accumulate(stats, rollout, rows, loss_mask, advantages, old_logprobs, ref_logprobs, denominator)
            stats.setdefault("grad_norm", []).append(torch.tensor(self.optimizer_update()["grad_norm"]))

        # 6. metrics, global over processes
        return self._metrics(rewards, per_func, rollout, stats)

    def _accumulate(self, stats, rollout, part, loss_mask, advantages, old_logprobs, ref_logprobs, denominator):
        """Forward + backward of one micro-batch (rows ``part``); returns the running stats."""
        args = self.args
        input_ids, attention_mask, width = rollout.model_inputs(part)
        mask = loss_mask[part, :width]
        logprobs, entropy, _ = completion_logprobs(
            self.model, input_ids, attention_mask, width, args.temperature, with_entropy=True, group_size=args.num_generations
        )
        old = old_logprobs[part, :width] if old_logprobs is not None else logprobs.detach()
        loss, policy_stats = clipped_policy_loss(
            logprobs, old, advantages[part], mask, args.epsilon_low, args.epsilon_high, args.loss_aggregation,
            args.max_completion_length,
        )
        kl = torch.zeros((), device=logprobs.device)
        if ref_logprobs is not None:
            per_token_kl = kl_penalty(logprobs, ref_logprobs[part, :width], args.kl_estimator)
            kl = masked_mean(per_token_kl.detach(), mask)
            if args.kl_in == "loss":
                loss = loss + args.beta * aggregate_loss(per_token_kl, mask, args.loss_aggregation, args.max_completion_length)
        weight = aggregation_denominator(mask, args.loss_aggregation, args.max_completion_length) / denominator
        self.backward(loss * weight)
        for key, value in {**policy_stats, "loss": loss.detach(), "kl": kl, "entropy": masked_mean(entropy, mask)}.items():
            stats.setdefault(key, []).append(value.detach().float())
        return stats

    def _metrics(self, rewards, per_func, rollout: Rollout, stats) -> dict[str, float]:
        grouped = self.accelerator.gather(rewards).view(-1, self.args.num_generations)
        frac_zero_std = (grouped.std(-1) == 0).float().mean().item()  # groups that give no gradient
        return {**self.rollout_metrics(rewards, per_func, rollout, stats), "frac_zero_std_groups": frac_zero_std}
