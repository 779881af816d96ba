"""Train a reward model on preference pairs: the embedded tiny model on arithmetic pairs by default.

    python recipes/train_reward_model.py                        # or: accelerate launch recipes/train_reward_model.py
    accelerate launch --multi_gpu --num_processes 2 recipes/train_reward_model.py --max_steps 20
    python recipes/train_reward_model.py --dataset my_pairs.jsonl --model PATH   # columns: prompt, chosen, rejected
    python recipes/train_reward_model.py --config recipes/configs/train_reward_model.yaml   # flags override the file
    python recipes/train_reward_model.py --help                 # every option; --debug shows an error's traceback

Writes to --output_dir (default outputs/reward_model): metrics.jsonl (loss, pairwise
accuracy per logged step), eval.json (held-out pairwise accuracy before/after), and the
reward model in final/, which a GRPO run takes as a reward function:
``GRPOTrainer(reward_funcs=["outputs/reward_model/final"], ...)`` or
``reward_models.LearnedReward("outputs/reward_model/final")``.
"""

from accelerate import PartialState

from llm_rl.cli import parse_args, run
from llm_rl.reward_training import RewardModelConfig, train_reward_model

ARGUMENTS = (RewardModelConfig,)  # recipes/configs/train_reward_model.yaml writes out its defaults
TINY_DEFAULTS = {}


def main(argv=None):
    (config,) = parse_args(ARGUMENTS, TINY_DEFAULTS, argv)
    summary = train_reward_model(config)
    if PartialState().is_main_process:
        print(summary, f"reward model in {config.output_dir}/final", sep="\n")
    return summary


if __name__ == "__main__":
    run(main)  # a user error: one paragraph and exit status 2 (--debug: the traceback)
