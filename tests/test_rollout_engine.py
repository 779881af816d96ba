"""The rollout engine seam: model.generate from the policy, or from a bfloat16 copy refreshed after each update."""

import pytest
import torch

from llm_rl import GRPOConfig, GRPOTrainer
from llm_rl.data import arithmetic_dataset
from llm_rl.models.forward import completion_logprobs
from llm_rl.trainers.config import ConfigError


def _reward(prompts, completions, **kwargs):
    return [float(len(c) % 3) for c in completions]


def _trainer(model_dir, tmp_path, **options):
    config = GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_batch_size=2, num_generations=4,
                        max_completion_length=4, learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, **options)
    return GRPOTrainer(model_dir, [_reward], args=config, train_dataset=arithmetic_dataset(16, seed=1))


def test_default_engine_samples_from_the_policy_itself(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path)
    assert trainer.rollout_engine.copy is None
    # float32 training with rollout_dtype="float32" is the policy too: no copy
    assert _trainer(tiny_model_dir, tmp_path / "f32", rollout_dtype="float32").rollout_engine.copy is None


def test_bfloat16_rollouts_come_from_a_copy_refreshed_after_every_update(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, rollout_dtype="bfloat16")
    engine = trainer.rollout_engine
    assert all(p.dtype == torch.bfloat16 for p in engine.copy.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.lm.parameters())  # training stays float32

    def copy_matches_policy() -> bool:
        return all(torch.equal(c, p.detach().to(torch.bfloat16)) for c, p in zip(engine.copy.parameters(), trainer.lm.parameters()))

    trainer.training_step()  # lr 1e-2: the update moves the policy far beyond bf16 rounding
    assert engine.stale and not copy_matches_policy()
    texts = ["What is 2 + 3? Answer:", "What is 7 * 8? Answer:"]
    rollout = engine.generate(texts, [5, 6], 4)
    assert not engine.stale and copy_matches_policy()

    # its sampling log-probs are the bf16 copy's: close to the float32 policy's, not equal (the mismatch
    # that GRPO's rollout_correction corrects)
    width = rollout.completion_ids.shape[1]
    with torch.no_grad():
        policy, _, _ = completion_logprobs(trainer.lm, rollout.input_ids, rollout.attention_mask, width)
        bf16_copy, _, _ = completion_logprobs(engine.copy, rollout.input_ids, rollout.attention_mask, width)
    mask = rollout.completion_mask.bool()
    assert torch.allclose(rollout.sampling_logprobs[mask], bf16_copy[mask], atol=1e-4)
    difference = (rollout.sampling_logprobs[mask] - policy[mask]).abs()
    assert 0 < difference.max() < 0.2


def test_bfloat16_rollouts_train_with_the_rollout_correction(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, rollout_dtype="bfloat16", rollout_correction="token_truncate",
                       rollout_correction_cap=2.0)
    metrics = trainer.training_step()
    ratio = metrics["rollout_correction/mean_ratio"]
    assert ratio != 1.0 and abs(ratio - 1.0) < 0.1  # bf16 rounding, not a different policy


def test_rollout_dtype_is_checked():
    with pytest.raises(ConfigError, match="rollout_dtype"):
        GRPOConfig(rollout_dtype="float16")
