"""Settings shared by the PPO and GRPO trainers, one documented field each.

``HfArgumentParser`` turns these dataclasses into a command line, so every field's
``help`` is also its ``--help`` text. Validation happens once, in ``__post_init__``:
every field's type first (``Literal`` choices included), then its range, each failure
a ``ConfigError`` that says what to change. A config is never mutated afterwards.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field, fields
from types import UnionType
from typing import Literal, Union, get_args, get_origin, get_type_hints

from llm_rl.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value of the wrong type or out of range; the message names the field and the fix."""


# Trackers report_to accepts (accelerate's names) -> the module each needs, installed by the extra of the same name.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio", "comet_ml": "comet_ml"}


def tracker_names(report_to: str | list[str]) -> list[str]:
    """``report_to`` as a list of tracker names: a list, a comma-separated string, or "none" (no tracker)."""
    given = [report_to] if isinstance(report_to, str) else report_to
    names = [name.strip() for item in given for name in item.split(",") if name.strip()]
    if "none" in names:
        _check(names == ["none"], f"report_to lists 'none' together with {[n for n in names if n != 'none']}; pass one or the other")
        return []
    for name in names:
        _check(name in TRACKERS, f"report_to: {name!r} is not a tracker llm_rl supports; choose from {', '.join(TRACKERS)} (several at once: --report_to tensorboard wandb), or none")
        _check(importlib.util.find_spec(TRACKERS[name]) is not None,
               f"report_to={name!r} needs the {TRACKERS[name]} package, which is not installed: pip install 'llm-rl[{name}]'")  # fmt: skip
    return names


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(f"Invalid config: {message}")


def _has_type(value, hint) -> bool:
    """``isinstance`` for the annotations configs use: int, float, bool, str, Literal, ``X | None``, ``list[X]``."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (Union, UnionType):
        return any(_has_type(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if hint in (int, float):  # bool is an int subclass, but max_steps=True is a mistake; an int is a fine float
        return isinstance(value, (int, hint)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def check_field_types(config) -> None:
    """Every field holds a value of its annotated type (comparing a str with a number would fail obscurely later)."""
    hints = get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        _check(
            _has_type(value, hints[f.name]),
            f"{f.name} must be {_type_name(hints[f.name])}, got {value!r} (a {type(value).__name__}); "
            f"change {f.name} (--{f.name} on the command line)",
        )


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
    report_to: str | list[str] = field(
        default_factory=lambda: "none",  # a factory: HfArgumentParser takes a list option's default only from one
        metadata={"help": f"Also log metrics, the config and the llm_rl version through accelerate's trackers: one or several "
                          f"of {', '.join(TRACKERS)} (--report_to tensorboard wandb, or tensorboard,wandb), or none. Each "
                          f"needs its extra (pip install 'llm-rl[wandb]'); wandb writes under output_dir."},
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint folder to continue from."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of data order, sampling and initialisation."})

    # --- model ---
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the hub (off: only built-in architectures)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward to save memory."})
    sparse_embedding_grad: bool = field(
        default=True,
        metadata={"help": "On one process, the input embedding's backward returns only the used rows, added into the "
                          "dense gradient in place (llm_rl.models.embedding): the end of backward then holds no second "
                          "(vocabulary, hidden) gradient beside the tied LM head's (545 MB at Qwen2.5-0.5B's shape). DDP, "
                          "FSDP and DeepSpeed keep the dense gradient."},
    )
    memory_efficient_swiglu: bool = field(
        default=True,
        metadata={"help": "SwiGLU MLPs (Llama, Qwen2, Qwen3, Mistral) keep gate and up for backward and recompute "
                          "silu(gate) there (llm_rl.models.swiglu): one (tokens, intermediate) tensor less per layer, "
                          "bitwise the same values and gradients. Other MLPs are left as they are."},
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Set every dropout probability to 0, so the update's log-probs match the sampler's (as TRL does)."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision (default: on for CUDA with bf16 support, off on CPU)."})
    model_dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="float32",
        metadata={"help": "dtype the trained weights (and the reference copy) load in. float32 by default: hub checkpoints "
                          "ship bf16, and AdamW on bf16 weights has no float32 master copy, so updates below bf16's "
                          "resolution (most at lr 1e-6) are lost; bf16=True adds autocast for speed. 'auto' keeps the "
                          "checkpoint's dtype (as TRL's model_init_kwargs dtype='auto')."},
    )
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
    rollout_dtype: Literal["float32", "bfloat16"] | None = field(
        default=None,
        metadata={"help": "Generate from a copy of the policy in this dtype, refreshed after every update (None: from the "
                          "policy itself). bfloat16 with float32 training halves the bytes decoding reads; its sampling "
                          "log-probs then differ from the trainer's (see GRPO's rollout_correction)."},
    )
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Leave completions without EOS out of the loss (DAPO, arXiv 2503.14476)."}
    )
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward function (default all 1)."})
    reward_num_workers: int = field(
        default=0,
        metadata={"help": "Threads for plain (non-async) reward functions. 0: called one after another in the training "
                          "thread. N >= 1: run on N threads, each function's batch cut into N // (plain functions) parts "
                          "of whole prompt groups, one call each (so a function must not need the whole batch at once). "
                          "async def functions are always awaited concurrently, once per batch."},
    )
    reward_timeout: float | None = field(
        default=None,
        metadata={"help": "Seconds one reward call may take; a call over it stops the run with an error naming the "
                          "function and samples (None: no limit)."},
    )
    logprob_chunk_size: int = field(
        default=256,
        metadata={"help": "Positions whose LM-head logits exist at once in every log-prob pass: the head computes "
                          "log-probs from its input this many positions at a time, forward and backward "
                          "(llm_rl.core.chunked_lm_head_logprobs), so the (rows, tokens, vocabulary) logits never "
                          "exist. At V = 151,936, 256 positions' fp32 logits are 148 MiB (1024: 594 MiB), and the pass holds "
                          "about twice that (their exp in the logsumexp, or their gradient); 0: the model's full logits "
                          "(the path before this option)."},
    )

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
        check_field_types(self)  # first, so the range checks below compare numbers with numbers
        self.report_to = tracker_names(self.report_to)  # always a list after init, [] for "none" (as TRL's)
        _check(0 < self.learning_rate < math.inf, f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_completion_length", "max_prompt_length", "max_steps"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        for name in ("logging_steps",):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1")
        for name in ("save_steps", "eval_steps", "warmup_steps", "top_k", "min_completion_length", "logprob_chunk_size"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        _check(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        _check(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, f"adam_beta1 and adam_beta2 must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.lora_r >= 1 and 0 <= self.lora_dropout < 1, f"lora_r must be >= 1 and lora_dropout in [0, 1), got {self.lora_r}, {self.lora_dropout}")
        _check(self.min_completion_length <= self.max_completion_length, "min_completion_length exceeds max_completion_length")
        _check(self.reward_num_workers >= 0, f"reward_num_workers must be >= 0 (0: no threads), got {self.reward_num_workers}")
        _check(
            self.reward_timeout is None or 0 < self.reward_timeout < math.inf,
            f"reward_timeout must be a finite number of seconds > 0, or None for no limit, got {self.reward_timeout}",
        )
