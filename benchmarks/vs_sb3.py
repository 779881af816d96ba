"""llm_rl.control against Stable-Baselines3 on CartPole-v1 and Pendulum-v1, and GRPO on CartPole-v1.

    pip install -e ".[bench]"          # stable-baselines3 (never a runtime dependency of llm_rl)
    python benchmarks/vs_sb3.py --seeds 10 --json outputs/vs_sb3.json
    python benchmarks/vs_sb3.py --seeds 3 --only cartpole

Rows, for seeds 0..N-1 (or from --first_seed), the libraries interleaved seed by seed (and which goes first alternates)
so that other work on the machine weighs on both alike; both at `--threads` torch threads:
- cartpole: CartPole-v1, 50,000 steps, each library at its own defaults (the five lines of the
  README, `PPO("MlpPolicy", gym.make("CartPole-v1"))`), then llm_rl at SB3's hyperparameters
  (one env, n_steps 2048, batch 64, 10 epochs, lr 3e-4 constant; vf_coef 1.0 because SB3's value
  loss is the MSE and llm_rl.core's 0.5 * MSE): the same algorithm, to compare speed;
- pendulum: Pendulum-v1, 100,000 steps, rl-baselines3-zoo's tuned PPO (hyperparams/ppo.yml: n_envs 4,
  n_steps 1024, batch 64, gae_lambda 0.95, gamma 0.9, n_epochs 10, ent_coef 0, lr 1e-3, clip 0.2,
  observations and rewards normalised) without gSDE on both sides, SB3's other defaults (vf_coef 0.5,
  passed to llm_rl as 1.0 as above); SB3 normalises with VecNormalize, llm_rl with `llm_rl.control.normalize`
  (the same: one statistic over the vector env, the final observation normalised too);
- grpo: llm_rl's GRPO on CartPole-v1 at its defaults, a run of 100,000 and one of 200,000 steps.

Each row: deterministic evaluation return per seed (mean of 20 episodes of a separate env seeded
10_000 + 100 * seed), seeds reaching 475, learn() wall seconds and CPU seconds (this process's
user + system time: at one thread it stays near the time alone when other jobs share the machine),
and environment steps per wall second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_rl.control import GRPO, PPO, evaluate, make_vec_env, normalize  # noqa: E402
from llm_rl.control.envs import eval_env_like  # noqa: E402

SOLVED = 475.0
EVAL_EPISODES = 20
SCALE = 1.0  # --timesteps_scale: every budget times this (a smoke run; the budgets at 1)
SB3_DEFAULTS_FOR_LLM_RL = dict(
    n_envs=1,
    n_steps=2048,
    batch_size=64,
    n_epochs=10,
    learning_rate=3e-4,
    lr_schedule="constant",
    gamma=0.99,
    gae_lambda=0.95,
    clip_range=0.2,
    ent_coef=0.0,
    vf_coef=1.0,
    max_grad_norm=0.5,
)
PENDULUM = dict(
    n_steps=1024, batch_size=64, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0, learning_rate=1e-3, clip_range=0.2
)


def budget(steps: int) -> int:
    return max(1, int(steps * SCALE))


def eval_seed(seed: int) -> int:
    return 10_000 + 100 * seed


def timed(learn) -> tuple[float, float]:
    """Wall and CPU seconds of one learn() call."""
    wall, cpu = time.perf_counter(), time.process_time()
    learn()
    return time.perf_counter() - wall, time.process_time() - cpu


class SB3Normalized:
    """SB3 model + its VecNormalize, with predict() on raw observations (as the eval loop calls it)."""

    def __init__(self, model, vec_normalize):
        self.model, self.vec_normalize = model, vec_normalize

    def predict(self, obs, deterministic=True):
        return self.model.predict(self.vec_normalize.normalize_obs(obs), deterministic=deterministic)


# -- one run per (library, task, seed) ------------------------------------------------------


def cartpole_sb3(seed: int) -> dict:
    from stable_baselines3 import PPO as SB3PPO

    env = gym.make("CartPole-v1")
    model = SB3PPO(policy="MlpPolicy", env=env, seed=seed, device="cpu")
    wall, cpu = timed(lambda: model.learn(total_timesteps=budget(50_000)))
    return row(model.num_timesteps, wall, cpu, evaluate(model, "CartPole-v1", EVAL_EPISODES, eval_seed(seed)))


def cartpole_llm_rl(seed: int, **settings) -> dict:
    env = gym.make("CartPole-v1")
    model = PPO(policy="MlpPolicy", env=env, seed=seed, device="cpu", **settings)
    wall, cpu = timed(lambda: model.learn(total_timesteps=budget(50_000)))
    return row(model.num_timesteps, wall, cpu, evaluate(model, "CartPole-v1", EVAL_EPISODES, eval_seed(seed)))


def pendulum_sb3(seed: int) -> dict:
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize(sb3_make_vec_env("Pendulum-v1", n_envs=4, seed=seed), gamma=PENDULUM["gamma"])
    model = SB3PPO("MlpPolicy", env, seed=seed, device="cpu", use_sde=False, **PENDULUM)
    wall, cpu = timed(lambda: model.learn(total_timesteps=budget(100_000)))
    env.training = False
    returns = evaluate(SB3Normalized(model, env), "Pendulum-v1", EVAL_EPISODES, eval_seed(seed))
    return row(model.num_timesteps, wall, cpu, returns)


def pendulum_llm_rl(seed: int) -> dict:
    env = normalize(make_vec_env("Pendulum-v1", 4), gamma=PENDULUM["gamma"])
    # SB3's other defaults, with vf_coef 1.0 for SB3's 0.5 (its value loss is the MSE, llm_rl.core's 0.5 * MSE)
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", lr_schedule="constant", vf_coef=1.0, max_grad_norm=0.5, **PENDULUM)
    wall, cpu = timed(lambda: model.learn(total_timesteps=budget(100_000)))
    returns = evaluate(model, eval_env_like("Pendulum-v1", model.env), EVAL_EPISODES, eval_seed(seed))
    return row(model.num_timesteps, wall, cpu, returns)


def grpo_llm_rl(seed: int) -> dict:
    """Two runs at GRPO's defaults, of 100,000 and 200,000 steps (the learning rate anneals over each)."""
    out = {}
    for steps in (100_000, 200_000):
        model = GRPO("MlpPolicy", "CartPole-v1", seed=seed, device="cpu")
        wall, cpu = timed(lambda: model.learn(total_timesteps=budget(steps)))
        out[steps] = row(model.num_timesteps, wall, cpu, evaluate(model, "CartPole-v1", EVAL_EPISODES, eval_seed(seed)))
    first = [t for t, r in model.history if r >= SOLVED]
    out["curve"] = [(int(t), float(r)) for t, r in model.history]  # of the 200,000-step run
    out["first_episode_at_475"] = first[0] if first else None
    return out


