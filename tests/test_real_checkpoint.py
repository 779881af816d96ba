"""The trainers on a checkpoint with a real one's conditions (see realistic_checkpoint.py).

bf16 weights on disk, an untied head, a 20k-token vocabulary, two EOS ids with pad == one
of them, a generation_config.json with sampling settings and a repetition penalty, and a
chat template with a default system prompt: each test here failed on the code before the
fix it names (issue 13).
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
from llm_rl.models.forward import completion_logprobs
from llm_rl.rollout import generate_rollout
from test_options import gradients_of_first_update
from launching import ENV, accelerate_launch


ROOT = Path(__file__).resolve().parents[1]


def _chat_prompts(n: int = 8) -> Dataset:
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i + 1}?"}], "answer": str(2 * i + 1)} for i in range(n)]
    return Dataset.from_list(rows)


def _reward(prompts, completions, **kwargs):
    """Differs inside a group, so there is a gradient; chat completions are message lists."""
    return [float(len(c[0]["content"]) % 3) for c in completions]


def _config(config_class, tmp_path, **options):
    extra = dict(num_generations=4) if config_class is GRPOConfig else dict(num_generations=2)
    values = dict(output_dir=str(tmp_path), max_steps=1, per_device_batch_size=2, max_completion_length=6,
                  learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, **extra)
    values.update(options)
    return config_class(**values)


# ------------------------------------------------------------------ item 2: sample from the policy that is scored
def test_sampling_logprobs_equal_a_forward_despite_the_checkpoints_generation_config(qwen_like_dir):
    """generation_config.json's repetition penalty (2.0 here) must not reach the sampler: generate fills
    every field left unset from model.generation_config, so rollouts came from another distribution."""
    from transformers import AutoModelForCausalLM

    from llm_rl.models.loading import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(qwen_like_dir, dtype=torch.float32)
    assert model.generation_config.repetition_penalty == 2.0
    tokenizer = load_tokenizer(qwen_like_dir)
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in _chat_prompts(3)["prompt"]]
    temperature = 0.7
    rollout = generate_rollout(model, tokenizer, texts, seeds=[1, 2, 3], num_generations=4, max_completion_length=12,
                               temperature=temperature)
    width = rollout.completion_ids.shape[1]
    assert width > 3  # long enough for tokens to repeat
    logprobs, _, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, width, temperature)
    mask = rollout.completion_mask.bool()
    assert torch.allclose(logprobs[mask], rollout.sampling_logprobs[mask], atol=1e-4)
    assert model.generation_config.repetition_penalty == 2.0  # the model's own config is left as it was


def test_either_eos_id_ends_a_completion_with_pad_equal_to_one_of_them(qwen_like_dir):
    from transformers import AutoModelForCausalLM

    from llm_rl.models.loading import load_tokenizer
    from llm_rl.rollout import completion_mask_from_ids, eos_token_ids

    model = AutoModelForCausalLM.from_pretrained(qwen_like_dir)
    tokenizer = load_tokenizer(qwen_like_dir)
    im_end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    eos = eos_token_ids(model, tokenizer)
    assert sorted(eos) == sorted([im_end, pad]) and tokenizer.eos_token_id == im_end
    ids = torch.tensor([[50, im_end, 70, 80], [pad, 30, 30, 30], [10, 11, 12, 13]])
    mask, truncated = completion_mask_from_ids(ids, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]


# ------------------------------------------------------------------ item 3: trainable weights in float32
@pytest.mark.parametrize("trainer_class, config_class", [(GRPOTrainer, GRPOConfig), (PPOTrainer, PPOConfig)])
def test_a_bf16_checkpoint_trains_float32_master_weights(trainer_class, config_class, qwen_like_dir, tmp_path):
    """One AdamW step at lr 1e-6 moves each weight with a gradient by ~lr, below bf16's resolution
    (a 0.02-sized weight has bf16 steps of ~1e-4): trained in pure bf16, nothing moved at all."""
    lr = 1e-6
    trainer = trainer_class(qwen_like_dir, [_reward], args=_config(config_class, tmp_path, learning_rate=lr, max_grad_norm=0.0),
                            train_dataset=_chat_prompts())
    assert all(p.dtype == torch.float32 for p in trainer.unwrapped.parameters())
    if trainer.reference is not None:  # the frozen reference at the same precision: a KL of 0 at the start
        assert all(p.dtype == torch.float32 for p in trainer.reference.parameters())
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
    grads = gradients_of_first_update(trainer)
    eps = trainer.optimizer.param_groups[0]["eps"]
    moved = 0
    for name, param in trainer.unwrapped.named_parameters():
        grad = grads.get(name)
        if grad is None:
            continue
        expected = -lr * grad / (grad.abs() + eps)  # AdamW's first, bias-corrected step: m/sqrt(v) = g/|g|
        delta = param.detach() - before[name]
        big = grad.abs() > 100 * eps  # where eps does not shape the step
        float32_step = torch.finfo(torch.float32).eps * before[name].abs()  # rounding of w + delta in float32
        error = (delta - expected).abs()
        assert (error[big] <= 1e-2 * expected[big].abs() + float32_step[big]).all(), name
        moved += int(big.sum())
    assert moved > 1000


# ------------------------------------------------------------------ item 5: LoRA's reference at the policy's precision
@pytest.mark.parametrize("trainer_class, config_class", [(GRPOTrainer, GRPOConfig), (PPOTrainer, PPOConfig)])
def test_lora_reference_runs_at_the_policys_precision_under_bf16(trainer_class, config_class, qwen_like_dir, tmp_path,
                                                                 fresh_accelerate_state):
    """A fresh LoRA adapter (B = 0) leaves the policy equal to its base, the reference: the first step's
    KL is 0 when both run under the same autocast, and bf16 rounding (~1e-2 per token) when they do not."""
    config = _config(config_class, tmp_path, use_peft=True, bf16=True, lora_r=4, lora_alpha=8)
    trainer = trainer_class(qwen_like_dir, [_reward], args=config, train_dataset=_chat_prompts())
    metrics = trainer.training_step()
    assert abs(metrics["kl"]) < 1e-6


# ------------------------------------------------------------------ item 6: a separate critic is a backbone, no LM head
def test_separate_critic_has_no_lm_head(qwen_like_dir, tmp_path):
    trainer = PPOTrainer(qwen_like_dir, [_reward], args=_config(PPOConfig, tmp_path), train_dataset=_chat_prompts(),
                         value_model=qwen_like_dir)
    critic = trainer.unwrapped.critic
    vocab = critic.config.vocab_size
    assert not any(vocab in p.shape and p is not critic.get_input_embeddings().weight for p in critic.parameters())
    trainer.training_step()
    trainer.training_step()  # DDP's unused-parameter error struck at the second step
    trainer.save_model(tmp_path / "saved")
    from transformers import AutoModel

    AutoModel.from_pretrained(tmp_path / "saved" / "critic")


@pytest.mark.slow
def test_ppo_with_the_untied_separate_critic_on_two_processes(qwen_like_dir, tmp_path):
    """Under DDP an LM head that never reaches the loss fails the second step ("Expected to have finished
    reduction in the prior iteration")."""
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in _chat_prompts(8).to_list()))
    command = accelerate_launch(
        ROOT / "recipes" / "ppo_math.py", "--model", qwen_like_dir, "--value_model", qwen_like_dir,
        "--dataset", data, "--output_dir", tmp_path / "run", "--max_steps", "2", "--eval_steps", "0",
        "--per_device_batch_size", "2", "--num_generations", "2", "--max_completion_length", "6",
    )
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["num_processes"] == 2 and len([r for r in rows if "loss" in r]) == 2


# ------------------------------------------------------------------ item 1: the trainer paths that matter, on this checkpoint
@pytest.mark.parametrize("options", [{}, {"use_peft": True, "lora_r": 4}, {"bf16": True}], ids=["full", "lora", "bf16"])
@pytest.mark.parametrize("trainer_class, config_class", [(GRPOTrainer, GRPOConfig), (PPOTrainer, PPOConfig)])
def test_steps_train_and_save_on_the_realistic_checkpoint(trainer_class, config_class, options, qwen_like_dir, tmp_path,
                                                         fresh_accelerate_state):
    config = _config(config_class, tmp_path / "run", max_steps=2, **options)
    trainer = trainer_class(qwen_like_dir, [_reward], args=config, train_dataset=_chat_prompts())
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}
    summary = trainer.train()
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    after = dict(trainer.unwrapped.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    final = tmp_path / "run" / "final"
    if options.get("use_peft"):
        assert (final / "adapter_model.safetensors").exists()
    else:
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(final)
        assert not loaded.config.tie_word_embeddings
