"""The memory predictor: hand-computed figures, counts checked against transformers/peft/autograd,
and predicted against measured totals (recipes/compare_memory.py, llm_rl/memory_measure.py)."""

import gc
import json
import sys
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from llm_rl.memory import (
    PRESETS,
    ModelShape,
    StepShape,
    predict_memory,
    training_forward_saved_bytes,
    value_saved_bytes,
)

# V=10, H=4, one layer, 2 query heads and 1 KV head of 2 dims, I=8, tied embeddings, q/k/v biases (Qwen2)
SMALL = ModelShape(vocab_size=10, hidden_size=4, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=2, intermediate_size=8)


def test_small_config_by_hand():
    # linears q 4x4 + k 4x2 + v 4x2 + o 4x4 + gate/up/down 3 x 4x8 = 144, norms 2 x 4, biases 4 + 2 + 2:
    # 160 per layer; + embedding 10x4 (tied) + final norm 4
    assert SMALL.num_params == 160 + 40 + 4 == 204
    # GRPO: 2 prompts x G=2 = 4 rows of 3 prompt + 2 completion tokens, fp32, reference model
    # logprob_chunk_size=0: the model's full logits (the fused head's figures follow below)
    step = StepShape("grpo", prompts=2, num_generations=2, prompt_length=3, completion_length=2, logprob_chunk_size=0)
    estimate = predict_memory(SMALL, step)
    c = estimate.components
    assert c["policy_weights"] == c["reference_weights"] == c["gradients"] == 204 * 4 == 816
    assert c["optimizer_state"] == 2 * 816  # exp_avg and exp_avg_sq
    # keys and values: 2 x 1 layer x 4 rows x 1 KV head x 2 dims x 4 positions (the last token is never fed) x 4 bytes
    assert c["kv_cache"] == 2 * 1 * 4 * 1 * 2 * 4 * 4 == 256
    # The update runs each prompt's first 2 tokens once (2 rows x 2), then 4 rows x 3 tokens (the last prompt
    # token and the completion) that attend to 5 positions. Per token of the layer, in bytes: norm inputs and
    # rsqrt 2*(4*4 + 4) = 40; q and the attention output 2*4*4 = 32, log-sum-exp 2*4 = 8; gate and up 2*8*4 = 64
    # (the memory-efficient SwiGLU recomputes silu(gate)); x_hat 2*4*4 = 32; norm outputs 2*4*4 and the product
    # 8*4: 64 -> 240, + a mask row of 4 per key position; + keys and values 2 * 2 dims * 4 bytes = 16 per row and
    # key position (one KV head: no copies).
    prefix = 4 * (240 + 2 * 4) + 2 * 2 * 16  # 1056
    rest = 12 * (240 + 5 * 4) + 4 * 5 * 16  # 3440
    # + RoPE 16 tokens*2*2*4 = 256, final norm input + rsqrt 16*(16+4) = 320, its x_hat 12*16 = 192,
    #   LM head input 4 rows*3*16 = 192, token ids 4*5*8 = 160, log-sum-exp 4*2*4 = 32: 1152
    assert c["activations"] == prefix + rest + 1152 == 5648
    # without the memory-efficient SwiGLU each of the 16 tokens also keeps silu(gate), 8*4 bytes
    plain_mlp = predict_memory(SMALL, replace(step, memory_efficient_swiglu=False))
    assert plain_mlp.components["activations"] == 5648 + 16 * 32
    assert c["logits"] == 4 * 3 * 10 * 4 == 480  # (B, C+1, V) fp32
    # update peak: saved 6128 + the largest transient, at the end of the forward: the entropy's copy of the
    # logits 4*2*10*4 = 320 and two 8-row softmax chunks 2*8*10*4 = 640, while the forward's KV cache, 4 rows x
    # 5 positions = 320, is still held (more than the logits' gradient 960 + 160 or the top MLP's 12*(16+4)*4 + 160);
    # the other end, all gradients, is 816 (fused AdamW keeps no temporaries; the embedding's gradient comes sparse)
    assert estimate.phases["update"] == 6128 + 320 + 640 + 320 == 7408
    assert estimate.total == 816 * 2 + 1632 + 7408 == 10672  # weights + optimizer + the update, the largest phase

    # The fused head (chunked_lm_head_logprobs, 1024 positions per chunk: all 8 here): no logits and no LM-head
    # input are saved (-480, -192); instead a copy of the head's input 4 rows*2*16 = 128, the targets 8*8 = 64 and
    # the entropy per token 8*4 = 32 (+224).
    fused = predict_memory(SMALL, replace(step, logprob_chunk_size=1024))
    assert fused.components["logits"] == 0
    assert fused.components["activations"] == c["activations"] - 192 + 224 == 5680
    # update peak: the top layer's MLP gradients, 12*(16+4)*4 + 160 = 1120, are now the largest transient: one
    # chunk's log-softmax-then-gradient and softmax, 2 x 8*10*4 = 640 (+ the head's weight gradient 160) = 800 at
    # the start of backward; at the end of the forward its logits and softmax 640 + the cache 320 = 960
    assert fused.phases["update"] == 5680 + 1120 == 6800
    assert fused.total == 816 * 2 + 1632 + 6800


