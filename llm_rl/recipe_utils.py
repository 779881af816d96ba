"""What the recipes share: their script arguments, data, rewards and evaluation, in one place."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from llm_rl.data import heldout_arithmetic, load_gsm8k, load_task
from llm_rl.data.arithmetic import greedy_accuracy
from llm_rl.trainers.config import ConfigError
from reward_models import format_reward, make_length_penalty, math_correctness

REWARDS = {
    "math_correctness": lambda: math_correctness,
    "format_reward": lambda: format_reward,
    "length_penalty": lambda: make_length_penalty(max_length=200),
}


@dataclass
class ScriptArguments:
    """What to train on; the trainer's own settings follow in the trainer's config."""

    model: str = field(default="tiny", metadata={"help": "Hub name, local folder, or 'tiny' (the embedded offline model)."})
    dataset: str = field(
        default="arithmetic",
        metadata={"help": "'arithmetic' (embedded), 'gsm8k' (hub), or a hub name / local .jsonl/.json/.csv/.parquet file."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to train on (hub datasets and folders)."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt (a string or a chat)."})
    rewards: str = field(
        default="math_correctness", metadata={"help": f"Comma-separated reward functions from: {', '.join(REWARDS)}."}
    )
    reward: str = field(
        default="rule", metadata={"help": "'rule' (the --rewards functions) or the folder of a learned reward model."}
    )
    value_model: str | None = field(
        default=None, metadata={"help": "PPO only: name or folder of a separate critic (default: a head on the policy)."}
    )
    eval_size: int = field(default=200, metadata={"help": "Held-out problems for greedy accuracy (arithmetic and GSM8K)."})


def parse(config_class, defaults: dict | None = None, argv: list[str] | None = None):
    """``(script_args, config)`` from the command line; ``--help`` lists every field of both."""
    parser = HfArgumentParser((ScriptArguments, config_class))
    if defaults:
        parser.set_defaults(**defaults)
    try:
        return parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    except ConfigError as error:  # an argparse-style one-line error, not a traceback from inside the dataclass
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def reward_functions(names: str, reward: str = "rule") -> list:
    """The rule-based reward functions named in ``names``, or a learned reward model's folder."""
    if reward != "rule":
        return [reward]  # the trainer loads it as a reward_models.LearnedReward
    unknown = [n for n in names.split(",") if n.strip() not in REWARDS]
    if unknown:
        raise SystemExit(f"unknown reward {unknown}; choose from {sorted(REWARDS)} (or write your own, see README)")
    return [REWARDS[n.strip()]() for n in names.split(",")]


def train_and_eval_data(script_args: ScriptArguments, seed: int):
    """The training prompts, and a held-out set with gold answers when the task has one."""
    train = load_task(script_args.dataset, split=script_args.dataset_split, prompt_column=script_args.prompt_column, seed=seed)
    if script_args.dataset == "arithmetic":
        return train, heldout_arithmetic(script_args.eval_size)
    if "gsm8k" in script_args.dataset.lower():
        source = "openai/gsm8k" if script_args.dataset == "gsm8k" else script_args.dataset
        test = load_gsm8k(source, split="test")
        return train, test.select(range(min(script_args.eval_size, len(test))))
    return train, None


def accuracy_eval_fn(heldout, max_new_tokens: int):
    """``eval_fn`` for the trainers: greedy accuracy on ``heldout`` (None: no evaluation)."""
    if heldout is None:
        return None
    return lambda model, tokenizer: {"accuracy": greedy_accuracy(model, tokenizer, heldout, max_new_tokens=max_new_tokens)}
