"""Settings shared by the PPO and GRPO trainers, one documented field each.

``HfArgumentParser`` turns these dataclasses into a command line, so every field's
``help`` is also its ``--help`` text. Validation happens once, in ``__post_init__``,
with messages that say what to change; a config is never mutated afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"Invalid config: {message}")


@dataclass
class RLConfig:
    """Fields common to every llm_rl trainer: data, generation, optimisation, outputs."""

    # --- outputs ---
    output_dir: str = field(default="outputs/run", metadata={"help": "Folder for metrics.jsonl, checkpoints and final/."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output_dir that already holds another run."}
    )
    logging_steps: int = field(default=1, metadata={"help": "Write a metrics line every this many steps."})
    save_steps: int = field(default=0, metadata={"help": "Save a checkpoint every this many steps (0: only the final model)."})
    eval_steps: int = field(default=0, metadata={"help": "Run the evaluation callback every this many steps (0: never)."})
    report_to: Literal["none", "tensorboard"] = field(
        default="none", metadata={"help": "Also log metrics to this tracker through accelerate."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint folder to continue from."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of data order, sampling and initialisation."})

    # --- model ---
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub (off: only built-in architectures)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward to save memory."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on for CUDA with bf16 support, off on CPU)."})
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights; the reference is the adapter-disabled base."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "Modules to adapt: 'all-linear' or comma-separated names."})

    # --- data and generation ---
    per_device_batch_size: int = field(default=8, metadata={"help": "Prompts per process per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer update."})
    max_prompt_length: int = field(default=256, metadata={"help": "Longest prompt in tokens; see long_prompts."})
    long_prompts: Literal["error", "filter"] = field(
        default="error", metadata={"help": "Prompts over max_prompt_length: raise, or drop them and report the count."}
    )
    max_completion_length: int = field(default=8, metadata={"help": "Most tokens sampled per completion."})
    min_completion_length: int = field(default=0, metadata={"help": "Fewest tokens sampled before EOS is allowed."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (log-probs are computed at the same temperature)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k most likely tokens (0: all)."})
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Leave completions without EOS out of the loss (DAPO, arXiv 2503.14476)."}
    )
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward function (default all 1)."})

    # --- optimisation ---
    max_steps: int = field(default=100, metadata={"help": "Rollout steps to train for."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = field(default="constant", metadata={"help": "Learning-rate schedule after warm-up."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up optimizer steps."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient's global norm to this (0: no clipping)."})

    def __post_init__(self) -> None:
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_completion_length", "max_prompt_length", "max_steps"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        for name in ("logging_steps",):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        for name in ("save_steps", "eval_steps", "warmup_steps", "top_k", "min_completion_length"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        _check(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        _check(self.min_completion_length <= self.max_completion_length, "min_completion_length exceeds max_completion_length")
        _check(self.report_to in ("none", "tensorboard"), f"report_to must be 'none' or 'tensorboard', got {self.report_to!r}")
        _check(self.long_prompts in ("error", "filter"), f"long_prompts must be 'error' or 'filter', got {self.long_prompts!r}")
        _check(
            self.lr_scheduler_type in ("constant", "linear", "cosine"),
            f"lr_scheduler_type must be constant, linear or cosine, got {self.lr_scheduler_type!r}",
        )
        if self.reward_weights is not None:
            _check(all(isinstance(w, (int, float)) for w in self.reward_weights), "reward_weights must be numbers")
