"""Memory and precision options on both trainers: gradient checkpointing, LoRA, bf16 autocast."""

import pytest
import torch

from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer

TRAINERS = {
    "grpo": (GRPOTrainer, GRPOConfig, dict(num_generations=4)),
    "ppo": (PPOTrainer, PPOConfig, dict(num_generations=2, num_mini_batches=2)),
}


def _reward(prompts, completions, **kwargs):
    return [float(len(c) % 3) for c in completions]  # differs inside a group, so there is a gradient


def _trainer(name, model_dir, tmp_path, **options):
    trainer_class, config_class, extra = TRAINERS[name]
    from llm_rl.data import arithmetic_dataset

    config = config_class(output_dir=str(tmp_path), max_steps=1, per_device_batch_size=2, max_completion_length=4,
                          learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, **extra, **options)
    return trainer_class(model_dir, [_reward], args=config, train_dataset=arithmetic_dataset(16, seed=1))


def gradients_of_first_update(trainer) -> dict[str, torch.Tensor]:
    """Run one step and return the gradients its first optimizer update applies (before clipping)."""
    grads, update = {}, trainer.optimizer_update

    def spy():
        if not grads:
            grads.update({n: p.grad.clone() for n, p in trainer.unwrapped.named_parameters() if p.grad is not None})
        return update()

    trainer.optimizer_update = spy
    trainer.training_step()
    return grads


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_gradient_checkpointing_recomputes_the_same_gradients(name, tiny_model_dir, tmp_path):
    plain = _trainer(name, tiny_model_dir, tmp_path / "plain")
    checkpointed = _trainer(name, tiny_model_dir, tmp_path / "checkpointed", gradient_checkpointing=True)
    assert checkpointed.lm.is_activation_checkpointing and not plain.lm.is_activation_checkpointing
    expected, recomputed = gradients_of_first_update(plain), gradients_of_first_update(checkpointed)
    assert expected.keys() == recomputed.keys() and any(g.abs().sum() > 0 for g in expected.values())
    for n in expected:  # compared before AdamW, which would blow float noise on ~0 gradients up to lr-sized steps
        assert torch.allclose(expected[n], recomputed[n], rtol=1e-4, atol=1e-7), n


