"""Rollout engines: where a trainer's completions are sampled, behind one small interface.

A trainer asks its engine for one thing per step and tells it one thing per update:

- ``generate(prompt_texts, seeds, num_generations) -> Rollout``: ``num_generations``
  completions for each prompt, rows ``[i*G:(i+1)*G]`` for prompt ``i``, drawn from the
  stream seeded by ``seeds[i]``; with ``completion_mask`` (1 up to and including the first
  EOS), ``truncated`` flags, padding after EOS, and ``sampling_logprobs``: the log-prob of
  each drawn token under the distribution it was actually drawn from (temperature, then
  top-k/top-p truncation, renormalised).
- ``update_weights(model)`` after every optimizer step that changed the policy: the next
  ``generate`` must sample from these weights.

``ModelGenerateEngine`` is the first engine: ``model.generate`` with llm_rl's per-prompt
``GroupSampler`` (``generate_rollout``). With ``dtype=None`` it samples from the policy
itself, inside the trainer's ``generating()`` context (whole weights under FSDP2/ZeRO-3,
the training forward's autocast). With ``dtype=torch.bfloat16`` and float32 training it
samples from a bfloat16 copy of the policy's weights, refreshed before the first rollout
after each update: decoding, bound by reading the weights, reads half the bytes. Its
sampling log-probs then differ from the trainer's float32 ones by rounding; that is the
rollout-training mismatch which ``GRPOConfig.rollout_correction`` (TIS, or the sequence
mask) corrects.

What an inference engine (vLLM, SGLang) must provide to plug in here, beyond the two
methods: the same grouping and per-prompt seeding (so N processes sample what one would,
and a resumed run samples what it would have), sampling log-probs over the truncated
distribution it sampled (returned per token, not recomputed by the trainer), the EOS ids
of ``generation_config`` and none of its other logits settings (no repetition penalty
unless the trainer asks), and a weight update that takes a full state dict (gathered from
FSDP2/ZeRO-3 shards on the main process) without a restart. None is shipped: none can be
tested on this project's machines.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from llm_rl.rollout.generate import Rollout, generate_rollout


@dataclass(frozen=True)
class SamplingSettings:
    """What a rollout samples with; the trainer config's fields of the same names."""

    max_completion_length: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_completion_length: int = 0


class ModelGenerateEngine:
    """Rollouts by ``model.generate`` from the policy, or from a lower-precision copy of it."""

    def __init__(
        self,
        policy: Callable[[], torch.nn.Module],
        tokenizer,
        sampling: SamplingSettings,
        generating: Callable[[], AbstractContextManager],
        dtype: torch.dtype | None = None,
    ):
        self.policy, self.tokenizer, self.sampling, self.generating = policy, tokenizer, sampling, generating
        self.dtype = dtype
        self.copy: torch.nn.Module | None = None
        self.stale = True
        if dtype is not None:
            # parameters only: buffers such as the rotary frequencies keep their float32
            self.copy = copy.deepcopy(policy()).requires_grad_(False).eval()
            for parameter in self.copy.parameters():
                parameter.data = parameter.data.to(dtype)

    def update_weights(self, model: torch.nn.Module | None = None) -> None:
        """The policy changed: the copy (if any) is refreshed before the next rollout."""
        self.stale = True

    @torch.no_grad()
    def _refresh_copy(self) -> None:
        for target, source in zip(self.copy.parameters(), self.policy().parameters(), strict=True):
            target.copy_(source)  # cast to the copy's dtype
        self.stale = False

    def generate(self, prompt_texts: list[str], seeds: list[int], num_generations: int) -> Rollout:
        s = self.sampling
        args = (s.max_completion_length, s.temperature, s.top_p, s.top_k, s.min_completion_length)
        if self.copy is None:
            with self.generating():
                return generate_rollout(self.policy(), self.tokenizer, prompt_texts, seeds, num_generations, *args)
        if self.stale:
            self._refresh_copy()
        return generate_rollout(self.copy, self.tokenizer, prompt_texts, seeds, num_generations, *args)
