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
