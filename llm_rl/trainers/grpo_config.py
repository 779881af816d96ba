"""``GRPOConfig``: Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llm_rl.trainers.config import RLConfig, _check


@dataclass
class GRPOConfig(RLConfig):
    """GRPO settings. Defaults train the embedded tiny model on arithmetic in minutes on a CPU."""

    output_dir: str = field(default="outputs/grpo", metadata={"help": "Folder for metrics.jsonl, checkpoints and final/."})
    learning_rate: float = field(
        default=1e-4,
        metadata={"help": "Peak AdamW learning rate (1e-4 with cosine decay suits the ~4M-parameter tiny model; 2e-4 was slower, and 1e-6 suits 0.5B+ full fine-tuning)."},
    )
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = field(
        default="cosine", metadata={"help": "Learning-rate schedule after warm-up (cosine: constant 1e-4 plateaued near 70 percent held-out accuracy on the tiny task)."}
    )
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up optimizer steps."})
    max_steps: int = field(default=500, metadata={"help": "Rollout steps to train for (about 5 minutes for the tiny task on 2 CPU cores)."})
    per_device_batch_size: int = field(
        default=32, metadata={"help": "Prompts per process per micro-batch (each gets num_generations completions)."}
    )
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt: the group size G (>= 2)."})
    beta: float = field(
        default=0.04,
        metadata={"help": "KL coefficient to the reference (DeepSeekMath, arXiv 2402.03300); 0 loads no reference model."},
    )
    kl_estimator: Literal["k1", "k2", "k3"] = field(
        default="k3", metadata={"help": "Per-token KL estimator (Schulman, 'Approximating KL divergence'); k3 as in GRPO."}
    )
    kl_in: Literal["loss", "reward"] = field(
        default="loss",
        metadata={"help": "Add the KL term to the loss (GRPO) or subtract beta * sum_t k1_t from each reward before grouping."},
    )
    advantage_estimator: Literal["grpo", "rloo", "reinforce_pp_baseline", "reinforce_pp"] = field(
        default="grpo",
        metadata={"help": "grpo: (r - group mean) / std as scale_rewards says (arXiv 2402.03300); rloo: r - mean of the "
                          "other G - 1 (arXiv 2402.14740); reinforce_pp_baseline: r - group mean, whitened over the global "
                          "batch; reinforce_pp: whitened return-to-go of token rewards, no group (REINFORCE++, arXiv "
                          "2501.03262; with kl_in=reward the KL is a per-token reward as in the paper; works with "
                          "num_generations=1). scale_rewards applies to grpo only."},
    )
    importance_sampling_level: Literal["token", "sequence"] = field(
        default="token",
        metadata={"help": "token: one ratio per token (PPO, GRPO); sequence: GSPO's exp(mean_t log-ratio) per sequence, "
                          "clipped per sequence (arXiv 2507.18071; its clip range defaults to the paper's 3e-4 / 4e-4)."},
    )
    policy_loss: Literal["clip", "cispo"] = field(
        default="clip",
        metadata={"help": "clip: PPO's clipped surrogate; cispo: REINFORCE with the stop-gradient ratio capped at "
                          "cispo_ratio_cap, so no token loses its gradient (MiniMax-M1, arXiv 2506.13585)."},
    )
    epsilon_low: float | None = field(
        default=None,
        metadata={"help": "Lower clip range: ratio >= 1 - epsilon_low (default 0.2; 3e-4 with importance_sampling_level=sequence)."},
    )
    epsilon_high: float | None = field(
        default=None,
        metadata={"help": "Upper clip range (default: epsilon_low, or 4e-4 with importance_sampling_level=sequence; 0.28 is "
                          "DAPO's clip-higher, arXiv 2503.14476)."},
    )
    cispo_ratio_cap: float = field(
        default=5.0, metadata={"help": "policy_loss=cispo: the cap on the importance weight (TRL's epsilon_high for cispo)."}
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={"help": "Drop groups whose rewards are all equal (they give no gradient) and draw more prompts until "
                          "the step has per_device_batch_size informative groups per process (DAPO, arXiv 2503.14476)."},
    )
    max_sampling_rounds: int = field(
        default=3,
        metadata={"help": "dynamic_sampling: most rounds of drawing per step; then the step trains on the informative "
                          "groups it has (the rest of the batch is filled with masked-out groups)."},
    )
    rollout_correction: Literal["token_truncate", "sequence_mask"] | None = field(
        default=None,
        metadata={"help": "Correct for the sampler's log-probs differing from the trainer's: token_truncate weighs each "
                          "token by min(ratio, cap) (TIS); sequence_mask drops sequences whose ratio leaves [1/cap, cap] "
                          "(MIS). Costs one no-grad forward per step."},
    )
    rollout_correction_cap: float = field(default=2.0, metadata={"help": "rollout_correction: the cap C (>= 1)."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Weight of the entropy bonus in the loss (0: none)."})
    loss_aggregation: Literal["token_mean", "seq_mean", "seq_sum_norm"] = field(
        default="token_mean",
        metadata={"help": "token_mean (DAPO), seq_mean (original GRPO) or seq_sum_norm (Dr. GRPO, arXiv 2503.20783: "
                          "the sum over tokens / (rows x max_completion_length))."},
    )
    scale_rewards: Literal["group", "batch", "none"] = field(
        default="group", metadata={"help": "Divide advantages by the group's std, the batch's std, or not at all (Dr. GRPO)."}
    )
    num_iterations: int = field(
        default=1, metadata={"help": "Policy updates per rollout batch (GRPO's mu); > 1 needs an extra old-policy pass."}
    )

    @property
    def clip_range(self) -> tuple[float, float]:
        """``(epsilon_low, epsilon_high)`` in effect: the ones set, else the level's defaults (GSPO's at "sequence")."""
        default_low, default_high = _CLIP_DEFAULTS[self.importance_sampling_level]
        low = default_low if self.epsilon_low is None else self.epsilon_low
        if self.epsilon_high is not None:
            return low, self.epsilon_high
        return low, low if self.epsilon_low is not None or default_high is None else default_high

    def __post_init__(self) -> None:
        super().__post_init__()
        smallest_group = 1 if self.advantage_estimator == "reinforce_pp" else 2
        _check(
            isinstance(self.num_generations, int) and self.num_generations >= smallest_group,
            f"num_generations must be >= 2 for GRPO with advantage_estimator={self.advantage_estimator!r} (group-relative "
            f"advantages need a group), got {self.num_generations}; use PPOTrainer or advantage_estimator='reinforce_pp' "
            "for one completion per prompt",
        )
        _check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        _check(self.epsilon_low is None or 0 < self.epsilon_low < 1, f"epsilon_low must be in (0, 1), got {self.epsilon_low}")
        _check(self.epsilon_high is None or self.epsilon_high > 0, f"epsilon_high must be > 0, got {self.epsilon_high}")
        _check(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        _check(
            self.policy_loss == "clip" or (self.epsilon_low is None and self.epsilon_high is None),
            "epsilon_low and epsilon_high set the clip of policy_loss='clip'; CISPO caps its weight at cispo_ratio_cap "
            "instead: unset them, or set policy_loss='clip'",
        )
        _check(
            self.policy_loss == "clip" or self.importance_sampling_level == "token",
            "importance_sampling_level='sequence' (GSPO) needs policy_loss='clip'; CISPO weighs each token",
        )
        _check(self.cispo_ratio_cap > 0, f"cispo_ratio_cap must be > 0, got {self.cispo_ratio_cap}")
        _check(self.max_sampling_rounds >= 1, f"max_sampling_rounds must be >= 1, got {self.max_sampling_rounds}")
        _check(
            not self.dynamic_sampling or self.num_generations >= 2,
            "dynamic_sampling drops groups whose rewards are all equal, which a group of one always is: "
            "set num_generations >= 2 or dynamic_sampling=False",
        )
        _check(self.rollout_correction_cap >= 1, f"rollout_correction_cap must be >= 1, got {self.rollout_correction_cap}")
        _check(self.entropy_coef >= 0, f"entropy_coef must be >= 0, got {self.entropy_coef}")


# importance_sampling_level -> default (epsilon_low, epsilon_high); None: epsilon_high = epsilon_low.
# GSPO's clip range is about 1e3 times smaller, as its ratio is a per-token geometric mean (arXiv 2507.18071, 5.1).
_CLIP_DEFAULTS: dict[str, tuple[float, float | None]] = {"token": (0.2, None), "sequence": (3e-4, 4e-4)}
