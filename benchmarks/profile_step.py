"""Where an llm_rl training step spends its time: torch.profiler ops and Python functions.

    python benchmarks/profile_step.py --algo grpo --size tiny --steps 2
    python benchmarks/profile_step.py --algo ppo --size 30m --python      # cProfile as well

Runs the trainer with ``vs_trl.py``'s settings, one warm-up step unprofiled, then
``--steps`` steps under ``torch.profiler`` (CPU ops, self time) and optionally
``cProfile`` (Python functions, cumulative time). Shares are what to read here: on a
shared machine absolute times are contended.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SIZES, set_threads  # noqa: E402
from vs_trl import prompt_dataset, settings  # noqa: E402


def build_trainer(algo: str, s: dict, output_dir: str):
    from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
    from reward_models import math_correctness

    common = dict(
        output_dir=output_dir, overwrite_output_dir=True, per_device_batch_size=s["prompts_per_step"],
        num_generations=s["num_generations"], max_completion_length=s["max_completion_length"],
        min_completion_length=s["min_completion_length"], learning_rate=s["learning_rate"],
        lr_scheduler_type="constant", warmup_steps=0, max_steps=10**6, seed=0, bf16=False,
    )  # fmt: skip
    if algo == "grpo":
        config = GRPOConfig(**common, beta=s["beta"], num_iterations=s["num_iterations"])
        return GRPOTrainer(model=s["model"], reward_funcs=[math_correctness], args=config, train_dataset=prompt_dataset())
    config = PPOConfig(**common, num_ppo_epochs=s["num_ppo_epochs"], kl_coef=s["kl_coef"], max_grad_norm=0.0)
    return PPOTrainer(model=s["model"], reward_funcs=[s["reward"]], args=config, train_dataset=prompt_dataset(),
                      value_model=s["model"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=["grpo", "ppo"], default="grpo")
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=25, help="table rows")
    parser.add_argument("--python", action="store_true", help="also print cProfile's top Python functions")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_threads(args.threads)
    import torch
    from torch.profiler import ProfilerActivity, profile

    s = settings(args.algo, args.size, 0, args.threads)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = build_trainer(args.algo, s, output_dir)
        trainer.training_step()  # warm-up
        trainer.step += 1
        python_profile = cProfile.Profile() if args.python else None
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            if python_profile:
                python_profile.enable()
            for _ in range(args.steps):
                trainer.training_step()
                trainer.step += 1
            if python_profile:
                python_profile.disable()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if python_profile:
        pstats.Stats(python_profile).sort_stats("cumulative").print_stats(args.rows)
    print(f"torch {torch.__version__}, {args.threads} threads")


if __name__ == "__main__":
    main()
