"""A run stopped after a checkpoint and resumed ends with bit-identical weights."""

import pytest
import torch

from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
from llm_rl.trainers.checkpoint import latest_checkpoint


def _reward(prompts, completions, **kwargs):
    return [float(len(c) % 3) for c in completions]


def _dataset():
    from llm_rl.data import arithmetic_dataset

    return arithmetic_dataset(32, seed=2)


CASES = {
    "grpo": (GRPOTrainer, GRPOConfig, dict(num_generations=4)),
    "ppo": (PPOTrainer, PPOConfig, dict(num_generations=2, kl_controller="adaptive", num_mini_batches=2)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_from_checkpoint_is_bit_identical(name, tiny_model_dir, tmp_path):
    trainer_class, config_class, extra = CASES[name]

    def config(out, max_steps, **more):
        return config_class(output_dir=str(out), max_steps=max_steps, save_steps=2, per_device_batch_size=2,
                            max_completion_length=4, learning_rate=1e-2, lr_scheduler_type="linear", **extra, **more)

    straight = trainer_class(tiny_model_dir, [_reward], args=config(tmp_path / "a", 4), train_dataset=_dataset())
    straight.train()

    # the interrupted run crashes in step 3, after checkpoint-2 was written
    calls = []

    def crashing_reward(prompts, completions, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return _reward(prompts, completions)

    crashing_reward.__name__ = "_reward"
    interrupted = trainer_class(tiny_model_dir, [crashing_reward], args=config(tmp_path / "b", 4), train_dataset=_dataset())
    with pytest.raises(Exception, match="simulated crash"):
        interrupted.train()
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-2"

    resumed = trainer_class(
        tiny_model_dir, [_reward], args=config(tmp_path / "b", 4, resume_from_checkpoint="latest"), train_dataset=_dataset()
    )
    resumed.train()
    assert resumed.step == 4
    for (n, p), (_, q) in zip(straight.unwrapped.named_parameters(), resumed.unwrapped.named_parameters()):
        assert torch.equal(p, q), n
    if name == "ppo":
        assert resumed.kl_controller.value == straight.kl_controller.value


KILLABLE_RUN = '''
import os, sys, time
from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
from llm_rl.data import arithmetic_dataset

calls = []

def _reward(prompts, completions, **kwargs):
    calls.append(1)
    if len(calls) == int(os.environ.get("HANG_AT_CALL", 0)):  # inside that step: say so, then wait for SIGKILL
        open(os.environ["HANG_FLAG"], "w").close()
        time.sleep(600)
    return [float(len(c) % 3) for c in completions]

name, model, output_dir, *resume = sys.argv[1:]
trainer_class, config_class, extra = {
    "grpo": (GRPOTrainer, GRPOConfig, dict(num_generations=4)),
    "ppo": (PPOTrainer, PPOConfig, dict(num_generations=2, kl_controller="adaptive", num_mini_batches=2)),
}[name]
config = config_class(output_dir=output_dir, max_steps=4, save_steps=2, per_device_batch_size=2, max_completion_length=4,
                      learning_rate=1e-2, lr_scheduler_type="linear", resume_from_checkpoint=resume[0] if resume else None,
                      **extra)
trainer_class(model, [_reward], args=config, train_dataset=arithmetic_dataset(32, seed=2)).train()
'''


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_run_killed_with_sigkill_resumes_bit_identically(name, tiny_model_dir, tmp_path):
    """SIGKILL (no handler, no cleanup) in step 3, after checkpoint-2; resumed, it ends where an unbroken run does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    script = tmp_path / "run.py"
    script.write_text(KILLABLE_RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # the same threads in every run: same float sums
    run = lambda out, *more: [sys.executable, str(script), name, tiny_model_dir, str(tmp_path / out), *more]  # noqa: E731

    unbroken = subprocess.run(run("a"), env=env, capture_output=True, text=True, timeout=300)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]

    flag = tmp_path / "in-step-3"
    victim = subprocess.Popen(run("b"), env={**env, "HANG_AT_CALL": "3", "HANG_FLAG": str(flag)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not flag.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert flag.exists(), victim.stderr.read()[-3000:] if victim.poll() is not None else "step 3 never started"
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-2"
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "b" / "final").exists()

    resumed = subprocess.run(run("b", "latest"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    files = ["model.safetensors"] + (["value_head.safetensors"] if name == "ppo" else [])
    for file in files:
        a, b = load_file(tmp_path / "a" / "final" / file), load_file(tmp_path / "b" / "final" / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    trained, initial = load_file(tmp_path / "a" / "final" / "model.safetensors"), load_file(f"{tiny_model_dir}/model.safetensors")
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)  # it trained: equal weights are no accident
