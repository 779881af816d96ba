"""Seeded sampling inside ``model.generate``, one random stream per prompt.

``model.generate`` samples with the global RNG, so the tokens a prompt gets depend on
which other prompts share its batch and on the process it runs in. ``GroupSampler`` is
a logits processor that does the sampling itself (temperature, top-k, top-p, then the
Gumbel-max trick) with one ``torch.Generator`` per prompt, and hands ``generate`` a
distribution with all its mass on the chosen token, which greedy decoding then picks.
So a prompt's G completions are the same in a batch of 1 or 64, on 1 process or 8 —
the basis of exact multi-process equivalence — and the processor records each token's
sampling log-prob on the way (no ``output_scores``: that would keep ``[B, V]`` per step).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the tokens outside the top-k and outside the top-p nucleus; `(B, V)`."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class GroupSampler(LogitsProcessor):
    """Samples the next token of row ``i`` from the stream of prompt ``i // group_size``.

    Use with ``generate(do_sample=False, logits_processor=[sampler])``: the processor
    returns ``0`` at the sampled token and ``-inf`` elsewhere, so greedy decoding keeps it.
    After generation, ``sampling_logprobs()`` gives ``(B, T)`` log-probs of the sampled
    tokens under the tempered, truncated distribution they were drawn from.
    """

    def __init__(self, seeds: list[int], group_size: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        self.seeds, self.group_size = list(seeds), group_size
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generators: list[torch.Generator] | None = None
        self._logprobs: list[torch.Tensor] = []

    def _make_generators(self, device: torch.device) -> list[torch.Generator]:
        return [torch.Generator(device=device).manual_seed(int(seed)) for seed in self.seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generators is None:
            self.generators = self._make_generators(scores.device)
        logits = _top_k_top_p(scores.float() / self.temperature, self.top_k, self.top_p)  # (B, V)
        logprobs = logits.log_softmax(-1)
        # Gumbel-max: argmax(log p + Gumbel noise) is a sample from p; one noise draw per prompt's group.
        uniform = torch.cat(
            [
                torch.rand((self.group_size, logits.shape[-1]), generator=gen, device=logits.device)
                for gen in self.generators
            ]
        ).clamp_(1e-10, 1.0 - 1e-7)  # (B, V); both logs below stay finite
        gumbel = -torch.log(-torch.log(uniform))
        tokens = torch.argmax(logprobs + gumbel, dim=-1)  # (B,)
        self._logprobs.append(logprobs.gather(-1, tokens[:, None]).squeeze(-1))
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(-1, tokens[:, None], 0.0)

    def sampling_logprobs(self) -> torch.Tensor:
        return torch.stack(self._logprobs, dim=1) if self._logprobs else torch.zeros(len(self.seeds) * self.group_size, 0)
