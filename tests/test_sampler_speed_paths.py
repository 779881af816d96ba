"""GroupSampler's shortcuts (no sort without top-p, top-p searched among the top-k or the 1024 largest,
noise and log-sum-exp over the kept tokens only) draw the same tokens, from the same per-prompt
streams, and report the same truncated log-probs as the plain full-vocabulary algorithm."""

from unittest import mock

import pytest
import torch

from llm_rl.rollout import GroupSampler
from llm_rl.rollout import sampler as sampler_module

VOCAB = 5_000  # wider than NUCLEUS_SEARCH, so the full-sort fallback is reachable


def reference(logits: torch.Tensor, generators: list, group_size: int, temperature: float, top_k: int, top_p: float):
    """The full-vocabulary algorithm written out: mask by a full sort, log-softmax, Gumbel-max on every token."""
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        values, order = torch.sort(logits, dim=-1, descending=True)
        probs = values.softmax(-1)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    logprobs = logits.log_softmax(-1)
    uniform = torch.cat([torch.rand((group_size, logits.shape[-1]), generator=g) for g in generators])
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
    tokens = torch.argmax(logprobs + gumbel, dim=-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1), logprobs


def _logits(kind: str, rows: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "peaked":  # a trained model: a few likely tokens
        return torch.randn(rows, VOCAB, generator=g) * 4
    return torch.randn(rows, VOCAB, generator=g) * 0.1  # random weights: almost flat, a nucleus of thousands


CASES = [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 50, 1.0), (0.7, 50, 0.95), (1.0, 0, 0.95), (0.8, 0, 0.6), (1.0, 3000, 0.9)]


@pytest.mark.parametrize("kind", ["peaked", "flat"])
@pytest.mark.parametrize("temperature, top_k, top_p", CASES)
def test_same_tokens_and_log_probs_as_the_full_vocabulary_algorithm(kind, temperature, top_k, top_p):
    seeds, group_size = [11, 12, 13, 14], 2
    sampler = GroupSampler(seeds, group_size, temperature=temperature, top_k=top_k, top_p=top_p)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    for step in range(3):  # decoding steps: each prompt's stream advances as the reference's
        logits = _logits(kind, len(seeds) * group_size, seed=step)
        chosen = sampler(torch.zeros(len(seeds) * group_size, 1, dtype=torch.long), logits.clone())
        assert torch.equal(chosen.max(-1).values, torch.zeros(len(chosen)))  # all mass on one token
        tokens, logprobs, _ = reference(logits, generators, group_size, temperature, top_k, top_p)
        assert torch.equal(chosen.argmax(-1), tokens)
        torch.testing.assert_close(sampler.sampling_logprobs()[:, step], logprobs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (50, 1.0), (50, 0.95), (0, 0.95)])
def test_truncation_keeps_exactly_the_reference_set_ties_included(top_k, top_p):
    logits = _logits("peaked", 6).bfloat16().float()  # bf16 logits: many exact ties
    logits[0, :60] = 9.0  # 60 tokens tied at the top: a top-50 keeps all of them
    _, _, expected = reference(logits, [torch.Generator() for _ in range(6)], 1, 1.0, top_k, top_p)
    masked = sampler_module._top_k_top_p(logits, top_k, top_p)
    kept, expected_kept = torch.isfinite(masked), torch.isfinite(expected)
    assert torch.equal(masked[kept], logits[kept])  # kept logits unchanged
    if top_p == 1.0:
        assert torch.equal(kept, expected_kept)
    else:  # which of several tied tokens the nucleus boundary keeps depends on the sort: compare the kept values
        for row in range(len(logits)):
            assert torch.equal(logits[row][kept[row]].sort().values, logits[row][expected_kept[row]].sort().values)


@pytest.mark.parametrize(
    "kind, top_k, top_p, sorts",
    [("flat", 0, 1.0, False), ("flat", 50, 1.0, False), ("flat", 50, 0.95, False), ("peaked", 0, 0.95, False),
     ("flat", 0, 0.95, True)],
)  # fmt: skip
def test_a_full_sort_only_for_a_nucleus_wider_than_the_search(kind, top_k, top_p, sorts):
    logits = _logits(kind, 4)
    sampler = GroupSampler([1, 2], 2, top_k=top_k, top_p=top_p)
    with mock.patch.object(torch, "sort", side_effect=AssertionError("full sort")) as patched:
        if sorts:
            with pytest.raises(AssertionError, match="full sort"):
                sampler(torch.zeros(4, 1, dtype=torch.long), logits.clone())
        else:
            sampler(torch.zeros(4, 1, dtype=torch.long), logits.clone())
    assert patched.called == sorts


def test_a_prompt_draws_the_same_tokens_alone_or_in_a_batch():
    logits = _logits("peaked", 6)
    together = GroupSampler([5, 6, 7], 2, top_k=50, top_p=0.9)(torch.zeros(6, 1, dtype=torch.long), logits.clone())
    alone = GroupSampler([6], 2, top_k=50, top_p=0.9)(torch.zeros(2, 1, dtype=torch.long), logits[2:4].clone())
    assert torch.equal(together[2:4].argmax(-1), alone.argmax(-1))
