"""recipes/ppo_cartpole.py: --help, a few hundred steps of PPO and of GRPO, the files it writes, a bad flag."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gymnasium", reason="llm_rl.control needs the control extra: pip install -e '.[control]'")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "ppo_cartpole.py"


def run(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(RECIPE), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


@pytest.mark.slow
def test_help_lists_the_flags_of_the_chosen_algorithm():
    ppo = run("--help")
    assert ppo.returncode == 0
    for flag in ("--algo", "--env", "--total_timesteps", "--n_steps", "--gae_lambda", "--clip_range_vf", "--learning_rate"):
        assert flag in ppo.stdout, flag
    grpo = run("--algo", "grpo", "--help")
    assert grpo.returncode == 0 and "--group_size" in grpo.stdout and "--beta" in grpo.stdout and "--n_steps" not in grpo.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "algo_args",
    [
        ["--n_steps", "32", "--n_envs", "2", "--batch_size", "32", "--total_timesteps", "256"],
        ["--algo", "grpo", "--group_size", "2", "--n_groups", "2", "--total_timesteps", "200"],
        [
            "--env",
            "Pendulum-v1",
            "--normalize",
            "true",
            "--n_steps",
            "100",
            "--n_envs",
            "2",
            "--batch_size",
            "50",
            "--total_timesteps",
            "400",
        ],
    ],
)
def test_recipe_trains_evaluates_saves_and_draws(tmp_path, algo_args):
    result = run(*algo_args, "--eval_episodes", "2", "--output_dir", str(tmp_path), "--seed", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "deterministic return" in result.stdout and "ep_rew_mean" in result.stdout  # verbose=1 table
    assert (tmp_path / "return_curve.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert len(ev["returns"]) == 2
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") >= 1


@pytest.mark.slow
def test_bad_flag_is_one_line_error():
    result = run("--batch_size", "100", "--total_timesteps", "10")
    assert result.returncode == 2
    assert "error: Invalid config: batch_size=100 does not divide" in result.stderr and "Traceback" not in result.stderr
