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
from llm_rl.trainers.base import BaseRLTrainer
from llm_rl.trainers.grpo_config import GRPOConfig


def micro_batches(rollout: Rollout, num_chunks: int):
    """Split a rollout into ``num_chunks`` row slices, trimming each to its own padding."""
    rows = rollout.prompt_ids.shape[0]
    size = rows // num_chunks
    for start in range(0, rows, size):
        part = slice(start, start + size)
        prompt_mask = rollout.prompt_mask[part]
        completion_mask = rollout.completion_mask[part]
        first = int(prompt_mask.any(0).int().argmax())  # left padding shared by every row
        width = max(int(completion_mask.sum(-1).max()), 1)
        yield part, slice(first, None), width


class GRPOTrainer(BaseRLTrainer):
    """``GRPOTrainer(model, reward_funcs, args=GRPOConfig(...), train_dataset=..., peft_config=None).train()``"""

    def __init__(self, model, reward_funcs, args: GRPOConfig | None = None, train_dataset=None, **kwargs):
        args = args or GRPOConfig()
        self.needs_reference = args.beta > 0  # beta = 0: no reference model is loaded at all
        super().__init__(model, reward_funcs, args, train_dataset, **kwargs)

    def updates_per_step(self) -> int:
        return self.args.num_iterations

    @torch.no_grad()
    def _logprobs_no_grad(self, model, rollout: Rollout) -> torch.Tensor:
        """One no-grad forward over the whole rollout, e.g. for reference or old-policy log-probs."""
        width = rollout.completion_ids.shape[1]
        return completion_logprobs(model, rollout.input_ids, rollout.attention_mask, width, self.args.temperature)[0]

    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor | None:
        if not self.needs_reference:
            return None
        if self.is_peft:
            with self.unwrapped.disable_adapter():  # the base weights are the reference
                return self._logprobs_no_grad(self.unwrapped, rollout)
        return self._logprobs_no_grad(self.reference, rollout)

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
        rollout = generate_rollout(
            self.unwrapped, self.tokenizer, texts, seeds, G, args.max_completion_length,
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
        old_logprobs = self._logprobs_no_grad(self.unwrapped, rollout) if args.num_iterations > 1 else None

        # 4. group-relative advantages
        advantages = self.advantages(rewards)  # (B,)

        # 5. updates: num_iterations x (micro-batches accumulated into one optimizer step)
        denominator_local = aggregation_denominator(loss_mask, args.loss_aggregation)
        # scale so that DDP's gradient average over processes gives the global aggregate (see core.losses)
        denominator = self.global_sum(denominator_local) / acc.num_processes
        stats: dict[str, torch.Tensor] = {}
        for _ in range(args.num_iterations):
            for part, prompt_cols, width in micro_batches(rollout, args.gradient_accumulation_steps):
                stats = self._accumulate(
                    stats, rollout, part, prompt_cols, width, loss_mask, advantages, old_logprobs, ref_logprobs, denominator
                )
            stats.setdefault("grad_norm", []).append(torch.tensor(self.optimizer_update()["grad_norm"]))

        # 6. metrics, global over processes
        return self._metrics(rewards, per_func, rollout, stats)

    def _accumulate(self, stats, rollout, part, prompt_cols, width, loss_mask, advantages, old_logprobs, ref_logprobs, denominator):
        """Forward + backward of one micro-batch; returns the running stats."""
        args = self.args
        mask = loss_mask[part, :width]
        input_ids = torch.cat([rollout.prompt_ids[part, prompt_cols], rollout.completion_ids[part, :width]], dim=1)
        attention_mask = torch.cat([rollout.prompt_mask[part, prompt_cols], rollout.completion_mask[part, :width]], dim=1)
        logprobs, entropy, _ = completion_logprobs(
            self.model, input_ids, attention_mask, width, args.temperature, with_entropy=True
        )
        old = old_logprobs[part, :width] if old_logprobs is not None else logprobs.detach()
        loss, policy_stats = clipped_policy_loss(
            logprobs, old, advantages[part], mask, args.epsilon_low, args.epsilon_high, args.loss_aggregation
        )
        kl = torch.zeros((), device=logprobs.device)
        if ref_logprobs is not None:
            per_token_kl = kl_penalty(logprobs, ref_logprobs[part, :width], args.kl_estimator)
            kl = masked_mean(per_token_kl.detach(), mask)
            if args.kl_in == "loss":
                loss = loss + args.beta * aggregate_loss(per_token_kl, mask, args.loss_aggregation)
        weight = aggregation_denominator(mask, args.loss_aggregation) / denominator
        self.accelerator.backward(loss * weight)
        for key, value in {**policy_stats, "loss": loss.detach(), "kl": kl, "entropy": masked_mean(entropy, mask)}.items():
            stats.setdefault(key, []).append(value.detach().float())
        return stats

    def _metrics(self, rewards, per_func, rollout: Rollout, stats) -> dict[str, float]:
        acc, G = self.accelerator, self.args.num_generations
        all_rewards = acc.gather(rewards)
        lengths = rollout.completion_lengths().float()
        grouped = all_rewards.view(-1, G)
        metrics = {
            "reward_mean": all_rewards.mean().item(),
            "reward_std": all_rewards.std().item() if all_rewards.numel() > 1 else 0.0,
            "frac_zero_std_groups": (grouped.std(-1) == 0).float().mean().item(),
            "completion_length": (self.global_sum(lengths.sum()) / self.global_sum(torch.tensor(lengths.numel()))).item(),
            "truncated_fraction": self.global_sum(rollout.truncated.float().sum()).item() / all_rewards.numel(),
            "generated_tokens": self.global_sum(lengths.sum()).item(),
        }
        for name, values in per_func.items():
            metrics[f"reward/{name}"] = torch.nanmean(acc.gather(values)).item()
        for key, values in stats.items():
            metrics[key] = (self.global_sum(torch.stack(values).mean().to(acc.device)) / acc.num_processes).item()
        return metrics
