"""PPO (or GRPO) on a gymnasium environment: the five lines of every PPO tutorial, on llm_rl.

    import gymnasium as gym
    from llm_rl.control import PPO
    env = gym.make("CartPole-v1")
    model = PPO(policy="MlpPolicy", env=env, verbose=1)
    model.learn(total_timesteps=50_000)

plus a deterministic evaluation over 20 episodes, a save, and return_curve.png.

    python recipes/ppo_cartpole.py                                          # PPO, CartPole-v1, 50,000 steps
    python recipes/ppo_cartpole.py --algo grpo --total_timesteps 200000     # GRPO: groups of episodes, no critic
    python recipes/ppo_cartpole.py --env Pendulum-v1 --total_timesteps 100000 --normalize true \\
        --n_envs 4 --n_steps 1024 --batch_size 64 --gamma 0.9 --lr_schedule constant   # rl-zoo's Pendulum settings
    python recipes/ppo_cartpole.py --help                                   # every flag (--algo grpo --help: GRPO's)

Writes to --output_dir: model/ (config.json + model.safetensors; PPO.load or GRPO.load),
eval.json (the returns of each evaluation episode), metrics.jsonl, return_curve.png.
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import HfArgumentParser

from llm_rl.control import GRPO, PPO, ConfigError, GRPOConfig, PPOConfig, evaluate, make_vec_env, normalize
from llm_rl.control.envs import eval_env_like

ALGORITHMS = {"ppo": (PPO, PPOConfig), "grpo": (GRPO, GRPOConfig)}


@dataclass
class ScriptArguments:
    """What to run; the algorithm's own settings follow (PPOConfig or GRPOConfig)."""

    algo: Literal["ppo", "grpo"] = field(
        default="ppo", metadata={"help": "ppo, or grpo (groups of episodes from one start state)."}
    )
    env: str = field(default="CartPole-v1", metadata={"help": "Any gymnasium env id with a Box observation space."})
    total_timesteps: int = field(default=50_000, metadata={"help": "Environment steps to train for."})
    eval_episodes: int = field(default=20, metadata={"help": "Deterministic evaluation episodes after training."})
    normalize: bool = field(
        default=False, metadata={"help": "Normalise observations and rewards (gymnasium's wrappers, per env)."}
    )
    output_dir: str = field(
        default="outputs/ppo_cartpole", metadata={"help": "Where the model, eval.json, metrics and the curve go."}
    )
    progress_bar: bool = field(default=False, metadata={"help": "Show a tqdm bar while learning."})
    threads: int = field(default=1, metadata={"help": "torch threads (a 64-64 MLP runs fastest on one; more only synchronise)."})


def parse(argv: list[str]):
    pre = argparse.ArgumentParser(add_help=False)  # which config's flags to offer (and to --help)
    pre.add_argument("--algo", default="ppo", choices=sorted(ALGORITHMS))
    algo = pre.parse_known_args(argv)[0].algo
    parser = HfArgumentParser((ScriptArguments, ALGORITHMS[algo][1]))
    parser.set_defaults(verbose=1)
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ConfigError as error:  # one argparse-style line, not a traceback from __post_init__
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def build_env(args: ScriptArguments, config, n_envs: int):
    """The env id as it is, or n_envs copies with observations and rewards normalised (SB3's VecNormalize)."""
    if not args.normalize:
        return args.env
    return normalize(make_vec_env(args.env, n_envs), gamma=getattr(config, "gamma", 0.99))


def plot_returns(history: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, returns = np.array(history).T if history else (np.array([]), np.array([]))
    window = max(1, min(20, len(returns)))
    smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
    plt.figure(figsize=(6, 3.5))
    plt.plot(steps, returns, ".", alpha=0.25, markersize=3, label="episode")
    plt.plot(steps[window - 1 :], smooth, label=f"mean of {window}")
    plt.xlabel("timesteps")
    plt.ylabel("episode return")
    plt.title(title)
    plt.legend()
    plt.tight_layout()
    plt.savefig(path, dpi=120)
    plt.close()


if __name__ == "__main__":
    args, config = parse(sys.argv[1:])
    torch.set_num_threads(args.threads)
    Algorithm = ALGORITHMS[args.algo][0]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_envs = config.n_envs if args.algo == "ppo" else config.n_groups * config.group_size

    model = Algorithm("MlpPolicy", build_env(args, config, n_envs), log_dir=out, **config.to_dict())
    model.learn(total_timesteps=args.total_timesteps, progress_bar=args.progress_bar)

    eval_env = eval_env_like(args.env, model.env)  # frozen observation statistics when normalised
    returns = evaluate(model, eval_env, n_episodes=args.eval_episodes, seed=10_000 + (config.seed or 0))
    print(
        f"{args.algo} on {args.env}: deterministic return {np.mean(returns):.1f} +- {np.std(returns):.1f} over {len(returns)} episodes"
    )
    model.save(out / "model")
    (out / "eval.json").write_text(
        json.dumps({"returns": returns, "mean": float(np.mean(returns)), "timesteps": model.num_timesteps})
    )
    plot_returns(model.history, out / "return_curve.png", f"{args.algo} on {args.env}")
