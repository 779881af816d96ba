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
    epsilon_low: float = field(default=0.2, metadata={"help": "Lower clip range: ratio >= 1 - epsilon_low."})
    epsilon_high: float | None = field(
        default=None, metadata={"help": "Upper clip range (default: epsilon_low; 0.28 is DAPO's clip-higher, arXiv 2503.14476)."}
    )
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

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            isinstance(self.num_generations, int) and self.num_generations >= 2,
            f"num_generations must be >= 2 for GRPO (group-relative advantages need a group), got {self.num_generations}; "
            "use PPOTrainer for one completion per prompt",
        )
        _check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        _check(0 < self.epsilon_low < 1, f"epsilon_low must be in (0, 1), got {self.epsilon_low}")
        _check(self.epsilon_high is None or self.epsilon_high > 0, f"epsilon_high must be > 0, got {self.epsilon_high}")
        _check(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