def test_one_fewer_model_without_critic_and_g_scales_the_rollout():
    m = PRESETS["qwen2.5-0.5b"]
    same_rows = {"prompts": 4, "num_generations": 4, "prompt_length": 64, "completion_length": 128, "device": "cuda",
                 "mixed_precision": True}
    grpo = predict_memory(m, StepShape("grpo", **same_rows)).components
    separate = predict_memory(m, StepShape("ppo", value_model="separate", **same_rows)).components
    shared = predict_memory(m, StepShape("ppo", value_model="shared", **same_rows)).components
    model, head = m.num_params * 2, (m.hidden_size + 1) * 4  # bf16 weights, fp32 value head

    def persistent(c):
        return c["policy_weights"] + c["reference_weights"] + c["critic_weights"] + c["value_head"] + c["gradients"] + c["optimizer_state"]

    # a separate critic: one more model, its gradients and its AdamW state (4 copies; tied embeddings)
    assert persistent(separate) - persistent(grpo) == 4 * model + 4 * head
    assert persistent(shared) - persistent(grpo) == 4 * head  # a head on the policy: only the head
    double_g = predict_memory(m, StepShape("grpo", **{**same_rows, "num_generations": 8})).components
    for part in ("kv_cache", "sampling_buffers", "logits"):
        assert double_g[part] == 2 * grpo[part]


