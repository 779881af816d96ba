"""Two gloo processes on a CPU-only machine, launched the way users launch them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launching import ENV, accelerate_launch, run_alone_and_on_two_processes


ROOT = Path(__file__).resolve().parents[1]


def _final_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "final" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["grpo_math", "ppo_math"])
def test_two_processes_match_one_process_with_the_same_global_batch(recipe, warm_tiny_model_dir, tmp_path):
    """Per-prompt sampling seeds + globally normalised losses: 2 x 2 prompts == 1 x 4 prompts."""
    tiny_model_dir = warm_tiny_model_dir  # rewards that differ inside a group, so the weights move
    common = [str(ROOT / "recipes" / f"{recipe}.py"), "--model", tiny_model_dir, "--max_steps", "3",
              "--eval_steps", "0", "--eval_size", "4", "--num_generations", "2", "--learning_rate", "1e-2"]
    one = subprocess.run([sys.executable, *common, "--output_dir", str(tmp_path / "one"), "--per_device_batch_size", "4"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        accelerate_launch(*common, "--output_dir", tmp_path / "two", "--per_device_batch_size", "2"),
        env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    rows = lambda run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    # recipes/accelerate_configs/cpu_2proc.yaml really starts 2 processes (`--cpu` would silently start 1)
    for run, processes in (("one", 1), ("two", 2)):
        assert json.loads((tmp_path / run / "eval.json").read_text())["num_processes"] == processes
        assert rows(run)[0]["num_processes"] == processes
    logged = lambda run, key: [row[key] for row in rows(run) if key in row]  # noqa: E731
    assert logged("one", "reward_mean") == logged("two", "reward_mean")
    # Adam forgives a gradient off by a constant factor; the gradient norm does not
    assert logged("two", "grad_norm") == pytest.approx(logged("one", "grad_norm"), rel=1e-4)
    a, b = _final_weights(tmp_path / "one"), _final_weights(tmp_path / "two")
    # Adam's first steps are ~lr * sign(g): where a gradient entry is at float-rounding size, the
    # 1- and 2-process sums can round to opposite signs and move that weight by up to 2 lr a step.
    # Everywhere else the weights agree to 1e-5 (and the gradient norms above to 1e-4).
    differences = torch.cat([(a[name] - b[name]).abs().flatten() for name in a])
    assert (differences <= 1e-5).float().mean() >= 0.999
    assert differences.max() <= 2 * 1e-2 * 3
    name = next(iter(a))
    assert not torch.equal(a[name], _initial(tiny_model_dir)[name])  # training really moved the weights


def _initial(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


ONE_STEP = """
import dataclasses, json, os, sys
from accelerate.utils import gather_object
from llm_rl import GRPOConfig, GRPOTrainer
import llm_rl.rollout.engine as grpo_trainer  # the trainer's rollout engine calls its generate_rollout
from llm_rl.data import arithmetic_dataset

model, out, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3])
generate, widths = grpo_trainer.generate_rollout, []

def short_for_some_prompts(model, tokenizer, texts, seeds, group_size, *args, **kwargs):
    # As if the model ended the completions of prompts 0 and 1 (seeds are the prompts' global
    # indices) after 2 tokens: process 0, which holds only those, trims its batch to 2 columns.
    rollout = generate(model, tokenizer, texts, seeds, group_size, *args, **kwargs)
    for i, seed in enumerate(seeds):
        if seed % 4 < 2:
            rows = slice(i * group_size, (i + 1) * group_size)
            rollout.completion_mask[rows, 2:] = 0
            rollout.completion_ids[rows, 2:] = tokenizer.pad_token_id
            rollout.sampling_logprobs[rows, 2:] = 0
    width = int(rollout.completion_mask.sum(-1).max())  # generate stops once every row has ended
    widths.append(width)
    return dataclasses.replace(rollout, completion_ids=rollout.completion_ids[:, :width],
                               completion_mask=rollout.completion_mask[:, :width],
                               sampling_logprobs=rollout.sampling_logprobs[:, :width])

grpo_trainer.generate_rollout = short_for_some_prompts
config = GRPOConfig(output_dir=out, max_steps=1, per_device_batch_size=prompts, num_generations=2, max_completion_length=12,
                    loss_aggregation="seq_sum_norm", max_grad_norm=0.0, eval_steps=0, lr_scheduler_type="constant", warmup_steps=0)
text_reward = lambda completions, **kw: [float(sum(map(ord, c)) % 7) for c in completions]
trainer = GRPOTrainer(model, [text_reward], args=config, train_dataset=arithmetic_dataset(16, seed=0))
metrics = trainer.training_step()
os.makedirs(out, exist_ok=True)
json.dump({"grad_norm": metrics["grad_norm"], "widths": gather_object(widths)},
          open(f"{out}/step-{trainer.accelerator.process_index}.json", "w"))
"""


@pytest.mark.slow
def test_dr_grpo_normaliser_is_the_same_whatever_each_process_completion_width(tiny_model_dir, tmp_path):
    """seq_sum_norm divides by rows x max_completion_length, a constant: a process whose
    completions are shorter (fewer columns after trimming) still gets the global gradient."""
    script = tmp_path / "one_step.py"
    script.write_text(ONE_STEP)
    run_alone_and_on_two_processes(script, tiny_model_dir, tmp_path, timeout=300)
    single, rank_0 = (json.loads((tmp_path / run / "step-0.json").read_text()) for run in ("one", "two"))
    assert len(set(rank_0["widths"])) == 2, f"the processes' completions should differ in width: {rank_0['widths']}"
    assert single["grad_norm"] > 0
    assert rank_0["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-4)