def _bytes_saved_for_backward(trainer) -> int:
    """Bytes autograd keeps for backward during the first micro-batch's forward (activations, mostly)."""
    entry = trainer.update_entry
    saved, accumulate = [], getattr(trainer, entry)

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    def measured_accumulate(*args, **kwargs):
        if saved:
            return accumulate(*args, **kwargs)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            return accumulate(*args, **kwargs)

    setattr(trainer, entry, measured_accumulate)
    trainer.training_step()
    return sum(saved)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_gradient_checkpointing_is_active_in_the_update(name, tiny_model_dir, tmp_path):
    """Checkpointing keeps only layer inputs; from_pretrained's eval mode once switched it off silently."""
    plain = _trainer(name, tiny_model_dir, tmp_path / "plain")
    checkpointed = _trainer(name, tiny_model_dir, tmp_path / "checkpointed", gradient_checkpointing=True)
    assert _bytes_saved_for_backward(checkpointed) < 0.5 * _bytes_saved_for_backward(plain)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_lean_swiglu_and_sparse_embedding_gradient_keep_the_first_update(name, tiny_model_dir, tmp_path):
    """On by default (one process): the MLPs keep gate and up only, the embedding's gradient comes sparse;
    the update's gradients are those of transformers' own modules, and less is saved for backward."""
    from llm_rl.models.swiglu import is_standard_swiglu

    lean = _trainer(name, tiny_model_dir, tmp_path / "lean")
    plain = _trainer(name, tiny_model_dir, tmp_path / "plain", memory_efficient_swiglu=False, sparse_embedding_grad=False)
    assert lean.lm.get_input_embeddings().sparse and not plain.lm.get_input_embeddings().sparse
    mlps = [m for m in lean.lm.modules() if is_standard_swiglu(m)]
    assert mlps and all("forward" in vars(m) for m in mlps)  # switched per instance
    assert not any("forward" in vars(m) for m in plain.lm.modules() if is_standard_swiglu(m))
    expected, got = gradients_of_first_update(plain), gradients_of_first_update(lean)
    assert expected.keys() == got.keys()
    for n in expected:
        assert got[n].layout == torch.strided and torch.allclose(expected[n], got[n], rtol=1e-5, atol=1e-7), n
    lean_saved = _bytes_saved_for_backward(_trainer(name, tiny_model_dir, tmp_path / "lean2"))
    plain_saved = _bytes_saved_for_backward(_trainer(name, tiny_model_dir, tmp_path / "plain2", memory_efficient_swiglu=False))
    assert lean_saved < plain_saved


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_lora_with_gradient_checkpointing_trains_only_the_adapter(name, tiny_model_dir, tmp_path):
    trainer = _trainer(name, tiny_model_dir, tmp_path, use_peft=True, lora_r=4, lora_target_modules="q_proj,v_proj",
                       gradient_checkpointing=True)
    before = {n: p.detach().clone() for n, p in trainer.lm.named_parameters()}
    trainer.training_step()
    changed = {n for n, p in trainer.lm.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_bf16_is_off_on_cpu_unless_asked(tiny_model_dir, tmp_path, fresh_accelerate_state):
    assert _trainer("grpo", tiny_model_dir, tmp_path / "default").accelerator.mixed_precision == "no"
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    assert _trainer("grpo", tiny_model_dir, tmp_path / "asked", bf16=True).accelerator.mixed_precision == "bf16"


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_bf16_autocast_reaches_every_pass_and_keeps_kl_exact(name, tiny_model_dir, tmp_path, fresh_accelerate_state):
    """Under bf16 each pass (generation, reference, training forward) runs its matmuls in bf16 on the
    model it uses, the value head in float32; policy and reference at one precision give a KL of 0."""
    from llm_rl.rollout import engine as module  # where the trainers' rollout engine finds generate_rollout

    trainer = _trainer(name, tiny_model_dir, tmp_path, bf16=True)
    phase, seen = ["outside"], {}

    def record(model_name):
        def hook(module, inputs, output):  # returns None: the output is left as it is
            seen.setdefault((phase[0], model_name), set()).add(output.dtype)
        return hook

    # a decoder matmul (the LM head may be read as a weight by the fused log-prob path)
    trainer.lm.get_decoder().layers[0].mlp.down_proj.register_forward_hook(record("policy"))
    if trainer.reference is not None:
        trainer.reference.get_decoder().layers[0].mlp.down_proj.register_forward_hook(record("reference"))
    if name == "ppo":
        trainer.unwrapped.value_head.register_forward_hook(record("value_head"))

    def in_phase(label, function):
        def wrapped(*args, **kwargs):
            phase[0] = label
            try:
                return function(*args, **kwargs)
            finally:
                phase[0] = "outside"
        return wrapped

    original_generate = module.generate_rollout
    module.generate_rollout = in_phase("generation", original_generate)
    try:
        trainer.reference_logprobs = in_phase("reference", trainer.reference_logprobs)
        setattr(trainer, trainer.update_entry, in_phase("training", getattr(trainer, trainer.update_entry)))
        metrics = trainer.training_step()
    finally:
        module.generate_rollout = original_generate
    reference_model = "policy" if trainer.reference is None else "reference"
    assert seen[("generation", "policy")] == {torch.bfloat16}
    assert seen[("reference", reference_model)] == {torch.bfloat16}
    assert seen[("training", "policy")] == {torch.bfloat16}
    if name == "ppo":
        assert seen[("training", "value_head")] == {torch.float32}
    # before the first update policy and reference are the same weights: a reference run at another
    # precision would show a KL that is only rounding
    assert metrics["kl"] == 0.0
