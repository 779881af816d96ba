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


# top_p < 1 without top_k: the nucleus is first looked for among this many most likely tokens (a partial
# sort); only a row whose nucleus is wider (a flat distribution) pays for a sort of the whole vocabulary.
NUCLEUS_SEARCH = 1024


def _truncate(logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The tokens top-k / top-p keep: ``(candidate ids (B, K), their logits (B, K), -inf where dropped)``, or None (all V).

    Candidates come in descending order of logit. top-k keeps the k largest and every token
    tied with the k-th (as masking ``logits < k-th largest`` does); top-p then keeps the
    smallest prefix whose mass reaches ``top_p``: a token is dropped when the mass before it
    already does (the first always stays), the mass renormalised over the top-k.
    Cost: no sort at all when top_p == 1 (``topk`` for top_k > 0); with top_k > 0 the
    nucleus is found among the k only; with top_k == 0 among the ``NUCLEUS_SEARCH`` largest
    unless a row's nucleus is wider, then by a sort of the whole row set.
    """
    vocab = logits.shape[-1]
    if top_p >= 1.0 and not 0 < top_k < vocab:
        return None
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        width = int((logits >= kth).sum(-1).max())  # ties with the k-th stay too
        values, ids = torch.topk(logits, width, dim=-1)  # (B, K), descending
        values = values.masked_fill(values < kth, float("-inf"))
        mass = values.softmax(-1)  # renormalised over the top-k
    else:
        width = min(NUCLEUS_SEARCH, vocab)
        values, ids = torch.topk(logits, width, dim=-1)
        mass = (values - torch.logsumexp(logits, -1, keepdim=True)).exp()  # (B, K) of the whole distribution
        if width < vocab and bool((mass.sum(-1) < top_p).any()):  # some nucleus is wider: sort everything
            values, ids = torch.sort(logits, dim=-1, descending=True)
            mass = values.softmax(-1)
    if top_p < 1.0:
        drop = (mass.cumsum(-1) - mass) >= top_p  # the mass before the token already reaches top_p
        values = values.masked_fill(drop, float("-inf"))
    return ids, values


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the tokens outside the top-k and outside the top-p nucleus; `(B, V)`."""
    kept = _truncate(logits, top_k, top_p)
    if kept is None:
        return logits
    ids, values = kept
    return torch.full_like(logits, float("-inf")).scatter_(-1, ids, values)


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
        logits = scores.float()  # (B, V); generate hands over a float32 copy, so this is no copy
        if self.temperature != 1.0:
            logits = logits / self.temperature
        # One uniform per vocabulary entry and row from the row's prompt stream, whatever is kept below:
        # the stream, hence the sample, does not depend on the truncation's shortcuts.
        uniform = torch.cat(
            [
                torch.rand((self.group_size, logits.shape[-1]), generator=gen, device=logits.device)
                for gen in self.generators
            ]
        )  # (B, V)
        kept = _truncate(logits, self.top_k, self.top_p)
        if kept is not None:  # only the kept candidates can win: their noise and logits, (B, K)
            ids, logits = kept
            uniform = uniform.gather(-1, ids)
        # Gumbel-max: argmax(logit + Gumbel noise) is a sample from softmax(logits) (log-softmax's
        # per-row constant does not move the argmax); -log(-log u) computed in place.
        gumbel = uniform.clamp_(1e-10, 1.0 - 1e-7).log_().neg_().log_().neg_()  # both logs stay finite
        choice = torch.argmax(gumbel.add_(logits), dim=-1, keepdim=True)  # (B, 1), among the candidates
        # log-prob under the tempered, truncated distribution: logit - logsumexp over what was kept
        self._logprobs.append((logits.gather(-1, choice) - torch.logsumexp(logits, -1, keepdim=True)).squeeze(-1))
        tokens = ids.gather(-1, choice) if kept is not None else choice  # (B, 1) vocabulary ids
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(-1, tokens, 0.0)

    def sampling_logprobs(self) -> torch.Tensor:
        return torch.stack(self._logprobs, dim=1) if self._logprobs else torch.zeros(len(self.seeds) * self.group_size, 0)
