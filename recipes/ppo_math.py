"""PPO on math word problems, the twin of grpo_math.py: the embedded tiny model on arithmetic by default.

    accelerate launch recipes/ppo_math.py                       # or: python recipes/ppo_math.py
    python recipes/ppo_math.py --reward outputs/reward_model/final   # a learned reward model
    python recipes/ppo_math.py --kl_controller adaptive --cliprange None   # PPO-penalty
    python recipes/ppo_math.py --config recipes/configs/ppo_math.yaml --max_steps 50   # flags override the file
    python recipes/ppo_math.py --help                           # every option; --debug shows an error's traceback

Writes to --output_dir: metrics.jsonl (also value_loss, explained_variance, kl_coef,
returns_mean), eval.json, reward_curve.png, and final/ (the policy, loadable with
from_pretrained, plus value_head.safetensors).
"""

from llm_rl import PPOConfig, PPOTrainer
from llm_rl.recipe_utils import ScriptArguments, accuracy_eval_fn, parse, reward_functions, run, train_and_eval_data

ARGUMENTS = (ScriptArguments, PPOConfig)  # every option; recipes/configs/ppo_math.yaml writes out their defaults
TINY_DEFAULTS = {"output_dir": "outputs/ppo_math", "eval_steps": 100}


def main(argv=None):
    script_args, config = parse(PPOConfig, TINY_DEFAULTS, argv)
    train_dataset, heldout = train_and_eval_data(script_args, config.seed)
    trainer = PPOTrainer(
        model=script_args.model,
        reward_funcs=reward_functions(script_args.rewards, script_args.reward),
        args=config,
        train_dataset=train_dataset,
        value_model=script_args.value_model,
        eval_fn=accuracy_eval_fn(heldout, config.max_completion_length),
    )
    summary = trainer.train()
    if trainer.accelerator.is_main_process:
        print(summary, f"outputs in {config.output_dir}", sep="\n")
    return summary


if __name__ == "__main__":
    run(main)  # a user error: one paragraph and exit status 2 (--debug: the traceback)
