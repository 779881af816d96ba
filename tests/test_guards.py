"""Numerical guards: a NaN/inf step is skipped and counted, gradients are clipped,
equal-reward groups give zero advantage, and completions that are only EOS train fine."""

import json
import math

import pytest
import torch

from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
from llm_rl.core import group_advantages, masked_whiten
from llm_rl.trainers import grpo_trainer


def _dataset():
    from llm_rl.data import arithmetic_dataset

    return arithmetic_dataset(16, seed=1)


def _length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]  # unequal inside a group: non-zero advantages


def _trainer(tmp_path, model, trainer_class=GRPOTrainer, config_class=GRPOConfig, reward=_length_reward, **overrides):
    config = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_batch_size=2, num_generations=4,
                  max_completion_length=4, learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0)
    return trainer_class(model, [reward], args=config_class(**{**config, **overrides}), train_dataset=_dataset())


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _unchanged(model, before) -> bool:
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# --- a NaN/inf step is skipped, not applied, and counted ------------------------------------------


def _nan_loss(monkeypatch):
    real = grpo_trainer.clipped_policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(grpo_trainer, "clipped_policy_loss", nan_loss)


def _inf_gradient(trainer):
    # one parameter's gradient becomes inf; a NaN/inf anywhere makes the global norm non-finite
    return trainer.unwrapped.lm_head.weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))


@pytest.mark.parametrize("fault", ["nan_loss", "inf_gradient"])
def test_a_non_finite_step_is_skipped_and_counted(fault, tiny_model_dir, tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, tiny_model_dir, beta=0.0)
    before, lr_step = _params(trainer.unwrapped), trainer.scheduler.last_epoch
    hook = _inf_gradient(trainer) if fault == "inf_gradient" else _nan_loss(monkeypatch)

    metrics = trainer.training_step()
    assert not math.isfinite(metrics["grad_norm"])
    assert trainer.skipped_steps == 1
    assert _unchanged(trainer.unwrapped, before)  # not applied
    assert not trainer.optimizer.optimizer.state  # AdamW's moments never saw the bad gradient
    assert trainer.scheduler.last_epoch == lr_step  # the schedule did not advance either
    assert all(p.grad is None for p in trainer.unwrapped.parameters())  # nothing leaks into the next step

    # the next, healthy step is applied as usual
    hook.remove() if hook is not None else monkeypatch.undo()
    metrics = trainer.training_step()
    assert math.isfinite(metrics["grad_norm"]) and trainer.skipped_steps == 1
    assert not _unchanged(trainer.unwrapped, before)


def test_skipped_steps_reach_metrics_jsonl(tiny_model_dir, tmp_path):
    trainer = _trainer(tmp_path, tiny_model_dir, beta=0.0, max_steps=2)
    real_step = trainer.training_step
    calls = []

    def first_step_poisoned():
        calls.append(1)
        hook = _inf_gradient(trainer) if len(calls) == 1 else None
        try:
            return real_step()
        finally:
            if hook is not None:
                hook.remove()

    trainer.training_step = first_step_poisoned
    summary = trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows if "skipped_steps" in r] == [1, 1]
    assert summary["skipped_steps"] == 1


# --- gradient clipping -----------------------------------------------------------------------------


def _norm_at_optimizer_step(trainer) -> list[float]:
    """Records the global gradient norm the optimizer actually steps with."""
    seen, real = [], trainer.optimizer.step

    def step(*args, **kwargs):
        grads = [p.grad for p in trainer.unwrapped.parameters() if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return real(*args, **kwargs)

    trainer.optimizer.step = step
    return seen


@pytest.mark.parametrize("max_grad_norm", [1e-3, 0.0])
def test_gradients_are_clipped_to_max_grad_norm(max_grad_norm, tiny_model_dir, tmp_path):
    trainer = _trainer(tmp_path, tiny_model_dir, beta=0.0, max_grad_norm=max_grad_norm)
    applied = _norm_at_optimizer_step(trainer)
    reported = trainer.training_step()["grad_norm"]  # the norm before clipping
    assert reported > 1e-3  # so a limit of 1e-3 really has to clip
    expected = max_grad_norm if max_grad_norm > 0 else reported  # 0 turns clipping off
    assert applied == [pytest.approx(expected, rel=1e-4)]


# --- equal rewards, empty completions ------------------------------------------------------------


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_equal_rewards_give_zero_advantage_without_nan(scale):
    advantages = group_advantages(torch.tensor([2.0, 2.0, 2.0, 2.0, 5.0, 5.0]), group_size=2, scale=scale)
    assert torch.equal(advantages, torch.zeros(6))  # std 0 everywhere: nothing divided by zero


def test_equal_advantages_whiten_to_zero_not_nan():
    # PPO whitens advantages over the batch; a constant batch has variance 0
    whitened = masked_whiten(torch.full((2, 3), 0.7), torch.ones(2, 3))
    assert torch.isfinite(whitened).all() and torch.allclose(whitened, torch.zeros(2, 3), atol=1e-3)


def _always_eos(model_dir):
    """The tiny model, with its EOS logit raised by 50: every completion is EOS first, i.e. empty text."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    eos = model.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else eos[:1])
    # a frozen bias on the head (a hook on its output would not see the fused log-prob path's chunks)
    bias = torch.zeros(model.lm_head.out_features).index_fill(0, eos, 50.0)
    model.lm_head.bias = torch.nn.Parameter(bias, requires_grad=False)
    return model


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_completions_that_are_only_eos_train_without_error(algorithm, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    seen = []

    def alternating(prompts, completions, **kwargs):
        seen.extend(completions)
        return [float(i % 2) for i in range(len(completions))]

    classes = (GRPOTrainer, GRPOConfig) if algorithm == "grpo" else (PPOTrainer, PPOConfig)
    model = _always_eos(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_batch_size=2, num_generations=2,
                  max_completion_length=4, lr_scheduler_type="constant", warmup_steps=0)
    trainer = classes[0](model, [alternating], args=classes[1](**config), train_dataset=_dataset(), processing_class=tokenizer)
    metrics = trainer.training_step()
    assert seen == [""] * 4  # reward functions see the empty text
    assert metrics["completion_length"] == 1.0  # the EOS token itself is the one action in the loss
    assert metrics["truncated_fraction"] == 0.0
    assert all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm", "entropy"))
    assert trainer.skipped_steps == 0
