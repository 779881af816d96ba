"""Two gloo processes on a CPU-only machine, launched the way users launch them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_grpo_math_runs_as_two_processes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"),
        str(ROOT / "recipes" / "grpo_math.py"), "--model", tiny_model_dir, "--output_dir", str(out),
        "--max_steps", "2", "--eval_size", "8", "--per_device_batch_size", "2", "--num_generations", "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((out / "eval.json").read_text())
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert evaluation["num_processes"] == 2 and first["num_processes"] == 2


def _final_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "final" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["grpo_math", "ppo_math"])
def test_two_processes_match_one_process_with_the_same_global_batch(recipe, tiny_model_dir, tmp_path):
    """Per-prompt sampling seeds + globally normalised losses: 2 x 2 prompts == 1 x 4 prompts."""
    common = [str(ROOT / "recipes" / f"{recipe}.py"), "--model", tiny_model_dir, "--max_steps", "3",
              "--eval_steps", "0", "--eval_size", "4", "--num_generations", "2", "--learning_rate", "1e-2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([sys.executable, *common, "--output_dir", str(tmp_path / "one"), "--per_device_batch_size", "4"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", *common, "--output_dir", str(tmp_path / "two"),
         "--per_device_batch_size", "2"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    rewards = lambda run: [json.loads(line).get("reward_mean") for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rewards("one") == rewards("two")
    a, b = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    assert not torch.equal(a[name], _initial(tiny_model_dir)[name])  # training really moved the weights


def _initial(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))
