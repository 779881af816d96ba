import json

import pytest
import torch

from llm_rl import GRPOConfig, GRPOTrainer
from reward_models import RewardError, math_correctness


def _config(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_batch_size=2,
        num_generations=4,
        max_completion_length=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        warmup_steps=0,  # the default warm-up would make a one-step run's learning rate 0
        logging_steps=1,
    )
    base.update(overrides)
    return GRPOConfig(**base)


def _dataset():
    from llm_rl.data import arithmetic_dataset

    return arithmetic_dataset(16, seed=1)


def _length_reward(prompts, completions, **kwargs):
    """Different rewards inside a group, so advantages are non-zero."""
    return [float(len(c)) for c in completions]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_one_step_changes_policy_not_reference(tiny_model_dir, tmp_path):
    trainer = GRPOTrainer(tiny_model_dir, [_length_reward], args=_config(tmp_path), train_dataset=_dataset())
    policy_before, reference_before = _params(trainer.unwrapped), _params(trainer.reference)
    trainer.train()
    changed = [n for n, p in trainer.unwrapped.named_parameters() if not torch.equal(p, policy_before[n])]
    assert changed, "the policy did not move"
    assert all(torch.equal(p, reference_before[n]) for n, p in trainer.reference.named_parameters())
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    for key in ("reward_mean", "reward_std", "kl", "clip_fraction", "loss", "entropy", "completion_length",
                "step_seconds", "tokens_per_second", "peak_memory_mb", "reward/_length_reward"):
        assert key in rows[-1], key
    assert rows[0]["num_processes"] == 1
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()


def test_beta_zero_loads_no_reference(tiny_model_dir, tmp_path):
    trainer = GRPOTrainer(tiny_model_dir, [_length_reward], args=_config(tmp_path, beta=0.0), train_dataset=_dataset())
    assert trainer.reference is None
    trainer.train()


def test_all_equal_rewards_give_no_policy_gradient(tiny_model_dir, tmp_path):
    constant = lambda prompts, completions, **kw: [1.0] * len(completions)  # noqa: E731
    trainer = GRPOTrainer(
        tiny_model_dir, [constant], args=_config(tmp_path, beta=0.0, max_grad_norm=0.0), train_dataset=_dataset()
    )
    before = _params(trainer.unwrapped)
    metrics = trainer.training_step()
    assert metrics["grad_norm"] == 0.0
    assert all(torch.equal(p, before[n]) for n, p in trainer.unwrapped.named_parameters())


def test_lora_trains_only_the_adapter_and_reference_is_the_base(tiny_model_dir, tmp_path):
    config = _config(tmp_path, use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules="q_proj,v_proj")
    trainer = GRPOTrainer(tiny_model_dir, [_length_reward], args=config, train_dataset=_dataset())
    assert trainer.reference is None  # the adapter-disabled base serves as reference
    before = _params(trainer.unwrapped)
    trainer.train()
    changed = {n for n, p in trainer.unwrapped.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert all(("lora_" in n) == p.requires_grad for n, p in trainer.unwrapped.named_parameters())
    assert (tmp_path / "out" / "final" / "adapter_model.safetensors").exists()


def test_chat_dataset_gives_reward_functions_message_lists(tiny_model_dir, tmp_path):
    from datasets import Dataset

    seen = []

    def spy(prompts, completions, answer, **kw):
        seen.append((prompts[0], completions[0], answer[0]))
        return [0.0 if i % 2 else 1.0 for i in range(len(completions))]

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "answer": str(i + 1)} for i in range(4)])
    GRPOTrainer(tiny_model_dir, [spy], args=_config(tmp_path), train_dataset=data).train()
    prompt, completion, answer = seen[0]
    assert prompt[0]["role"] == "user"
    assert isinstance(completion, list) and completion[0]["role"] == "assistant"
    assert isinstance(completion[0]["content"], str)


def test_a_failing_reward_names_itself(tiny_model_dir, tmp_path):
    def broken_reward(prompts, completions, **kw):
        raise KeyError("oops")

    trainer = GRPOTrainer(tiny_model_dir, [broken_reward], args=_config(tmp_path), train_dataset=_dataset())
    with pytest.raises(RewardError, match="broken_reward"):
        trainer.train()


def test_num_generations_below_two_is_refused(tmp_path):
    with pytest.raises(ValueError, match="num_generations"):
        GRPOConfig(output_dir=str(tmp_path), num_generations=1)


