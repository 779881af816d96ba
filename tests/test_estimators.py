"""The estimator and objective switches of GRPOTrainer (and PPOTrainer's critic-free one), end to end on the tiny model."""

import json
import os
from functools import partial

import pytest
import torch

from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
from llm_rl.core import (
    cispo_policy_loss,
    clipped_policy_loss,
    group_advantages,
    kl_penalized_rewards,
    masked_mean,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
)
from llm_rl.trainers.config import ConfigError
from launching import free_port


def _config(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_batch_size=2, num_generations=4,
                max_completion_length=6, learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, beta=0.0)
    base.update(overrides)
    return GRPOConfig(**base)


def _dataset():
    from llm_rl.data import arithmetic_dataset

    return arithmetic_dataset(16, seed=1)


def _text_reward(prompts, completions, **kwargs):
    """Varies with the text, so a group's rewards differ."""
    return [float(sum(map(ord, c)) % 7) for c in completions]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _spy(trainer, name):
    """Wrap the trainer's method ``name``; returns the list of (args, result) of its calls."""
    calls, method = [], getattr(trainer, name)

    def wrapper(*args, **kwargs):
        result = method(*args, **kwargs)
        calls.append((args, result))
        return result

    setattr(trainer, name, wrapper)
    return calls


def _zeros(mask):
    return torch.zeros(mask.shape)


EXPECTED = {  # estimator -> advantages (B, T) from the core functions, given rewards (B,) and the loss mask
    "grpo": lambda r, m: group_advantages(r, 4)[:, None].expand(m.shape),
    "rloo": lambda r, m: rloo_advantages(r, 4)[:, None].expand(m.shape),
    "reinforce_pp_baseline": lambda r, m: reinforce_pp_baseline_advantages(r, 4, m),
    "reinforce_pp": lambda r, m: reinforce_pp_advantages(kl_penalized_rewards(r, _zeros(m), _zeros(m), m, 0.0), m)[0],
}


@pytest.mark.parametrize("estimator", sorted(EXPECTED))
def test_each_estimator_trains_on_its_core_functions_advantages(estimator, tiny_model_dir, tmp_path):
    trainer = GRPOTrainer(tiny_model_dir, [_text_reward], args=_config(tmp_path, advantage_estimator=estimator),
                          train_dataset=_dataset())  # fmt: skip
    calls, before = _spy(trainer, "estimate_advantages"), _params(trainer.unwrapped)
    metrics = trainer.training_step()
    (rewards, mask, _, _), advantages = calls[0]
    assert advantages.shape == mask.shape and advantages.abs().sum() > 0
    torch.testing.assert_close(advantages, EXPECTED[estimator](rewards, mask))
    assert metrics["grad_norm"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in trainer.unwrapped.named_parameters())


def test_reinforce_pp_trains_with_one_completion_per_prompt_and_a_per_token_kl(tiny_model_dir, tmp_path):
    config = _config(tmp_path, advantage_estimator="reinforce_pp", num_generations=1, per_device_batch_size=4,
                     beta=0.5, kl_in="reward")  # fmt: skip
    trainer = GRPOTrainer(tiny_model_dir, [_text_reward], args=config, train_dataset=_dataset())
    with torch.no_grad():  # a policy that differs from the reference, so the KL is not 0
        for p in trainer.unwrapped.parameters():
            p.add_(0.05 * torch.randn_like(p))
    calls = _spy(trainer, "estimate_advantages")
    assert trainer.training_step()["grad_norm"] > 0
    (rewards, mask, policy_logprobs, ref_logprobs), advantages = calls[0]
    assert not torch.allclose(policy_logprobs, ref_logprobs)
    token_rewards = kl_penalized_rewards(rewards, policy_logprobs, ref_logprobs, mask, 0.5, "k1")
    torch.testing.assert_close(advantages, reinforce_pp_advantages(token_rewards, mask)[0])


def test_num_generations_one_is_refused_for_group_estimators_only(tmp_path):
    for estimator in ("grpo", "rloo", "reinforce_pp_baseline"):
        with pytest.raises(ConfigError, match="num_generations must be >= 2 for GRPO with advantage_estimator"):
            _config(tmp_path, advantage_estimator=estimator, num_generations=1)
    _config(tmp_path, advantage_estimator="reinforce_pp", num_generations=1)
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        _config(tmp_path, advantage_estimator="reinforce_pp", num_generations=1, dynamic_sampling=True)


# ---- ratio, clip and objective ----


