"""Train a reward model on preference pairs: the embedded tiny model on arithmetic pairs by default.

    python recipes/train_reward_model.py                        # or: accelerate launch recipes/train_reward_model.py
    accelerate launch --multi_gpu --num_processes 2 recipes/train_reward_model.py --max_steps 20
    python recipes/train_reward_model.py --dataset my_pairs.jsonl --model PATH   # columns: prompt, chosen, rejected
    python recipes/train_reward_model.py --help                 # every option

Writes to --output_dir (default outputs/reward_model): metrics.jsonl (loss, pairwise
accuracy per logged step), eval.json (held-out pairwise accuracy before/after), and the
reward model in final/, which a GRPO run takes as a reward function:
``GRPOTrainer(reward_funcs=["outputs/reward_model/final"], ...)`` or
``reward_models.LearnedReward("outputs/reward_model/final")``.
"""

import sys

from accelerate import PartialState
from transformers import HfArgumentParser

from llm_rl.reward_training import RewardModelConfig, train_reward_model


def main(argv=None):
    (config,) = HfArgumentParser(RewardModelConfig).parse_args_into_dataclasses(
        args=argv if argv is not None else sys.argv[1:]
    )
    summary = train_reward_model(config)
    if PartialState().is_main_process:
        print(summary, f"reward model in {config.output_dir}/final", sep="\n")
    return summary


if __name__ == "__main__":
    main()
