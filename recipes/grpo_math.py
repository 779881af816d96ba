"""GRPO on math word problems: the embedded tiny model on arithmetic by default.

    accelerate launch recipes/grpo_math.py                      # or: python recipes/grpo_math.py
    accelerate launch recipes/grpo_math.py --config recipes/configs/grpo_gsm8k_qwen2.5-0.5b.yaml   # GSM8K, Qwen2.5-0.5B
    python recipes/grpo_math.py --config recipes/configs/grpo_math.yaml --max_steps 50   # flags override the file
    python recipes/grpo_math.py --help                          # every option; --debug shows an error's traceback

Writes to --output_dir: metrics.jsonl, eval.json (greedy accuracy before/after),
reward_curve.png, and the trained model in final/ (loadable with from_pretrained).
"""

from llm_rl import GRPOConfig, GRPOTrainer
from llm_rl.recipe_utils import ScriptArguments, accuracy_eval_fn, parse, reward_functions, run, train_and_eval_data

ARGUMENTS = (ScriptArguments, GRPOConfig)  # every option; recipes/configs/grpo_math.yaml writes out their defaults
# Defaults tuned for the tiny model on a 2-core CPU; override any of them on the command line or in --config.
TINY_DEFAULTS = {"output_dir": "outputs/grpo_math", "eval_steps": 100}


def main(argv=None):
    script_args, config = parse(GRPOConfig, TINY_DEFAULTS, argv)
    train_dataset, heldout = train_and_eval_data(script_args, config.seed)
    trainer = GRPOTrainer(
        model=script_args.model,
        reward_funcs=reward_functions(script_args.rewards, script_args.reward),
        args=config,
        train_dataset=train_dataset,
        eval_fn=accuracy_eval_fn(heldout, config.max_completion_length),
    )
    summary = trainer.train()
    if trainer.accelerator.is_main_process:
        print({k: v for k, v in summary.items()}, f"outputs in {config.output_dir}", sep="\n")
    return summary


if __name__ == "__main__":
    run(main)  # a user error (bad path, data, setting): one paragraph and exit status 2, not a traceback
