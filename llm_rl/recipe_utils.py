"""What the recipes share: their script arguments, data, rewards and evaluation, in one place.

Their command line (``parse``, ``--config``, ``--debug``) and error handling (``run``) are
``llm_rl.cli``'s, which any script can use the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_rl.cli import parse_args, run  # noqa: F401  (run: what each recipe's __main__ calls)
from llm_rl.data import heldout_arithmetic, load_gsm8k, load_task
from llm_rl.data.arithmetic import greedy_correct, unseen_arithmetic, unseen_problems
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

    def __post_init__(self) -> None:
        if self.reward == "rule":
            unknown_rewards(self.rewards)
        if not (isinstance(self.eval_size, int) and self.eval_size >= 1):
            raise ConfigError(f"Invalid config: eval_size must be a whole number >= 1 (held-out problems), got {self.eval_size!r}")


def unknown_rewards(names: str) -> None:
    unknown = [n.strip() for n in names.split(",") if n.strip() not in REWARDS]
    if unknown:
        raise ConfigError(
            f"Invalid config: rewards names unknown reward(s) {unknown}; choose from {', '.join(REWARDS)} "
            f"(or write your own, see README)"
        )


def parse(config_class, defaults: dict | None = None, argv: list[str] | None = None):
    """``(script_args, config)`` from the command line and ``--config FILE``; ``--help`` lists every field of both."""
    return parse_args((ScriptArguments, config_class), defaults, argv)


def reward_functions(names: str, reward: str = "rule") -> list:
    """The rule-based reward functions named in ``names``, or a learned reward model's folder."""
    if reward != "rule":
        return [reward]  # the trainer loads it as a reward_models.LearnedReward
    unknown_rewards(names)
    return [REWARDS[n.strip()]() for n in names.split(",")]


def train_and_eval_data(script_args: ScriptArguments, seed: int):
    """The training prompts, and the evaluation sets with gold answers when the task has them.

    The second value is ``None``, one dataset (logged as ``accuracy``), or, for the embedded
    arithmetic task, ``{"accuracy": draws from the whole task, "accuracy_unseen": draws from
    the unseen split that training never draws}`` (see ``llm_rl.data.arithmetic``); the first
    carries an ``unseen`` column, so ``accuracy_seen`` is also reported from the same pass.
    """
    train = load_task(script_args.dataset, split=script_args.dataset_split, prompt_column=script_args.prompt_column, seed=seed)
    if script_args.dataset == "arithmetic":
        heldout = heldout_arithmetic(script_args.eval_size)
        unseen = unseen_problems()
        heldout = heldout.add_column("unseen", [prompt in unseen for prompt in heldout["prompt"]])
        return train, {"accuracy": heldout,
                       "accuracy_unseen": unseen_arithmetic(script_args.eval_size)}
    if "gsm8k" in script_args.dataset.lower():
        source = "openai/gsm8k" if script_args.dataset == "gsm8k" else script_args.dataset
        test = load_gsm8k(source, split="test")
        return train, test.select(range(min(script_args.eval_size, len(test))))
    return train, None


def accuracy_eval_fn(heldout, max_new_tokens: int):
    """``eval_fn`` for the trainers: greedy accuracy on each evaluation set (None: no evaluation).

    ``heldout`` is one dataset (its key is ``accuracy``) or ``{metric name: dataset}``; every set
    is scored the same way (greedy, ``max_new_tokens``, ``math_correctness``'s number matching).
    A set with a boolean ``unseen`` column also gives ``<name>_seen``: the same pass's accuracy on
    its rows whose problem training also draws.
    """
    if heldout is None:
        return None
    sets = heldout if isinstance(heldout, dict) else {"accuracy": heldout}

    def evaluate(model, tokenizer) -> dict[str, float]:
        metrics = {}
        for name, data in sets.items():
            correct = greedy_correct(model, tokenizer, data, max_new_tokens=max_new_tokens)
            metrics[name] = sum(correct) / len(correct)
            seen = [ok for ok, unseen in zip(correct, data["unseen"]) if not unseen] if "unseen" in data.column_names else []
            if seen:  # no seen row (a tiny --eval_size): no figure, rather than a 0% that was never measured
                metrics[f"{name}_seen"] = sum(seen) / len(seen)
        return metrics

    return evaluate