def test_clip_range_defaults_follow_the_importance_sampling_level(tiny_model_dir, tmp_path):
    assert _config(tmp_path).clip_range == (0.2, 0.2)
    assert _config(tmp_path, epsilon_high=0.28).clip_range == (0.2, 0.28)
    assert _config(tmp_path, importance_sampling_level="sequence").clip_range == (3e-4, 4e-4)  # GSPO's
    assert _config(tmp_path, importance_sampling_level="sequence", epsilon_low=1e-3).clip_range == (1e-3, 1e-3)
    config = _config(tmp_path, importance_sampling_level="sequence", num_iterations=2)
    assert config.epsilon_low is None and config.epsilon_high is None  # resolved, never written back
    trainer = GRPOTrainer(tiny_model_dir, [_text_reward], args=config, train_dataset=_dataset())
    assert trainer.policy_loss.func is clipped_policy_loss
    assert trainer.policy_loss.keywords == dict(eps_low=3e-4, eps_high=4e-4, importance_sampling_level="sequence")
    metrics = trainer.training_step()
    assert 0 < metrics["clip_fraction"] <= 0.5  # the second iteration moved past GSPO's tiny range; the first cannot


def test_cispo_trains_and_refuses_clip_settings(tiny_model_dir, tmp_path):
    trainer = GRPOTrainer(tiny_model_dir, [_text_reward], args=_config(tmp_path, policy_loss="cispo", cispo_ratio_cap=3.0),
                          train_dataset=_dataset())  # fmt: skip
    assert trainer.policy_loss.func is cispo_policy_loss and trainer.policy_loss.keywords == {"ratio_cap": 3.0}
    assert trainer.training_step()["grad_norm"] > 0
    with pytest.raises(ConfigError, match="cispo_ratio_cap"):
        _config(tmp_path, policy_loss="cispo", epsilon_high=0.28)
    with pytest.raises(ConfigError, match="GSPO"):
        _config(tmp_path, policy_loss="cispo", importance_sampling_level="sequence")


def test_entropy_bonus_alone_raises_the_entropy(tiny_model_dir, tmp_path):
    """Equal rewards give no policy gradient (and beta = 0 no KL): the only gradient is the bonus's."""
    from llm_rl.models.forward import completion_logprobs

    constant = lambda prompts, completions, **kw: [1.0] * len(completions)  # noqa: E731
    config = _config(tmp_path, entropy_coef=1.0, learning_rate=1e-3)
    trainer = GRPOTrainer(tiny_model_dir, [constant], args=config, train_dataset=_dataset())
    rollouts = _spy(trainer, "reference_logprobs")

    def entropy():
        rollout = rollouts[0][0][0]
        with torch.no_grad():
            _, h, _ = completion_logprobs(trainer.lm, rollout.input_ids, rollout.attention_mask,
                                          rollout.completion_ids.shape[1], with_entropy=True)  # fmt: skip
        return masked_mean(h, rollout.completion_mask).item()

    assert trainer.training_step()["grad_norm"] > 0
    after = entropy()
    trainer.unwrapped.load_state_dict(GRPOTrainer(tiny_model_dir, [constant], args=_config(tmp_path / "b"),
                                                  train_dataset=_dataset()).unwrapped.state_dict())  # fmt: skip
    assert after > entropy()


# ---- rollout-training mismatch ----


def test_sampling_logprobs_are_those_of_the_truncated_tempered_distribution(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from llm_rl.rollout import generate_rollout
    from llm_rl.rollout.sampler import _top_k_top_p

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    texts = ["What is 3 + 4? Answer:", "What is 12 - 5? Answer:"]
    rollout = generate_rollout(model, tiny_tokenizer, texts, [1, 2], 4, 6, temperature=0.7, top_p=0.8, top_k=5)
    width, mask = rollout.completion_ids.shape[1], rollout.completion_mask.bool()
    with torch.no_grad():
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                       position_ids=(rollout.attention_mask.cumsum(-1) - 1).clamp_min(0)).logits  # fmt: skip
    logits = logits[:, -width - 1 : -1].float() / 0.7  # (B, C, V)
    truncated = _top_k_top_p(logits.flatten(0, 1), 5, 0.8).view_as(logits).log_softmax(-1)
    full = logits.log_softmax(-1)
    tokens = rollout.completion_ids[..., None]
    torch.testing.assert_close(rollout.sampling_logprobs[mask], truncated.gather(-1, tokens).squeeze(-1)[mask],
                               atol=1e-4, rtol=0)  # fmt: skip
    # truncation renormalises: each sampled token is likelier under it than under the policy
    assert (full.gather(-1, tokens).squeeze(-1)[mask] < rollout.sampling_logprobs[mask] - 1e-6).all()