def row(steps: int, wall: float, cpu: float, returns: list[float]) -> dict:
    return {
        "eval_return": float(np.mean(returns)),
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": int(steps),
        "steps_per_s": steps / wall,
    }


# -- tables ---------------------------------------------------------------------------------


def summarize(name: str, runs: list[dict]) -> dict:
    returns = [r["eval_return"] for r in runs]
    s = {
        "name": name,
        "eval_returns": [round(x, 1) for x in returns],
        "mean_return": float(np.mean(returns)),
        "solved": f"{sum(x >= SOLVED for x in returns)}/{len(returns)}",
        "wall_s_mean": statistics.mean(r["wall_s"] for r in runs),
        "cpu_s_mean": statistics.mean(r["cpu_s"] for r in runs),
        "steps_per_s": statistics.mean(r["steps_per_s"] for r in runs),
    }
    print(
        f"| {name} | {' / '.join(f'{x:.1f}' for x in returns)} | {s['mean_return']:.1f} | {s['solved']} | "
        f"{s['wall_s_mean']:.1f} | {s['cpu_s_mean']:.1f} | {s['steps_per_s']:.0f} |",
        flush=True,
    )
    return s


HEADER = "| run | deterministic return per seed | mean | seeds >= 475 | learn() wall s | CPU s | env steps / s |\n|---|---|---|---|---|---|---|"