def test_math_reward_and_kl_in_reward_run(tiny_model_dir, tmp_path):
    """Two iterations of two accumulated micro-batches (seq_mean) with the KL in the reward, sampled with top-k:
    the first iteration's ratio is exactly 1 and nothing is clipped, the second moves; the reward is lowered by
    beta x the sequence's k1 KL, computed from the policy's forward (not the sampler's truncated log-probs)."""
    config = _config(tmp_path, kl_in="reward", num_iterations=2, gradient_accumulation_steps=2, loss_aggregation="seq_mean",
                     top_k=5, max_completion_length=6)  # fmt: skip
    trainer = GRPOTrainer(tiny_model_dir, [math_correctness], args=config, train_dataset=_dataset())
    with torch.no_grad():  # a policy away from the reference, so the KL shaping is not 0
        for p in trainer.unwrapped.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rollouts, shaped, micro_batches = [], [], []
    for name, calls in (("reference_logprobs", rollouts), ("kl_shaped_rewards", shaped), ("_accumulate", micro_batches)):
        method = getattr(trainer, name)

        def spy(*args, _method=method, _calls=calls):
            result = _method(*args)
            _calls.append((args, {k: v[-1].item() for k, v in result.items()} if isinstance(result, dict) else result))
            return result

        setattr(trainer, name, spy)
    metrics = trainer.training_step()
    assert metrics["grad_norm"] > 0 and trainer.skipped_steps == 0

    iteration_0, iteration_1 = [stats for _, stats in micro_batches[:2]], [stats for _, stats in micro_batches[2:]]
    assert len(micro_batches) == 4
    assert all(s["ratio_mean"] == 1.0 and s["clip_fraction"] == 0.0 and s["approx_kl"] == 0.0 for s in iteration_0)
    assert all(s["ratio_mean"] != 1.0 and s["approx_kl"] > 1e-6 for s in iteration_1)

    ((rollout,), _), = rollouts
    (rewards, mask, policy_logprobs, ref_logprobs), shaped_rewards = shaped[0]
    valid = mask.bool()
    old_logprobs = micro_batches[0][0][5]  # filled by the first iteration's training forwards
    torch.testing.assert_close(policy_logprobs[valid], old_logprobs[valid], rtol=0, atol=1e-5)  # the policy's
    assert (rollout.sampling_logprobs[valid] > policy_logprobs[valid] + 1e-6).all()  # top-k renormalised: not the sampler's
    sequence_kl = ((policy_logprobs - ref_logprobs) * mask).sum(-1)  # (B,) k1 summed over the completion
    torch.testing.assert_close(shaped_rewards, rewards - config.beta * sequence_kl)
    assert (sequence_kl != 0).all() and ((shaped_rewards < rewards) == (sequence_kl > 0)).all()


def test_output_dir_holding_a_run_is_refused(tiny_model_dir, tmp_path):
    GRPOTrainer(tiny_model_dir, [_length_reward], args=_config(tmp_path), train_dataset=_dataset()).train()
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        GRPOTrainer(tiny_model_dir, [_length_reward], args=_config(tmp_path), train_dataset=_dataset())


def test_report_to_tensorboard_writes_event_files(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    GRPOTrainer(tiny_model_dir, [_length_reward], args=_config(tmp_path, report_to="tensorboard"), train_dataset=_dataset()).train()
    events = list((tmp_path / "out").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_masking_truncated_completions_removes_them_from_the_loss(tiny_model_dir, tmp_path):
    # one-token completions of a random model almost never end in EOS: every row is truncated
    config = _config(tmp_path, max_completion_length=1, min_completion_length=1, mask_truncated_completions=True, beta=0.0)
    trainer = GRPOTrainer(tiny_model_dir, [_length_reward], args=config, train_dataset=_dataset())
    metrics = trainer.training_step()
    assert metrics["truncated_fraction"] == 1.0
    assert metrics["grad_norm"] == 0.0
    unmasked = GRPOTrainer(
        tiny_model_dir, [_length_reward], args=_config(tmp_path / "b", max_completion_length=1, min_completion_length=1, beta=0.0),
        train_dataset=_dataset(),
    )
    assert unmasked.training_step()["grad_norm"] > 0.0


def _text_reward(prompts, completions, **kwargs):
    """Varies with the text, so completions of one length still get different rewards."""
    return [float(sum(map(ord, c)) % 7) for c in completions]


def _first_step_gradients(tiny_model_dir, tmp_path, **overrides):
    config = _config(tmp_path, max_completion_length=8, beta=0.04, max_grad_norm=0.0, **overrides)
    trainer = GRPOTrainer(tiny_model_dir, [_text_reward], args=config, train_dataset=_dataset())
    grads, update = {}, trainer.optimizer_update

    def record_then_update():
        grads.update({n: p.grad.clone() for n, p in trainer.unwrapped.named_parameters() if p.grad is not None})
        return update()

    trainer.optimizer_update = record_then_update
    trainer.training_step()
    return grads


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "seq_sum_norm"])
def test_micro_batches_give_the_whole_batch_gradient(aggregation, tiny_model_dir, tmp_path):
    """Two micro-batches (two groups each, each trimmed to its own longest completion: 3 and 4
    columns here) accumulate the gradient of the whole batch, for every loss aggregation."""
    whole = _first_step_gradients(tiny_model_dir, tmp_path / "one", loss_aggregation=aggregation, per_device_batch_size=4)
    split = _first_step_gradients(tiny_model_dir, tmp_path / "two", loss_aggregation=aggregation, per_device_batch_size=2,
                                  gradient_accumulation_steps=2)  # fmt: skip
    assert whole.keys() == split.keys() and whole
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-7, msg=name)
