import json
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _run_recipe(name, argv):
    sys.path.insert(0, str(RECIPES))
    try:
        module = __import__(name)
        return module.main(argv)
    finally:
        sys.path.remove(str(RECIPES))


def test_grpo_math_two_steps_writes_every_output(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    summary = _run_recipe(
        "grpo_math",
        ["--model", tiny_model_dir, "--output_dir", str(out), "--max_steps", "2", "--eval_steps", "1",
         "--eval_size", "8", "--per_device_batch_size", "2", "--num_generations", "2"],
    )
    assert summary["steps"] == 2
    evaluation = json.loads((out / "eval.json").read_text())
    assert {"accuracy_before", "accuracy_after", "num_processes"} <= set(evaluation)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["num_processes"] == 1 and lines[-1]["step"] == 2
    assert (out / "reward_curve.png").stat().st_size > 1000
    assert (out / "final" / "config.json").exists()


def test_grpo_math_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        _run_recipe("grpo_math", ["--help"])
    text = capsys.readouterr().out
    for option in ("--num_generations", "--beta", "--epsilon_high", "--loss_aggregation", "--dataset", "--model"):
        assert option in text


def test_ppo_math_two_steps_writes_every_output(tiny_model_dir, tmp_path):
    out = tmp_path / "ppo"
    summary = _run_recipe(
        "ppo_math",
        ["--model", tiny_model_dir, "--output_dir", str(out), "--max_steps", "2", "--eval_steps", "1",
         "--eval_size", "8", "--per_device_batch_size", "2", "--num_generations", "2"],
    )
    assert summary["steps"] == 2
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"value_loss", "explained_variance", "kl_coef", "returns_mean"} <= set(row)
    assert (out / "final" / "value_head.safetensors").exists() and (out / "reward_curve.png").exists()