def run_interleaved(tasks: dict, seeds: range, save=lambda results: None) -> dict[str, list[dict]]:
    """Every task for the first seed, then every task for the next, ...; the order of the tasks alternates."""
    results: dict[str, list[dict]] = {name: [] for name in tasks}
    for seed in seeds:
        order = list(tasks) if seed % 2 == 0 else list(tasks)[::-1]
        for name in order:
            result = tasks[name](seed)
            results[name].append(result)
            shown = result[max(k for k in result if isinstance(k, int))] if "curve" in result else result
            print(
                f"  seed {seed} {name}: return {shown['eval_return']:.1f}, learn {shown['wall_s']:.1f} s wall, {shown['cpu_s']:.1f} s CPU",
                flush=True,
            )
            save(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seeds", type=int, default=10, help="how many seeds, from --first_seed (the issue: 10 for CartPole, 5 for Pendulum, 10 for GRPO)"
    )
    parser.add_argument("--first_seed", type=int, default=0, help="start the seeds here (more seeds after an earlier run)")
    parser.add_argument("--only", choices=["cartpole", "pendulum", "grpo"], action="append", help="run only these (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both libraries")
    parser.add_argument("--json", type=str, default=None, help="write every run and the summaries here (after every run)")
    parser.add_argument("--timesteps_scale", type=float, default=1.0, help="scale every budget (0.02: a smoke run)")
    args = parser.parse_args()
    global SCALE
    SCALE = args.timesteps_scale
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    only = args.only or ["cartpole", "pendulum", "grpo"]
    import stable_baselines3

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(
        f"llm_rl vs Stable-Baselines3 {stable_baselines3.__version__}, torch {torch.__version__}, "
        f"gymnasium {gym.__version__}, {args.threads} thread(s), seeds {seeds.start}..{seeds.stop - 1}",
        flush=True,
    )
    report: dict = {"threads": args.threads, "seeds": list(seeds), "sb3": stable_baselines3.__version__, "runs": {}, "summary": []}

    def save(partial_runs: dict | None = None) -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({**report, "in_progress": partial_runs}, indent=1, default=str))

    if "cartpole" in only:
        runs = run_interleaved(
            {
                "CartPole, SB3 at its defaults": cartpole_sb3,
                "CartPole, llm_rl at its defaults": cartpole_llm_rl,
                "CartPole, llm_rl at SB3's hyperparameters": partial(cartpole_llm_rl, **SB3_DEFAULTS_FOR_LLM_RL),
            },
            seeds,
            save,
        )
        report["runs"].update(runs)
        print(HEADER)
        report["summary"] += [summarize(name, r) for name, r in runs.items()]
    if "pendulum" in only:
        runs = run_interleaved(
            {"Pendulum, SB3 (zoo settings, no gSDE)": pendulum_sb3, "Pendulum, llm_rl (same settings)": pendulum_llm_rl},
            seeds,
            save,
        )
        report["runs"].update(runs)
        print(HEADER)
        report["summary"] += [summarize(name, r) for name, r in runs.items()]
    if "grpo" in only:
        runs = run_interleaved({"GRPO": grpo_llm_rl}, seeds, save)["GRPO"]
        report["runs"]["GRPO"] = runs
        print(HEADER)
        for steps in (100_000, 200_000):
            report["summary"].append(
                summarize(f"CartPole, llm_rl GRPO at its defaults, {steps:,} steps", [r[steps] for r in runs])
            )
        print("first training episode reaching 475, per seed:", [r["first_episode_at_475"] for r in runs])
        if args.json:
            plot_grpo(runs, Path(args.json).with_name("grpo_return_curve.png"))
    save()


def plot_grpo(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(6, 3.5))
    for seed, run in enumerate(runs):
        steps, returns = np.array(run["curve"]).T
        window = min(32, len(returns))
        plt.plot(steps[window - 1 :], np.convolve(returns, np.ones(window) / window, mode="valid"), label=f"seed {seed}", lw=1)
    plt.axhline(SOLVED, color="k", ls=":", lw=1)
    plt.xlabel("timesteps")
    plt.ylabel("training episode return (mean of 32)")
    plt.title("llm_rl GRPO on CartPole-v1")
    plt.legend(fontsize=6, ncol=2)
    plt.tight_layout()
    plt.savefig(path, dpi=120)
    plt.close()


if __name__ == "__main__":
    main()
