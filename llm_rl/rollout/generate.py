"""Rollouts: G sampled completions per prompt, with masks and sampling log-probs.

The prompt's prefix is run through the model once per prompt, and its KV cache is
repeated G times (``DynamicCache.batch_repeat_interleave``) before ``model.generate``
continues from it, so prefill cost does not grow with the group size.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig

from llm_rl.rollout.sampler import GroupSampler


@dataclass
class Rollout:
    """One batch of sampled completions; rows ``[i*G:(i+1)*G]`` belong to prompt ``i``."""

    prompt_ids: torch.Tensor  # (B, P) left-padded, B = prompts * G
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, C) right-padded with pad_token_id
    completion_mask: torch.Tensor  # (B, C) 1 up to and including the first EOS
    sampling_logprobs: torch.Tensor  # (B, C) log-probs the sampler drew the tokens with
    truncated: torch.Tensor  # (B,) bool: no EOS within max_completion_length

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)  # (B, P + C)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def model_inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(input_ids, attention_mask, C)`` for ``rows``, trimmed to the padding those rows need."""
        prompt_mask, completion_mask = self.prompt_mask[rows], self.completion_mask[rows]
        first = int(prompt_mask.any(0).int().argmax())  # leading columns that are padding in every row
        width = max(int(completion_mask.sum(-1).max()), 1)
        input_ids = torch.cat([self.prompt_ids[rows, first:], self.completion_ids[rows, :width]], dim=1)
        attention_mask = torch.cat([prompt_mask[:, first:], completion_mask[:, :width]], dim=1)
        return input_ids, attention_mask, width


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask `(B, C)` that is 1 up to and including the first EOS, and `(B,)` truncated flags."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))  # (B, C)
    has_eos = is_eos.any(-1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(-1), completion_ids.shape[1])  # (B,)
    positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)[None, :]
    mask = (positions <= first_eos[:, None]).long()
    return mask, ~has_eos


# generate() would otherwise take these from the checkpoint's generation_config.json and apply
# them before the GroupSampler: rollouts drawn from another distribution than the one trained.
# Each is set to the value that leaves the logits as they are (TRL does the same).
NEUTRAL_LOGITS_SETTINGS = dict(
    repetition_penalty=1.0,
    encoder_repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0,
    temperature=1.0,
    top_k=None,
    top_p=1.0,
    min_p=None,
    typical_p=1.0,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    renormalize_logits=False,
    remove_invalid_values=False,
    diversity_penalty=0.0,
    length_penalty=1.0,
    num_beams=1,
)


@contextmanager
def only_special_tokens_inherited(model):
    """``model.generation_config`` reduced to its special tokens while ``generate`` runs.

    ``generate`` fills every field its config leaves ``None`` from ``model.generation_config``
    (transformers ``generation/utils.py``, "First set values from the loaded
    `self.generation_config`"), and for ``bad_words_ids``, ``suppress_tokens``,
    ``begin_suppress_tokens``, ``sequence_bias``, ``forced_bos/eos_token_id``,
    ``exponential_decay_length_penalty``, ``guidance_scale`` or a watermark, ``None`` is the
    only neutral value there is, so the checkpoint's own settings are what must go.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the LM
    saved = inner.generation_config
    inner.generation_config = GenerationConfig(
        eos_token_id=saved.eos_token_id, pad_token_id=saved.pad_token_id, bos_token_id=saved.bos_token_id
    )
    try:
        yield
    finally:
        inner.generation_config = saved


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = ids if ids is not None else tokenizer.eos_token_id
    return [ids] if isinstance(ids, int) else list(ids)


@torch.no_grad()
def generate_rollout(
    model,
    tokenizer,
    prompt_texts: list[str],
    seeds: list[int],
    num_generations: int,
    max_completion_length: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_completion_length: int = 0,
) -> Rollout:
    """Sample ``num_generations`` completions for each prompt; ``seeds[i]`` seeds prompt ``i``."""
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompt_texts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]  # (N, P)

    # Prefill all but the last prompt token once per prompt, then share the cache across the group.
    cache = DynamicCache(config=model.config)
    positions = (prompt_mask.cumsum(-1) - 1).clamp_min(0)
    model(
        input_ids=prompt_ids[:, :-1],
        attention_mask=prompt_mask[:, :-1],
        position_ids=positions[:, :-1],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_repeat_interleave(num_generations)
    prompt_ids = prompt_ids.repeat_interleave(num_generations, dim=0)  # (B, P)
    prompt_mask = prompt_mask.repeat_interleave(num_generations, dim=0)

    eos_ids = eos_token_ids(model, tokenizer)
    sampler = GroupSampler(seeds, num_generations, temperature=temperature, top_k=top_k, top_p=top_p)
    config = GenerationConfig(
        do_sample=False,  # the GroupSampler samples; greedy decoding just keeps its choice
        max_new_tokens=max_completion_length,
        min_new_tokens=min_completion_length or None,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        **NEUTRAL_LOGITS_SETTINGS,
    )
    was_training = model.training
    model.eval()
    with only_special_tokens_inherited(model):
        output = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            cache=cache,
            generation_config=config,
            logits_processor=[sampler],
        )
    model.train(was_training)
    completion_ids = output[:, prompt_ids.shape[1] :]  # (B, C)
    completion_mask, truncated = completion_mask_from_ids(completion_ids, eos_ids)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    logprobs = sampler.sampling_logprobs()[:, : completion_ids.shape[1]] * completion_mask
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, logprobs, truncated)
