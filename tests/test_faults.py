"""Faults: Ctrl-C mid-run checkpoints and exits cleanly, and the run resumes from there."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_cleanly_then_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, str(ROOT / "recipes" / "grpo_math.py"), "--model", tiny_model_dir, "--output_dir", str(out),
            "--eval_steps", "0", "--eval_size", "4", "--per_device_batch_size", "2", "--num_generations", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen([*base, "--max_steps", "100000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 4):
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr[-2000:]
    assert "interrupted: saved" in stdout
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").exists()
    stopped_at = json.loads((checkpoints[0] / "trainer_state.json").read_text())["step"]
    assert stopped_at >= 3 and not list(out.glob(".tmp-*"))

    resumed = subprocess.run([*base, "--max_steps", str(stopped_at + 2), "--resume_from_checkpoint", "latest"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps[-1] == stopped_at + 2