def test_presets_have_the_published_sizes():
    assert PRESETS["qwen2.5-0.5b"].num_params == 494_032_768  # "0.49B"
    assert PRESETS["qwen2.5-7b"].num_params == 7_615_616_512  # "7.61B"


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_match_transformers_and_peft(tiny_tokenizer, tied):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    from llm_rl.models.tiny import tiny_config

    config = tiny_config(tiny_tokenizer, hidden_size=64, num_layers=2, tie_word_embeddings=tied)
    shape = ModelShape.from_config(config)
    model = Qwen2ForCausalLM(config)
    assert shape.num_params == sum(p.numel() for p in model.parameters())
    for targets in ("all-linear", "q_proj,v_proj"):
        lora = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=4, target_modules=targets if targets == "all-linear"
                              else targets.split(","), task_type="CAUSAL_LM"))  # fmt: skip
        assert shape.lora_params(4, targets) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def _saved_bytes(module, forward) -> int:
    """Bytes of the distinct storages autograd keeps for backward once ``forward`` returns (weights excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, list] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved.setdefault(storage.data_ptr(), []).append((storage.nbytes(), weakref.ref(tensor)))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = forward()
    gc.collect()  # what the forward dropped (e.g. a critic's unused logits) is not held at backward
    # a storage freed during the forward may hand its address to a later one: count the live entry
    alive = sum(max((n for n, ref in refs if ref() is not None), default=0) for refs in saved.values())
    del outputs
    return alive


@pytest.mark.parametrize(
    "dtype, lora, value_model, autocast, chunk, swiglu",
    [("float32", None, None, False, 1024, True), ("bfloat16", None, None, False, 1024, True), ("float32", "all-linear", None, False, 1024, True),
     ("bfloat16", "all-linear", None, False, 1024, True), ("float32", "q_proj,v_proj", None, False, 1024, True),
     ("float32", None, "shared", False, 1024, True), ("float32", None, "separate", False, 1024, True),
     ("bfloat16", None, "shared", False, 1024, True), ("bfloat16", None, None, True, 1024, True),
     ("bfloat16", "all-linear", None, True, 1024, True), ("float32", None, None, True, 1024, True),
     ("float32", "all-linear", None, True, 1024, True),
     # logprob_chunk_size=0: the model's full logits
     ("float32", None, None, False, 0, True), ("bfloat16", "all-linear", None, True, 0, True), ("float32", None, "shared", False, 0, True),
     ("float32", None, None, True, 0, True),
     # transformers' own MLP, which also keeps silu(gate)
     ("float32", None, None, False, 1024, False), ("bfloat16", "all-linear", None, True, 1024, False)],
)  # fmt: skip
def test_saved_activations_match_autograd(tiny_tokenizer, dtype, lora, value_model, autocast, chunk, swiglu):
    """The update's saved activations, tensor by tensor, as autograd holds them (GQA with 2 KV heads).

    ``autocast``: the forward wrapped as accelerate wraps it for bf16 mixed precision (CUDA's
    path, run here with CPU autocast). Counted to the byte, except autocast over fp32 weights
    (a tiny model on a GPU), within 2%.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM, Qwen2Model

    from llm_rl.models.forward import completion_logprobs
    from llm_rl.models.swiglu import use_memory_efficient_swiglu
    from llm_rl.models.tiny import tiny_config
    from llm_rl.models.value_head import PolicyWithValue

    torch.manual_seed(0)
    config = tiny_config(tiny_tokenizer, hidden_size=128, num_layers=2)  # 4 query heads, 2 KV heads
    policy = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    if swiglu:  # as the trainers load it (RLConfig.memory_efficient_swiglu)
        use_memory_efficient_swiglu(policy)
    if lora:
        policy = get_peft_model(policy, LoraConfig(r=4, target_modules=lora if lora == "all-linear" else lora.split(","),
                                                   task_type="CAUSAL_LM"))  # fmt: skip
    if autocast:
        from types import MethodType

        from accelerate.utils import convert_outputs_to_fp32

        amp_forward = torch.autocast("cpu", dtype=torch.bfloat16)(policy.forward.__func__)
        policy.forward = MethodType(convert_outputs_to_fp32(amp_forward), policy)
    prompts, G, P, C = 2, 3, 7, 5
    ids = torch.randint(5, len(tiny_tokenizer), (prompts, P + C)).repeat_interleave(G, 0)  # groups share a prompt
    ids[:, P:] = torch.randint(5, len(tiny_tokenizer), (prompts * G, C))
    mask = torch.ones_like(ids)
    mask[:G, :3] = 0  # left padding, so SDPA gets a mask as in a rollout
    if value_model:  # PPO: one forward of every row
        critic = Qwen2Model(config).to(getattr(torch, dtype)) if value_model == "separate" else None  # a backbone
        if critic is not None and swiglu:
            use_memory_efficient_swiglu(critic)
        module = PolicyWithValue(policy, critic)
        measured = _saved_bytes(module, lambda: module(ids, mask, C, tokens_per_chunk=chunk))
    else:  # GRPO: each prompt once for its group, then the completions on its cached keys and values
        measured = _saved_bytes(
            policy, lambda: completion_logprobs(policy, ids, mask, C, with_entropy=True, group_size=G, tokens_per_chunk=chunk)
        )
    shape = replace(ModelShape.from_config(config), dtype=dtype)
    step = StepShape("ppo" if value_model else "grpo", prompts, G, P, C, use_peft=bool(lora), lora_r=4,
                     lora_target_modules=lora or "all-linear", value_model=value_model or "none", mixed_precision=autocast,
                     logprob_chunk_size=chunk, memory_efficient_swiglu=swiglu)  # fmt: skip
    group_size = 1 if value_model else G
    saved = training_forward_saved_bytes(shape, step, prompts * G, 4 if autocast else shape.weight_bytes, group_size)
    predicted = sum(saved.values()) + value_saved_bytes(shape, step, step.value_model)
    if autocast and dtype == "float32":
        assert _tolerance_ok(measured, predicted, 0.02)
    else:
        assert predicted == measured


