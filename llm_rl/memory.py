"""Predicted memory of a PPO or GRPO step, from shapes alone: call it before you launch.

    from llm_rl.memory import PRESETS, StepShape, predict_memory
    step = StepShape("grpo", prompts=4, num_generations=8, prompt_length=256, completion_length=512,
                     use_peft=True, device="cuda")  # or StepShape.from_config(GRPOConfig(...), prompt_length=256)
    print(predict_memory(PRESETS["qwen2.5-7b"], step).total / 2**30, "GiB")  # or ModelShape.from_config(config)

Each figure counts the tensors llm_rl's code holds, per device (checked tensor by tensor
with ``torch.autograd.graph.saved_tensors_hooks`` in tests/test_memory.py, and against
measured peaks by recipes/compare_memory.py):

- weights: parameters x the bytes of the dtype they are loaded in (transformers 5 loads a
  checkpoint in its own dtype: bf16 for Qwen2.5, fp32 for the tiny model);
- gradients: one per trainable parameter in its dtype; AdamW state: two, ``exp_avg`` and
  ``exp_avg_sq`` (Rajbhandari et al. 2020, ZeRO, arXiv 1910.02054, section 3.1);
- update activations: what the training forward saves for backward, counted per decoder
  layer as transformers runs a Qwen2/Llama block — the method of Korthikanti et al. 2022
  (arXiv 2205.05198, section 4.1), redone for RMSNorm (which upcasts to fp32), SDPA with a
  padding mask, K/V repeated to every query head, and GRPO's forward that runs each prompt
  once for its group (``llm_rl.models.forward.shared_prefix_forward``);
- the rollout: the KV cache at its longest, plus the (B, V) buffers of each sampling step.
- log-probs: by default every log-prob pass takes ``chunked_lm_head_logprobs``
  (``StepShape.logprob_chunk_size`` positions' logits at a time, forward and backward), so
  the logits term is ``tokens_per_chunk x V`` temporaries instead of the `(B, C, V)` logits;
  no-grad passes run ``per_device_batch_size`` prompts' rows at a time.

Phases run one after another, so the total is the persistent part (weights, optimizer
state) plus the largest phase, not the sum of the rows. Not counted: the CUDA context and
allocator cache, the Python/torch runtime, and tensors of a few (B, T) numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32 = 4  # RMSNorm statistics, attention log-sum-exp, LoRA adapters, the value head
INDEX = 8  # int64 token ids
ENTROPY_CHUNK = 128  # rows per chunk in llm_rl.core.entropy_from_logits


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer (Qwen2/Llama block: gated MLP, RMSNorm, RoPE)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool = True
    attention_bias: bool = True  # Qwen2 has q/k/v biases; Llama does not
    dtype: str = "float32"  # as loaded: the checkpoint's dtype

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def linears(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each linear layer of one decoder block."""
        H, I = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {"q_proj": (H, q), "k_proj": (H, kv), "v_proj": (H, kv), "o_proj": (q, H),
                "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}  # fmt: skip

    @property
    def num_params(self) -> int:
        H = self.hidden_size
        per_layer = sum(i * o for i, o in self.linears().values()) + 2 * H  # + two RMSNorm weights
        if self.attention_bias:
            per_layer += sum(o for name, (_, o) in self.linears().items() if name in ("q_proj", "k_proj", "v_proj"))
        embeddings = self.vocab_size * H * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_layers * per_layer + H  # + the final norm

    def lora_targets(self, target_modules: str) -> list[str]:
        """Adapted linears of one block; peft's "all-linear" is every linear but the LM head."""
        if target_modules == "all-linear":
            return list(self.linears())
        names = [t.strip() for t in target_modules.split(",")]
        return [n for n in self.linears() if n in names]

    def lora_params(self, r: int, target_modules: str = "all-linear") -> int:
        """A (r x in) and B (out x r) per adapted linear (Hu et al. 2021, LoRA, arXiv 2106.09685)."""
        linears = self.linears()
        return self.num_layers * sum(r * sum(linears[n]) for n in self.lora_targets(target_modules))

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a transformers config, a dict, or the path of a config.json (or of its folder)."""
        if isinstance(config, (str, Path)):
            path = Path(config)
            config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
        if not isinstance(config, dict):
            config = config.get_text_config().to_dict()
        heads = config["num_attention_heads"]
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            intermediate_size=config["intermediate_size"],
            tie_word_embeddings=config.get("tie_word_embeddings", True),
            attention_bias=config.get("attention_bias", config.get("model_type") == "qwen2"),
            dtype=dtype if dtype in DTYPE_BYTES else "float32",
        )


# Shapes from the models' config.json files on the hub, written here so --predict_only needs no network.
PRESETS = {
    "qwen2.5-0.5b": ModelShape(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                               head_dim=64, intermediate_size=4864, tie_word_embeddings=True, dtype="bfloat16"),
    "qwen2.5-7b": ModelShape(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                             head_dim=128, intermediate_size=18944, tie_word_embeddings=False, dtype="bfloat16"),
}  # fmt: skip


@dataclass(frozen=True)
class StepShape:
    """What one training step of a trainer holds on one device; the fields mirror GRPOConfig/PPOConfig."""

    algorithm: Literal["grpo", "ppo"]
    prompts: int  # per_device_batch_size
    num_generations: int
    prompt_length: int  # tokens of the longest (padded) prompt
    completion_length: int  # max_completion_length: memory is sized for the longest completion
    gradient_accumulation_steps: int = 1
    num_mini_batches: int = 1  # PPO
    num_iterations: int = 1  # GRPO: > 1 adds an old-policy log-prob pass
    value_model: Literal["none", "shared", "separate"] = "none"  # PPO: head on the policy, or its own critic
    reference: bool = True  # GRPO beta > 0 / PPO kl_coef > 0 (with LoRA the base serves, no copy)
    use_peft: bool = False
    lora_r: int = 16
    lora_target_modules: str = "all-linear"
    gradient_checkpointing: bool = False
    reward_model: ModelShape | None = None  # a learned reward model, scored without gradients
    device: Literal["cpu", "cuda"] = "cpu"
    mixed_precision: bool = False  # accelerate's bf16 autocast (the trainers' default on CUDA with bf16)
    # RLConfig.logprob_chunk_size: positions per chunk of the fused LM-head log-probs; 0: the model's full logits
    logprob_chunk_size: int = 256
    memory_efficient_swiglu: bool = True  # RLConfig's: the MLP keeps gate and up, not silu(gate) (models.swiglu)
    # RLConfig's: the input embedding's gradient comes sparse, into the dense one in place (models.embedding;
    # the trainers do it on one process only)
    sparse_embedding_grad: bool = True

    @classmethod
    def from_config(cls, args, prompt_length: int, value_model: str = "shared", device: str = "cuda",
                    reward_model: ModelShape | None = None) -> StepShape:  # fmt: skip
        """The step a ``GRPOConfig`` or ``PPOConfig`` describes (``value_model``: PPO's "shared" or "separate")."""
        ppo = hasattr(args, "num_ppo_epochs")
        return cls(
            algorithm="ppo" if ppo else "grpo",
            prompts=args.per_device_batch_size,
            num_generations=args.num_generations,
            prompt_length=prompt_length,
            completion_length=args.max_completion_length,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            num_mini_batches=getattr(args, "num_mini_batches", 1),
            num_iterations=getattr(args, "num_iterations", 1),
            value_model=value_model if ppo else "none",
            reference=(args.kl_coef > 0 or args.kl_controller == "adaptive") if ppo else args.beta > 0,
            use_peft=args.use_peft,
            lora_r=args.lora_r,
            lora_target_modules=args.lora_target_modules,
            gradient_checkpointing=args.gradient_checkpointing,
            reward_model=reward_model,
            device=device,
            # the trainers' rule: bf16 autocast when asked, or by default on CUDA (assumed to support bf16)
            mixed_precision=bool(args.bf16) if args.bf16 is not None else device == "cuda",
            logprob_chunk_size=args.logprob_chunk_size,
            memory_efficient_swiglu=args.memory_efficient_swiglu,
            sparse_embedding_grad=args.sparse_embedding_grad,
        )

    @property
    def rollout_rows(self) -> int:
        """Completions generated at once: every prompt of the step, G each."""
        return self.prompts * self.gradient_accumulation_steps * self.num_generations

    @property
    def update_rows(self) -> int:
        """Completions in one forward/backward (a micro-batch)."""
        return self.prompts * self.num_generations // (self.num_mini_batches if self.algorithm == "ppo" else 1)

    @property
    def seq_len(self) -> int:
        return self.prompt_length + self.completion_length

    @property
    def scoring_rows(self) -> int:
        """Completions in one no-grad log-prob forward: ``per_device_batch_size`` prompts' (BaseRLTrainer.logprobs_no_grad)."""
        return self.prompts * self.num_generations

    @property
    def fused_head(self) -> bool:
        """Whether log-prob passes take ``chunked_lm_head_logprobs`` (no `(B, C, V)` logits) rather than the model's logits."""
        return self.logprob_chunk_size > 0


@dataclass
class MemoryEstimate:
    """``components``: what each part holds at its largest; ``phases``: each phase's peak above the
    persistent weights and optimizer state; ``total = weights + optimizer_state + max(phases)``."""

    components: dict[str, int]
    phases: dict[str, int]
    total: int

    @property
    def weights(self) -> int:
        return sum(v for k, v in self.components.items() if k in WEIGHT_COMPONENTS)

    def by_phase(self) -> dict[str, int]:
        """Figures a measurement can check: weights, optimizer state, each phase's peak above them, total."""
        return {"weights": self.weights, "optimizer_state": self.components["optimizer_state"], **self.phases,
                "total": self.total}  # fmt: skip


WEIGHT_COMPONENTS = ("policy_weights", "lora_adapter", "reference_weights", "critic_weights", "value_head",
                     "reward_model_weights")  # fmt: skip


# ---------------------------------------------------------------------------------- activations
def layer_saved_bytes(m: ModelShape, rows: int, seq_len: int, compute: int, lora: tuple[list[str], int] | None,
                      autocast: bool = False, kv_len: int | None = None,
                      memory_efficient_swiglu: bool = True) -> int:  # fmt: skip
    """Bytes one decoder layer saves for backward over ``rows x seq_len`` tokens.

    Keys and values (and the mask's columns) span ``kv_len`` positions: ``seq_len``, or more
    when the tokens attend to a cached prefix as well.

    ``compute`` is the activation dtype's size; ``lora`` is ``(adapted linear names, r)`` when
    only adapters train (frozen weights save nothing for their own gradient). Per token:
    - each RMSNorm: its input upcast to fp32 (``pow``), ``rsqrt`` (fp32), and x_hat when its
      weight trains; ``weight * x_hat`` is the norm's output, the q/k/v (resp. gate/up) input;
    - SDPA: q, k, v (k and v repeated to every query head when there are several KV heads),
      its output (= o_proj's input: ``transpose().contiguous()`` is a no-op on that layout),
      log-sum-exp, and a float copy of the (T, T) padding mask per layer;
    - MLP: gate, silu(gate) (not with ``memory_efficient_swiglu``: recomputed in backward), up, and
      their product (down_proj's input).
    Under ``autocast`` (accelerate's bf16) with fp32 weights each linear saves its own bf16
    copy of its input. With LoRA on 16-bit weights, peft casts each adapter's input to the
    adapters' fp32 (autocast casts it back to bf16): one copy per adapted linear.
    Full fine-tuning with compute = 4: ``10 H + 3 I + heads + T`` floats + 2 rsqrt per token (``4 I`` without
    ``memory_efficient_swiglu``).
    """
    H, I, nh = m.hidden_size, m.intermediate_size, m.num_heads
    attn = nh * m.head_dim
    # repeat_kv copies K and V to every query head, unless there is a single KV head (a stride-0 view)
    kv = attn if 1 < m.num_kv_heads else m.head_dim
    autocast_from_fp32 = autocast and m.weight_bytes == FP32
    norm_out = FP32 if autocast_from_fp32 else compute  # weight * x_hat runs in the weights' dtype
    kv_len = kv_len or seq_len
    per_token = (
        2 * H * FP32 + 2 * FP32  # both norms: fp32 input and rsqrt
        + 2 * attn * compute + nh * FP32 + kv_len * compute  # q, out; log-sum-exp; mask row
        + (2 if memory_efficient_swiglu else 3) * I * compute  # gate, up (and silu(gate))
    )  # fmt: skip
    keys_values = rows * kv_len * 2 * kv * compute
    if lora is None:
        per_token += 2 * H * norm_out  # x_hat of both norms (their weights train)
        if autocast_from_fp32:
            per_token += 5 * H * compute + I * compute  # q, k, v, gate, up cast their input; down's is bf16
        else:
            per_token += 2 * H * compute + I * compute  # norm outputs (shared by q/k/v, gate/up), product
    else:
        targets, r = lora
        adapter_input = compute if autocast else FP32
        if m.weight_bytes == FP32 and not autocast:  # no casts: the adapters save the layer's own tensors
            inputs = {"q_proj": "norm1", "k_proj": "norm1", "v_proj": "norm1", "o_proj": "attn_out",
                      "gate_proj": "norm2", "up_proj": "norm2", "down_proj": "product"}  # fmt: skip
            sizes = {"norm1": H, "norm2": H, "attn_out": 0, "product": I}  # attn_out is SDPA's output
            per_token += sum(sizes[name] for name in {inputs[t] for t in targets}) * compute
        else:
            per_token += sum(m.linears()[t][0] for t in targets) * adapter_input
        per_token += len(targets) * r * adapter_input  # lora_A's output, saved by lora_B
    return rows * seq_len * per_token + keys_values


def shares_prefix(step: StepShape, group_size: int) -> bool:
    """Whether ``completion_logprobs`` runs each prompt once for its group (``shared_prefix_forward``)."""
    return group_size > 1 and step.prompt_length >= 2 and not step.gradient_checkpointing


def _lora(m: ModelShape, step: StepShape) -> tuple[list[str], int] | None:
    """``(adapted linear names, r)`` when only LoRA adapters train, else None (``layer_saved_bytes``'s ``lora``)."""
    return (m.lora_targets(step.lora_target_modules), step.lora_r) if step.use_peft else None


def training_forward_saved_bytes(m: ModelShape, step: StepShape, rows: int, logits_bytes: int,
                                 group_size: int = 1) -> dict[str, int]:  # fmt: skip
    """What one training forward of the policy saves for backward: ``{"layers", "logits", "other"}``.

    ``group_size = G > 1`` (GRPO): each prompt's first ``P - 1`` tokens run once, `(B/G, P - 1)`,
    into a KV cache repeated G times; then `(B, C + 1)` tokens attend to it (``shared_prefix_forward``).
    Both passes save their layers; the prefix pass also its final norm's input (its LM head's
    output is dropped).
    """
    T, C, H, L = step.seq_len, step.completion_length, m.hidden_size, m.num_layers
    compute = compute_bytes(m, step)
    lora = _lora(m, step)
    if shares_prefix(step, group_size):
        prefix_rows, prefix_len, query_len = rows // group_size, step.prompt_length - 1, C + 1
        passes = [(prefix_rows, prefix_len, prefix_len), (rows, query_len, T)]  # (rows, query positions, key positions)
    else:
        passes = [(rows, T, T)]
    layers = sum(L * layer_saved_bytes(m, r, q, compute, lora, step.mixed_precision, k, step.memory_efficient_swiglu)
                 for r, q, k in passes)  # fmt: skip
    tokens = sum(r * q for r, q, _ in passes)
    if lora:  # no gradient reaches the frozen embedding, so the first norm saves nothing
        layers -= tokens * (H * FP32 + FP32)
    # Each layer keeps only its input; backward recomputes one layer at a time. (The trainers do not
    # switch the policy to train mode, where transformers checkpoints, so this is not measured yet.)
    if step.gradient_checkpointing:
        layers = L * rows * T * H * compute + layers // L
    other = tokens * 2 * m.head_dim * m.weight_bytes  # RoPE cos and sin (the embeddings' dtype), shared by the layers
    final_tokens = passes[-1][0] * passes[-1][1]
    other += tokens * (H * FP32 + FP32)  # final norm: fp32 input, rsqrt (also the prefix pass's)
    if lora is None:
        other += final_tokens * H * compute  # final norm's x_hat
    if step.fused_head:  # chunked_lm_head_logprobs saves a (B, C, H) copy of its input (the final norm's
        head_input = FP32 if step.mixed_precision and m.weight_bytes == FP32 else compute  # output), the ids,
        other += rows * C * (H * head_input + INDEX + FP32)  # and the entropy per token; nothing of (B, C, V)
    elif lora is None:
        other += rows * (C + 1) * H * compute  # LM head input: the last C + 1 positions (a copy, or all of them)
    if step.mixed_precision:  # autocast's bf16 copies of fp32 weights, kept by the linears that need them;
        copies = m.num_params if m.weight_bytes == FP32 else 0  # made anew in each model call (each pass)
        if lora:  # and of the adapters; the first layer's q/k/v see an input without gradient: no copy kept
            qkv = {n: m.linears()[n] for n in ("q_proj", "k_proj", "v_proj")}
            copies += m.lora_params(step.lora_r, step.lora_target_modules)
            copies -= sum(step.lora_r * i for n, (i, _) in qkv.items() if n in lora[0])
            copies -= sum(i * o for i, o in qkv.values()) if m.weight_bytes == FP32 else 0
        prefix_lm_head = m.vocab_size * H if m.weight_bytes == FP32 else 0  # the prefix pass drops its logits,
        unsaved_heads = len(passes) if step.fused_head else len(passes) - 1  # and the fused head keeps no bf16 copy
        other += (len(passes) * copies - unsaved_heads * prefix_lm_head) * compute
    # token ids (the embedding's; the gather's view of them on the logits path); log-sum-exp per token
    other += (0 if step.fused_head and lora else rows * T * INDEX) + rows * C * FP32
    logits = 0 if step.fused_head else rows * (C + 1) * m.vocab_size * logits_bytes
    return {"layers": layers, "logits": logits, "other": other}


def value_saved_bytes(m: ModelShape, step: StepShape, value_model: str) -> int:
    """What PPO's value head adds to the saved activations of the update.

    ``shared``: the head saves its input, an fp32 copy of the (B, C, H) slice of the last
    hidden state. ``separate``: the same, plus the critic's whole forward (fully trained;
    its LM head output is dropped, and it reads the policy's token ids).
    """
    if value_model == "none":
        return 0
    rows, T, C, H = step.update_rows, step.seq_len, step.completion_length, m.hidden_size
    head = rows * C * H * FP32
    if value_model == "shared":
        return head
    critic = training_forward_saved_bytes(m, replace(step, use_peft=False, logprob_chunk_size=0), rows, 0)
    # not the critic's: the LM head input, log-prob bookkeeping, the token ids (the policy's tensor)
    not_critic = rows * (C + 1) * H * compute_bytes(m, step) + rows * C * FP32 + rows * T * INDEX
    return critic["layers"] + critic["other"] - not_critic + head


def update_peak_bytes(m: ModelShape, step: StepShape, saved: int, gradients: int, head_grad: int,
                      logits_bytes: int, forward_cache: int = 0) -> int:  # fmt: skip
    """Peak of one micro-batch's forward + backward + optimizer step, above weights and optimizer state.

    Going down the layers, saved activations are freed as gradients appear, so the peak is
    at one end (Korthikanti et al. 2022 make the same argument for recomputation):
    - end of forward: the entropy metric copies the (B, C, V) logits slice and softmaxes
      128 rows at a time (``forward_cache``: a shared-prefix forward's KV cache is still held);
    - start of backward: the logits' gradient (about two (B, C+1, V) buffers) and the LM
      head's weight gradient, or, in the top layer's MLP, the gradients of the product,
      silu and up (3 (B, T, I), while the product's own saved copy is already freed);
    - end of backward: every gradient, and the embedding's dense gradient while the tied head's
      is held (without ``sparse_embedding_grad``); with gradient
      checkpointing also the first layer's recomputed activations and its MLP's gradients. The
      fused AdamW step (the trainers' optimizer, unless FSDP or DeepSpeed shard it) adds nothing.
    With gradient accumulation every micro-batch after the first also finds all gradients held.
    """
    rows, T, C, V = step.update_rows, step.seq_len, step.completion_length, m.vocab_size
    compute = compute_bytes(m, step)
    if step.fused_head:  # one chunk's logits at a time (chunked_lm_head_logprobs), forward and backward
        entropy = fused_head_bytes(m, step, rows * C)
        logits_grad = fused_head_bytes(m, step, rows * C, backward=True) + head_grad
    else:
        chunk = min(ENTROPY_CHUNK, rows * C) * V * FP32
        entropy = rows * C * V * logits_bytes + (2 + (logits_bytes < FP32)) * chunk
        logits_grad = 2 * rows * (C + 1) * V * logits_bytes + head_grad
    top_tokens = rows * (C + 1 if forward_cache else T)  # the top layer's positions in the last forward
    mlp_grads_per_token = (2 * m.intermediate_size + m.hidden_size) * compute
    mlp_grad = top_tokens * mlp_grads_per_token + head_grad
    held = gradients if step.gradient_accumulation_steps > 1 else 0
    dense_embedding = m.tie_word_embeddings and not step.use_peft and not step.sparse_embedding_grad
    end_of_backward = V * m.hidden_size * m.weight_bytes if dense_embedding else 0
    if step.gradient_checkpointing:  # the first layer, recomputed and run backward while (nearly) every gradient is held
        end_of_backward += layer_saved_bytes(m, rows, T, compute, _lora(m, step), step.mixed_precision, None,
                                             step.memory_efficient_swiglu) + rows * T * mlp_grads_per_token  # fmt: skip
    return max(saved + max(entropy + forward_cache, logits_grad, mlp_grad) + held, gradients + end_of_backward)


def fused_head_bytes(m: ModelShape, step: StepShape, positions: int, backward: bool = False) -> int:
    """Temporaries of ``chunked_lm_head_logprobs`` over ``positions`` tokens, ``logprob_chunk_size`` at a time.

    Forward: the chunk's logits in the matmul's dtype, their fp32 copy, and logsumexp's
    temporary or the softmax. Backward: the recomputed logits, the log-softmax turned into the
    gradient in place, the softmax when the entropy takes a gradient, the gradient's cast for
    the matmul, plus the fp32 accumulator of the weight's gradient when the weight is 16-bit.
    Under autocast with fp32 weights: the weight's bf16 copy, made once per pass.
    """
    n, V = min(step.logprob_chunk_size, positions), m.vocab_size
    compute = compute_bytes(m, step)
    low = compute if compute < FP32 else 0  # the matmul's own output and the cast gradient, when not fp32
    cast_weight = V * m.hidden_size * compute if step.mixed_precision and m.weight_bytes == FP32 else 0
    if not backward:
        return n * V * (2 * FP32 + low) + cast_weight
    accumulator = V * m.hidden_size * FP32 if m.weight_bytes < FP32 and not step.use_peft else 0
    return n * V * (2 * FP32 + 2 * low) + cast_weight + accumulator


def no_grad_forward_bytes(m: ModelShape, rows: int, seq_len: int, completion_length: int, compute: int,
                          logits_bytes: int, with_entropy: bool = False, keep_hidden: bool = False,
                          logits_positions: int | None = None, kv_len: int | None = None,
                          fused: StepShape | None = None) -> int:  # fmt: skip
    """Peak of a forward without gradients (reference, old-policy or value pass; also prefill).

    Inside a layer at most: the layer's input and the residual, q, k, v (repeated), the
    attention output and RoPE's temporaries; or, in the MLP, input, residual, norm output,
    silu(gate), up and their product. At the head: the final norm's output, the copy of the
    last C + 1 positions, the logits, and (PPO) the entropy's copy of the logits.
    ``keep_hidden``: ``output_hidden_states`` holds every layer's output (PPO's value head).
    ``kv_len``: key positions, when the tokens also attend to a cached prefix.
    ``fused``: the step, when its log-probs come from ``chunked_lm_head_logprobs`` (chunks of logits).
    """
    H, I, attn = m.hidden_size, m.intermediate_size, m.num_heads * m.head_dim
    tokens, kv_len = rows * seq_len, kv_len or seq_len
    kept = (m.num_layers + 1) * tokens * H * compute if keep_hidden else 0
    attention = (tokens * (2 * H + 4 * attn) + rows * kv_len * (2 * attn + seq_len)) * compute  # + k, v, mask
    mlp = tokens * (3 * H + 3 * I) * compute
    positions = completion_length + 1 if logits_positions is None else logits_positions
    if fused is not None and completion_length > 0:  # the head's input slice, its copy, then one chunk's logits
        head = tokens * H * compute + 2 * rows * positions * H * compute
        head += fused_head_bytes(m, fused, rows * completion_length)
        return kept + max(attention, mlp, head)
    head = tokens * H * compute + rows * positions * (H * compute + m.vocab_size * logits_bytes)
    head += 2 * completion_length * m.vocab_size * FP32  # one row's log-sum-exp temporaries
    if with_entropy:
        head += rows * completion_length * m.vocab_size * logits_bytes + 2 * ENTROPY_CHUNK * m.vocab_size * FP32
    return kept + max(attention, mlp, head)


def scoring_pass_bytes(m: ModelShape, step: StepShape, rows: int, group_size: int, compute: int, logits_bytes: int,
                       with_entropy: bool = False, keep_hidden: bool = False) -> int:  # fmt: skip
    """Peak of a no-grad log-prob pass over ``rows`` completions; with groups, the shared-prefix one
    (prefix, then its cache repeated G times and grown over the completion: all layers' keys and values)."""
    T, C, P = step.seq_len, step.completion_length, step.prompt_length
    fused = step if step.fused_head else None
    if not shares_prefix(step, group_size):
        return no_grad_forward_bytes(m, rows, T, C, compute, logits_bytes, with_entropy, keep_hidden, fused=fused)
    prompts = rows // group_size
    prefix = kv_cache_bytes(m, prompts, P - 1, compute) + no_grad_forward_bytes(
        m, prompts, P - 1, 0, compute, compute, logits_positions=1
    )
    rest = kv_cache_bytes(m, rows, T, compute) + no_grad_forward_bytes(
        m, rows, C + 1, C, compute, logits_bytes, with_entropy, keep_hidden, kv_len=T, fused=fused
    )
    return max(prefix, rest)


def kv_cache_bytes(m: ModelShape, rows: int, seq_len: int, compute: int) -> int:
    """Keys and values of every layer for ``rows`` sequences of ``seq_len`` tokens."""
    return 2 * m.num_layers * rows * m.num_kv_heads * m.head_dim * seq_len * compute


def compute_bytes(m: ModelShape, step: StepShape) -> int:
    """Bytes per activation element: bf16 under autocast, else the weights' dtype."""
    return 2 if step.mixed_precision else m.weight_bytes


def reward_model_params(rm: ModelShape) -> int:
    """A sequence-classification model: the backbone and a (H -> 1) score head instead of an LM head."""
    lm_head = 0 if rm.tie_word_embeddings else rm.vocab_size * rm.hidden_size
    return rm.num_params - lm_head + rm.hidden_size


# ---------------------------------------------------------------------------------- the estimate
def predict_memory(model: ModelShape, step: StepShape) -> MemoryEstimate:
    """Bytes per component and per phase of one step of ``step.algorithm`` on ``model``; see the module doc."""
    m, wb, H, V = model, model.weight_bytes, model.hidden_size, model.vocab_size
    T, C = step.seq_len, step.completion_length
    compute = compute_bytes(m, step)
    ppo = step.algorithm == "ppo"
    value_model = step.value_model if ppo else "none"
    # accelerate upcasts a prepared model's outputs to fp32: GRPO's logits; PPO's module returns log-probs
    logits_bytes = FP32 if step.mixed_precision and not ppo else compute

    # --- weights, and what trains
    c: dict[str, int] = {"policy_weights": m.num_params * wb}
    lora_params = m.lora_params(step.lora_r, step.lora_target_modules) if step.use_peft else 0
    c["lora_adapter"] = lora_params * FP32  # peft keeps adapters in fp32 (autocast_adapter_dtype)
    c["reference_weights"] = m.num_params * wb if step.reference and not step.use_peft else 0
    # a separate critic is a backbone with a value head: no LM head (an untied one is V x H weights)
    critic_params = m.num_params - (0 if m.tie_word_embeddings else V * H)
    c["critic_weights"] = critic_params * wb if value_model == "separate" else 0
    c["value_head"] = (H + 1) * FP32 if ppo else 0
    rm = step.reward_model
    c["reward_model_weights"] = reward_model_params(rm) * rm.weight_bytes if rm else 0
    trainable = c["lora_adapter"] + c["value_head"] + (0 if step.use_peft else c["policy_weights"])
    c["gradients"] = trainable + c["critic_weights"]
    c["optimizer_state"] = 2 * c["gradients"]  # exp_avg and exp_avg_sq, in each parameter's dtype

    # --- the update: one micro-batch forward + backward, then the AdamW step
    group = 1 if ppo else step.num_generations  # GRPO's micro-batches hold whole groups: each prompt runs once
    saved = training_forward_saved_bytes(m, step, step.update_rows, logits_bytes, group)
    c["activations"] = saved["layers"] + saved["other"] + value_saved_bytes(m, step, value_model)
    c["logits"] = saved["logits"]
    head_grad = 0 if step.use_peft else V * H * wb
    cache = kv_cache_bytes(m, step.update_rows, T, compute) if shares_prefix(step, group) else 0
    update = update_peak_bytes(m, step, c["activations"] + c["logits"], c["gradients"], head_grad, logits_bytes, cache)

    # --- the rollout: prefill once per prompt, then the cache repeated G times and grown a token a step
    prompts = step.prompts * step.gradient_accumulation_steps
    final_len = step.seq_len - 1  # the last sampled token is never fed back
    c["kv_cache"] = kv_cache_bytes(m, step.rollout_rows, final_len, compute)
    growth = c["kv_cache"] // (2 * m.num_layers)  # torch.cat copies one layer's keys (or values) a step
    c["sampling_buffers"] = step.rollout_rows * V * (compute + 7 * FP32)  # step logits, fp32 scores, sampler's buffers
    prefill = kv_cache_bytes(m, prompts, step.prompt_length, compute) + no_grad_forward_bytes(
        m, prompts, step.prompt_length, 0, compute, compute, logits_positions=1
    )
    rollout = max(prefill, c["kv_cache"] + growth + c["sampling_buffers"])

    # --- no-grad passes (reference and GRPO's old policy: each prompt once per group), in micro-batches
    # of per_device_batch_size prompts' rows (BaseRLTrainer.logprobs_no_grad, PPO's old-policy pass)
    all_rows, G = step.scoring_rows, step.num_generations
    passes = [0]
    if step.reference:
        passes.append(scoring_pass_bytes(m, step, all_rows, G, compute, compute))
    # PPO with one mini-batch of one micro-batch takes them from its first update forward
    # instead (PPOTrainer.fuses_first_pass)
    fused = step.num_mini_batches == 1 and step.gradient_accumulation_steps == 1
    if ppo and not fused:  # log-probs, entropy and values of the rollout policy in one forward, then the critic's
        passes.append(no_grad_forward_bytes(m, all_rows, T, C, compute, compute, True, value_model == "shared",
                                            fused=step if step.fused_head else None))  # fmt: skip
        if value_model == "separate":
            passes.append(no_grad_forward_bytes(m, all_rows, T, 0, compute, compute, keep_hidden=True, logits_positions=1))
    elif step.num_iterations > 1:
        passes.append(scoring_pass_bytes(m, step, all_rows, G, compute, compute))
    c["logprob_pass"] = max(passes)
    # a learned reward scores LearnedReward's default 32 rows at a time, in its own dtype
    score = no_grad_forward_bytes(rm, min(step.rollout_rows, 32), T, 0, rm.weight_bytes, rm.weight_bytes, logits_positions=0) if rm else 0

    phases = {"rollout": rollout, "score": score, "logprobs": c["logprob_pass"], "update": update}
    weights = sum(c[k] for k in WEIGHT_COMPONENTS)
    return MemoryEstimate(c, phases, weights + c["optimizer_state"] + max(phases.values()))