def test_rollout_correction_weights_reach_the_update(tiny_model_dir, tmp_path):
    """top_k truncation makes the trainer's ratio to the sampler < 1 on every token."""
    trainer = GRPOTrainer(tiny_model_dir, [_text_reward], train_dataset=_dataset(),
                          args=_config(tmp_path, top_k=5, rollout_correction="token_truncate"))  # fmt: skip
    metrics = trainer.training_step()
    assert 0 < metrics["rollout_correction/mean_ratio"] < 1
    assert metrics["rollout_correction/truncated_fraction"] == 0.0 and metrics["grad_norm"] > 0
    # cap 1: only sequences whose ratio is exactly 1 pass, so every one is masked and nothing trains
    trainer = GRPOTrainer(tiny_model_dir, [_text_reward], train_dataset=_dataset(),
                          args=_config(tmp_path / "b", top_k=5, rollout_correction="sequence_mask", rollout_correction_cap=1.0))  # fmt: skip
    metrics = trainer.training_step()
    assert metrics["rollout_correction/masked_fraction"] == 1.0 and metrics["grad_norm"] == 0.0
    with pytest.raises(ConfigError, match="rollout_correction_cap must be >= 1"):
        _config(tmp_path, rollout_correction="token_truncate", rollout_correction_cap=0.5)


# ---- PPO without a critic ----


def _ppo_config(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_batch_size=2, num_generations=2,
                max_completion_length=4, learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0,
                advantage_estimator="reinforce_pp")  # fmt: skip
    base.update(overrides)
    return PPOConfig(**base)


def test_ppo_reinforce_pp_drops_the_critic(tiny_model_dir, tmp_path):
    trainer = PPOTrainer(tiny_model_dir, [_text_reward], args=_ppo_config(tmp_path), train_dataset=_dataset())
    head = trainer.unwrapped.value_head
    assert not any(p.requires_grad for p in head.parameters())
    assert all(p is not q for p in head.parameters() for g in trainer.optimizer.param_groups for q in g["params"])
    calls, before = _spy(trainer, "estimate_advantages"), _params(trainer.lm)
    trainer.train()
    (rewards, _, mask), (advantages, returns) = calls[0]
    expected, expected_returns = reinforce_pp_advantages(rewards, mask)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected_returns)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.lm.named_parameters())
    row = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "value_loss" not in row and "explained_variance" not in row and "policy_loss" in row
    with pytest.raises(ValueError, match="trains no critic"):
        PPOTrainer(tiny_model_dir, [_text_reward], args=_ppo_config(tmp_path / "b"), train_dataset=_dataset(),
                   value_model=tiny_model_dir)  # fmt: skip


# ---- REINFORCE++ whitening over processes ----


class _GlooSum:
    """What ``BaseRLTrainer.global_mean_var`` needs of a trainer: a sum over every process."""

    def global_sum(self, values):
        import torch.distributed as dist

        total = values.detach().float().clone()
        dist.all_reduce(total)
        return total


def _batch():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(8, generator=g)
    mask = (torch.arange(6)[None, :] < torch.tensor([6, 2, 1, 4, 5, 0, 6, 1])[:, None]).long()
    return rewards, mask, torch.randn(8, 6, generator=g)


def _whiten_on_rank(rank, world, port, out):
    import torch.distributed as dist

    from llm_rl.trainers.base import BaseRLTrainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rewards, mask, token_rewards = _batch()
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)  # this process's groups (G = 2)
    mean_var = partial(BaseRLTrainer.global_mean_var, _GlooSum())
    baseline = reinforce_pp_baseline_advantages(rewards[rows], 2, mask[rows], mean_var=mean_var)
    no_baseline = reinforce_pp_advantages(token_rewards[rows], mask[rows], mean_var=mean_var)[0]
    with open(os.path.join(out, f"{world}-{rank}.json"), "w") as f:
        json.dump({"baseline": baseline.tolist(), "no_baseline": no_baseline.tolist()}, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_reinforce_pp_whitening_is_the_same_over_one_and_two_processes(tmp_path):
    import torch.multiprocessing as mp

    results = {}
    for world in (1, 2):
        mp.spawn(_whiten_on_rank, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
        parts = [json.loads((tmp_path / f"{world}-{rank}.json").read_text()) for rank in range(world)]
        results[world] = {k: torch.cat([torch.tensor(p[k]) for p in parts]) for k in ("baseline", "no_baseline")}
    rewards, mask, _ = _batch()
    torch.testing.assert_close(results[1]["baseline"], reinforce_pp_baseline_advantages(rewards, 2, mask))
    for key in ("baseline", "no_baseline"):
        torch.testing.assert_close(results[2][key], results[1][key], rtol=1e-6, atol=1e-6)
