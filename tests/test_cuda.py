"""CUDA only (skipped without a GPU; benchmarks/gpu_check.sh runs them): bf16 on CUDA against float32 on CPU.

A bf16 step rounds every matmul input to 8 significant bits (relative error 2^-9 per rounding),
so its log-probs differ from float32's by a few hundredths of a nat at these sizes; a wrong
device placement, a missing upcast of the softmax statistics or a dtype mix-up in the fused
head differs by far more (whole nats, or NaN).
"""

import pytest
import torch

from llm_rl import GRPOConfig, GRPOTrainer
from llm_rl.core import chunked_lm_head_logprobs
from llm_rl.models.forward import completion_logprobs

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)"),
]

# bf16 tolerance for log-probs of magnitude ~ln(V): the worst token, and the mean over tokens
MAX_ABS, MEAN_ABS = 0.05, 0.01


def _length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def compare_bf16_logprobs(model, input_ids, attention_mask, completion_length: int, device: str) -> dict:
    """Completion log-probs under bf16 autocast on ``device`` against a float32 copy on the CPU.

    The copy is built afresh from the config and weights: a prepared model's ``forward`` carries
    accelerate's autocast wrapper, which a deep copy would keep.
    """
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_config(model.config).float().eval()
    reference.load_state_dict({k: v.float().cpu() for k, v in model.state_dict().items()})
    with torch.no_grad():
        expected, _, _ = completion_logprobs(reference, input_ids, attention_mask, completion_length)
        model = model.to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            got, _, _ = completion_logprobs(model, input_ids.to(device), attention_mask.to(device), completion_length)
    difference = (got.float().cpu() - expected).abs()
    return {"dtype": got.dtype, "max": difference.max().item(), "mean": difference.mean().item()}


def test_bf16_grpo_step_logprobs_on_cuda_match_the_cpu_float32_path(tiny_model_dir, tmp_path, fresh_accelerate_state):
    from llm_rl.data import arithmetic_dataset

    config = GRPOConfig(
        output_dir=str(tmp_path / "out"), max_steps=1, per_device_batch_size=2, num_generations=4,
        max_completion_length=6, min_completion_length=6, learning_rate=1e-3, warmup_steps=0, logging_steps=1,
        bf16=True,
    )  # fmt: skip
    trainer = GRPOTrainer(tiny_model_dir, [_length_reward], args=config, train_dataset=arithmetic_dataset(16, seed=1))
    trainer.train()
    model = trainer.unwrapped
    assert next(model.parameters()).device.type == "cuda"
    assert next(model.parameters()).dtype == torch.float32  # autocast, not bf16 weights
    ids = torch.randint(5, model.config.vocab_size, (8, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[:2, :3] = 0  # left padding on two rows
    result = compare_bf16_logprobs(model, ids, mask, completion_length=6, device="cuda")
    assert result["dtype"] == torch.float32  # the statistics are float32 even under autocast
    assert result["max"] < MAX_ABS and result["mean"] < MEAN_ABS, result


def test_fused_head_on_cuda_bf16_matches_cpu_float32_in_values_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 64, 32)
    weight = torch.randn(50_000, 32) * 0.05
    ids = torch.randint(0, 50_000, (2, 64))
    h_cpu, w_cpu = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    expected, _ = chunked_lm_head_logprobs(h_cpu, w_cpu, ids, tokens_per_chunk=32)
    expected.sum().backward()
    h_gpu = hidden.cuda().requires_grad_(True)
    w_gpu = weight.cuda().requires_grad_(True)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        got, _ = chunked_lm_head_logprobs(h_gpu, w_gpu, ids.cuda(), tokens_per_chunk=32)
    got.sum().backward()
    assert got.dtype == torch.float32
    assert (got.detach().cpu() - expected.detach()).abs().max() < MAX_ABS
    # gradients: relative to their own scale (bf16 keeps ~3 significant digits)
    for ours, theirs in ((h_gpu.grad, h_cpu.grad), (w_gpu.grad, w_cpu.grad)):
        error = (ours.float().cpu() - theirs).norm() / theirs.norm()
        assert error < 0.02, error