def _tolerance_ok(measured: int, predicted: int, tolerance: float = 0.15) -> bool:
    return abs(measured / predicted - 1) < tolerance


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="CPU measurement reads /proc (Linux)")
def test_measured_total_agrees_with_prediction(tiny_tokenizer, tmp_path):
    from llm_rl.memory_measure import run_worker, trainer_spec
    from llm_rl.models.tiny import build_untrained

    build_untrained(tiny_tokenizer, hidden_size=256, num_layers=2).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    prompt_length = 12  # the longest arithmetic prompt with the tiny tokenizer ("What is 13 + 17? Answer:")
    step = StepShape("grpo", prompts=8, num_generations=8, prompt_length=prompt_length, completion_length=8)
    result = run_worker(trainer_spec(step, str(tmp_path), steps=2), timeout=300)
    predicted = predict_memory(ModelShape.from_config(tmp_path), step).by_phase()
    assert all(p <= prompt_length and c == 8 for p, c in result["rollout_widths"])  # full-length completions
    assert _tolerance_ok(result["measured"]["weights"], predicted["weights"])
    assert _tolerance_ok(result["measured"]["optimizer_state"], predicted["optimizer_state"])
    assert _tolerance_ok(result["measured"]["total"], predicted["total"])
    assert result["runtime_baseline"] > 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="CPU measurement reads /proc (Linux)")
def test_recipe_writes_the_comparison(tiny_model_dir, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    try:
        import compare_memory
    finally:
        sys.path.pop(0)
    compare_memory.main(["--model", tiny_model_dir, "--steps", "2", "--batch_size", "2", "--num_generations", "2",
                         "--max_completion_length", "2", "--ppo_value", "separate", "--output_dir", str(tmp_path)])  # fmt: skip
    results = json.loads((tmp_path / "memory_comparison.json").read_text())
    assert set(results) == {"ppo", "grpo", "settings"}
    for trainer in ("ppo", "grpo"):
        assert {"predicted", "measured"} <= set(results[trainer])
        assert "total" in results[trainer]["predicted"] and "total" in results[trainer]["measured"]
        assert results[trainer]["measured"]["weights"] > 0
    assert results["ppo"]["predicted"]["critic_weights"] > 0 and results["grpo"]["predicted"]["critic_weights"] == 0
    assert "| **total** |" in (tmp_path / "memory_comparison.md").read_text()
    assert (tmp_path / "memory_comparison.png").stat().st_size > 1000

    compare_memory.main(["--predict_only", "--model", "qwen2.5-7b", "--use_peft", "--output_dir", str(tmp_path / "7b")])
    predicted = json.loads((tmp_path / "7b" / "memory_comparison.json").read_text())
    assert "measured" not in predicted["grpo"] and predicted["grpo"]["predicted"]["reference_weights"] == 0  # LoRA: no copy
    assert predicted["settings"]["device"] == "cuda"
