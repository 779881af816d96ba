import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_rl import PPOConfig, PPOTrainer
from llm_rl.core import masked_mean
from llm_rl.models.value_head import PolicyWithValue


def _config(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_batch_size=2, num_generations=2,
                max_completion_length=4, learning_rate=1e-2, num_ppo_epochs=2, num_mini_batches=2,
                lr_scheduler_type="constant", warmup_steps=0)  # warm-up starts at lr 0: the first update would not move
    base.update(overrides)
    return PPOConfig(**base)


def _dataset():
    from llm_rl.data import arithmetic_dataset

    return arithmetic_dataset(16, seed=1)


def _length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def test_value_head_shape_and_padding_independence(tiny_model_dir, tiny_tokenizer):
    model = PolicyWithValue(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    torch.nn.init.normal_(model.value_head.weight)  # a non-zero head, so the check can fail
    ids = tiny_tokenizer(["What is 1 + 2? Answer: 3", "What is 10 * 9? Answer: 90"], return_tensors="pt", padding=True)
    logprobs, entropy, values = model(ids["input_ids"], ids["attention_mask"], completion_length=2)
    assert values.shape == logprobs.shape == entropy.shape == (2, 2)
    single = tiny_tokenizer(["What is 1 + 2? Answer: 3"], return_tensors="pt")
    _, _, alone = model(single["input_ids"], single["attention_mask"], completion_length=2)
    assert torch.allclose(values[0], alone[0], atol=1e-5)  # left padding does not change the values


def test_one_ppo_step_moves_policy_and_value_head_and_saves_both(tiny_model_dir, tmp_path):
    trainer = PPOTrainer(tiny_model_dir, [_length_reward], args=_config(tmp_path), train_dataset=_dataset())
    policy_before = {n: p.clone() for n, p in trainer.lm.named_parameters()}
    head_before = trainer.unwrapped.value_head.weight.clone()
    reference_before = {n: p.clone() for n, p in trainer.reference.named_parameters()}
    trainer.train()
    assert any(not torch.equal(p, policy_before[n]) for n, p in trainer.lm.named_parameters())
    assert not torch.equal(trainer.unwrapped.value_head.weight, head_before)
    assert all(torch.equal(p, reference_before[n]) for n, p in trainer.reference.named_parameters())
    final = tmp_path / "out" / "final"
    reloaded = AutoModelForCausalLM.from_pretrained(final)  # the LM part alone
    assert torch.equal(reloaded.lm_head.weight, trainer.lm.lm_head.weight)
    head = PolicyWithValue(reloaded)
    head.load_value_head(final)
    assert torch.equal(head.value_head.weight, trainer.unwrapped.value_head.weight)
    row = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("value_loss", "explained_variance", "kl_coef", "returns_mean", "clip_fraction", "reward_mean"):
        assert key in row, key


def test_adaptive_controller_raises_kl_coef_when_kl_stays_above_target(tiny_model_dir, tmp_path):
    config = _config(tmp_path, max_steps=4, kl_controller="adaptive", target_kl=1e-6, horizon=10.0, kl_estimator="k3")
    trainer = PPOTrainer(tiny_model_dir, [_length_reward], args=config, train_dataset=_dataset())
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    coefs = [r["kl_coef"] for r in rows if "kl_coef" in r]
    kls = [r["kl"] for r in rows if "kl_coef" in r]
    assert coefs[0] == pytest.approx(0.05)
    # step 1 samples from the reference itself (KL 0 < target: the coefficient shrinks once);
    # from then on KL stays above the tiny target and every update raises it by 1 + 0.2 * 4 / 10
    assert all(kl > 1e-6 for kl in kls[1:])
    assert all(b == pytest.approx(a * 1.08, rel=1e-4) for a, b in zip(coefs[1:], coefs[2:]))  # logs keep 6 decimals
    assert trainer.kl_controller.value > coefs[-1]


def _first_update(trainer):
    """Run one step; return the first update's gradients (before any clipping), its rows and the rollout."""
    grads, seen, update, forward = {}, [], trainer.optimizer_update, trainer._forward

    def record_then_update():
        if not grads:
            grads.update({n: p.grad.clone() for n, p in trainer.unwrapped.named_parameters() if p.grad is not None})
        return update()

    def record_forward(rollout, rows):
        seen.append((rollout, rows))
        return forward(rollout, rows)

    trainer.optimizer_update, trainer._forward = record_then_update, record_forward
    summary = trainer.train()
    assert summary["steps"] == 1 and summary["skipped_steps"] == 0
    return grads, *seen[0]


def test_ppo_penalty_entropy_bonus_gradient_and_adaptive_coefficient(tiny_model_dir, tmp_path):
    """Unclipped PPO-penalty: the entropy bonus adds exactly -entropy_coef x grad(mean entropy) to the update
    (so a step raises the entropy), and the adaptive KL coefficient moves by Ziegler et al.'s rule."""
    runs = {}
    for coef in (0.0, 0.5):
        config = _config(tmp_path / f"coef-{coef}", cliprange=None, kl_controller="adaptive", entropy_coef=coef, max_grad_norm=0.0)
        trainer = PPOTrainer(tiny_model_dir, [_length_reward], args=config, train_dataset=_dataset())
        runs[coef] = (*_first_update(trainer), trainer)
    (without, rollout, rows, _), (with_bonus, _, rows_b, trainer) = runs[0.0], runs[0.5]
    assert torch.equal(rows, rows_b)  # the same first mini-batch of the same rollout

    fresh = PPOTrainer(tiny_model_dir, [_length_reward], train_dataset=_dataset(),
                       args=_config(tmp_path / "fresh", entropy_coef=0.5))  # fmt: skip
    _, entropy, _ = fresh._forward(rollout, rows)
    masked_mean(entropy, rollout.completion_mask[rows, : entropy.shape[1]]).backward()
    entropy_grad = {n: p.grad for n, p in fresh.unwrapped.named_parameters() if p.grad is not None}
    assert entropy_grad and all(n.startswith("policy.") for n in entropy_grad)
    for name, grad in entropy_grad.items():  # d(loss)/d(theta) gains -coef x d(entropy)/d(theta): a descent step raises it
        torch.testing.assert_close(with_bonus[name] - without[name], -0.5 * grad, rtol=1e-3, atol=1e-6, msg=name)
    assert sum(g.abs().sum() for g in entropy_grad.values()) > 0

    # step 1 samples from the reference itself: KL 0, below target_kl = 6, so the coefficient shrinks by
    # 1 + clip(0 / 6 - 1, -0.2, 0.2) x (4 completions) / horizon
    assert trainer.kl_controller.value == pytest.approx(0.05 * (1 - 0.2 * 4 / 10000.0), rel=1e-12)
    assert trainer.kl_controller.value != 0.05


def test_separate_critic_and_one_completion_per_prompt(tiny_model_dir, tmp_path):
    config = _config(tmp_path, num_generations=1, num_mini_batches=1, missing_eos_penalty=1.0)
    trainer = PPOTrainer(tiny_model_dir, [_length_reward], args=config, train_dataset=_dataset(), value_model=tiny_model_dir)
    critic_before = {n: p.clone() for n, p in trainer.unwrapped.critic.named_parameters()}
    trainer.train()
    assert any(not torch.equal(p, critic_before[n]) for n, p in trainer.unwrapped.critic.named_parameters())
    assert (tmp_path / "out" / "final" / "critic" / "config.json").exists()


def test_lora_ppo_trains_adapter_and_value_head_only(tiny_model_dir, tmp_path):
    config = _config(tmp_path, use_peft=True, lora_r=4, lora_target_modules="q_proj,v_proj")
    trainer = PPOTrainer(tiny_model_dir, [_length_reward], args=config, train_dataset=_dataset())
    assert trainer.reference is None
    trainable = {n for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head") for n in trainable)
    trainer.train()


class _SeparateOldPass(PPOTrainer):
    fuses_first_pass = False  # always the no-grad rollout-policy pass, as with several mini-batches


@pytest.mark.parametrize("value_model", [None, "critic"])
def test_first_update_forward_doubles_as_the_rollout_policy_pass(tiny_model_dir, tmp_path, value_model):
    """One mini-batch: reusing the first update's forward for old log-probs/values changes no number."""
    runs = {}
    for trainer_class in (PPOTrainer, _SeparateOldPass):
        config = _config(tmp_path / trainer_class.__name__, max_steps=2, num_mini_batches=1, num_ppo_epochs=2)
        critic = tiny_model_dir if value_model else None
        trainer = trainer_class(tiny_model_dir, [_length_reward], args=config, train_dataset=_dataset(), value_model=critic)
        assert trainer.fuses_first_pass == (trainer_class is PPOTrainer)
        trainer.train()
        runs[trainer_class] = ({n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()},
                               (tmp_path / trainer_class.__name__ / "out" / "metrics.jsonl").read_text())
    (fused, fused_log), (separate, separate_log) = runs[PPOTrainer], runs[_SeparateOldPass]
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(fused[f"policy.{n}"], v) for n, v in initial.items() if f"policy.{n}" in fused)
    for name in fused:  # rounding differs (row order, padded widths); Adam turns it into ~1e-5 at lr 1e-2
        assert torch.allclose(fused[name], separate[name], atol=5e-5), name
    for a, b in zip(fused_log.splitlines(), separate_log.splitlines()):
        a, b = json.loads(a), json.loads(b)
        for key in ("reward_mean", "kl", "value_loss", "approx_kl", "returns_mean"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), key
