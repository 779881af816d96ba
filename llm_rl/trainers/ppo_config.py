"""``PPOConfig``: PPO with a value head and token-level KL-penalised rewards.

Sources: Schulman et al. 2017 (PPO, arXiv 1707.06347); Ziegler et al. 2019
(fine-tuning LMs from human preferences, arXiv 1909.08593: the per-token KL penalty and
the adaptive KL controller); Ouyang et al. 2022 (InstructGPT, arXiv 2203.02155).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llm_rl.trainers.config import RLConfig, _check


@dataclass
class PPOConfig(RLConfig):
    """PPO settings. Defaults train the embedded tiny model on arithmetic in minutes on a CPU."""

    output_dir: str = field(default="outputs/ppo", metadata={"help": "Folder for metrics.jsonl, checkpoints and final/."})
    learning_rate: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate, policy and value head (3e-4 made the tiny model's accuracy dip first)."}
    )
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = field(
        default="cosine", metadata={"help": "Learning-rate schedule after warm-up."}
    )
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up optimizer steps."})
    max_steps: int = field(default=400, metadata={"help": "Rollout steps to train for."})
    per_device_batch_size: int = field(default=32, metadata={"help": "Prompts per process per micro-batch."})
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt (1 is classic PPO)."})
    num_ppo_epochs: int = field(
        default=1, metadata={"help": "Passes over each rollout batch (1 with one mini-batch: no separate old-policy pass)."}
    )
    num_mini_batches: int = field(default=1, metadata={"help": "Optimizer updates per pass (the batch is split in this many)."})
    advantage_estimator: Literal["gae", "reinforce_pp"] = field(
        default="gae",
        metadata={"help": "gae: a value head and GAE (the PPO of InstructGPT); reinforce_pp: no critic, the whitened "
                          "return-to-go of the KL-penalised token rewards (REINFORCE++, arXiv 2501.03262): no value loss."},
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of GAE (and of reinforce_pp's return-to-go)."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda (Schulman et al. 2016, arXiv 1506.02438)."})
    cliprange: float | None = field(
        default=0.2, metadata={"help": "Policy ratio clip (PPO-clip); None turns clipping off (PPO-penalty with kl_controller=adaptive)."}
    )
    cliprange_value: float | None = field(default=0.2, metadata={"help": "Clip of the value prediction around the rollout's values."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Weight of the entropy bonus."})
    kl_coef: float = field(default=0.05, metadata={"help": "Initial coefficient of the per-token KL penalty in the reward."})
    kl_estimator: Literal["k1", "k2", "k3"] = field(default="k1", metadata={"help": "Per-token KL estimator in the reward (k1 as in InstructGPT)."})
    kl_controller: Literal["fixed", "adaptive"] = field(
        default="fixed", metadata={"help": "fixed kl_coef, or adaptive (Ziegler et al. 2019) towards target_kl: PPO-penalty."}
    )
    target_kl: float = field(default=6.0, metadata={"help": "Adaptive controller: target KL per sequence (sum over tokens)."})
    horizon: float = field(default=10000.0, metadata={"help": "Adaptive controller: horizon, in samples."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the token-level rewards before GAE."})
    reward_clip: float | None = field(default=None, metadata={"help": "Clip scores to [-reward_clip, reward_clip] before the KL penalty."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtract this from the score of completions that end without EOS."}
    )
    max_approx_kl: float | None = field(
        default=None, metadata={"help": "Stop the epoch loop early once approx KL to the rollout policy exceeds this."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(isinstance(self.num_generations, int) and self.num_generations >= 1, f"num_generations must be >= 1, got {self.num_generations}")
        _check(self.num_ppo_epochs >= 1, f"num_ppo_epochs must be >= 1, got {self.num_ppo_epochs}")
        _check(self.num_mini_batches >= 1, f"num_mini_batches must be >= 1, got {self.num_mini_batches}")
        _check(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}")
        _check(0 <= self.lam <= 1, f"lam must be in [0, 1], got {self.lam}")
        _check(self.cliprange is None or 0 < self.cliprange < 1, f"cliprange must be in (0, 1) or None, got {self.cliprange}")
        _check(self.cliprange_value is None or self.cliprange_value > 0, "cliprange_value must be > 0 or None")
        _check(self.vf_coef >= 0 and self.entropy_coef >= 0, "vf_coef and entropy_coef must be >= 0")
        _check(self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}")
        _check(self.target_kl > 0 and self.horizon > 0, "target_kl and horizon must be > 0")
        rows = self.per_device_batch_size * self.gradient_accumulation_steps * self.num_generations
        _check(
            rows % (self.num_mini_batches * self.gradient_accumulation_steps) == 0,
            f"{rows} completions per process cannot be split into {self.num_mini_batches} mini-batches of "
            f"{self.gradient_accumulation_steps} micro-batches; change per_device_batch_size or num_mini_batches",
        )
