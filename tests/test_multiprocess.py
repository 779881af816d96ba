"""Two gloo processes on a CPU-only machine, launched the way users launch them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_grpo_math_runs_as_two_processes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(ROOT / "recipes" / "grpo_math.py"), "--model", tiny_model_dir, "--output_dir", str(out),
        "--max_steps", "2", "--eval_size", "8", "--per_device_batch_size", "2", "--num_generations", "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((out / "eval.json").read_text())
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert evaluation["num_processes"] == 2 and first["num_processes"] == 2
