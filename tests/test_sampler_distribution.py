"""GroupSampler draws from, and reports log-probs of, the tempered and truncated distribution.

The reference distribution is written out by hand here: logits / T, keep the k largest,
then the smallest prefix of the sorted tokens whose mass reaches top_p (the first token
always stays), renormalise. Frequencies over many draws must match it within a tolerance
that a wrong temperature or a nucleus one token too wide or too narrow would break.
"""

import math

import pytest
import torch

from llm_rl.rollout import GroupSampler

LOGITS = torch.tensor([2.0, 1.2, 0.9, 0.3, -0.4, -1.0, -2.0, -3.0])


def expected_distribution(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, nucleus_shift: int = 0):
    """The truncated, renormalised distribution as a plain loop; ``nucleus_shift`` +-1 gives the off-by-one."""
    probs = torch.softmax(logits / temperature, -1)
    order = sorted(range(len(logits)), key=lambda i: -float(logits[i]))
    kept = order[:top_k] if top_k > 0 else order
    if top_p < 1.0:
        mass = sum(float(probs[i]) for i in kept)
        nucleus, running = [], 0.0
        for i in kept:  # renormalised over the top-k before the nucleus, as sampling does
            nucleus.append(i)
            running += float(probs[i]) / mass
            if running >= top_p:
                break
        kept = kept[: max(1, len(nucleus) + nucleus_shift)]
    out = torch.zeros_like(probs)
    total = sum(float(probs[i]) for i in kept)
    for i in kept:
        out[i] = float(probs[i]) / total
    return out


def _draw(temperature, top_k, top_p, draws=20_000):
    sampler = GroupSampler(list(range(draws)), group_size=1, temperature=temperature, top_k=top_k, top_p=top_p)
    scores = LOGITS.repeat(draws, 1)
    chosen = sampler(torch.zeros(draws, 1, dtype=torch.long), scores.clone())
    tokens = chosen.argmax(-1)
    assert torch.equal(chosen.max(-1).values, torch.zeros(draws))  # all mass on the drawn token
    return tokens, sampler.sampling_logprobs()[:, 0]


CASES = [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 0, 1.0), (0.7, 3, 1.0), (1.0, 0, 0.8), (0.7, 20, 0.8), (1.0, 5, 0.6)]


@pytest.mark.parametrize("temperature, top_k, top_p", CASES)
def test_sampling_logprobs_are_the_truncated_renormalised_distributions(temperature, top_k, top_p):
    tokens, logprobs = _draw(temperature, top_k, top_p, draws=64)
    expected = expected_distribution(LOGITS, temperature, top_k, top_p)
    assert torch.allclose(logprobs, expected[tokens].log(), atol=1e-5)
    assert (expected[tokens] > 0).all()  # nothing outside the truncation is ever drawn


@pytest.mark.parametrize("temperature, top_k, top_p", CASES)
def test_token_frequencies_match_the_distribution_and_its_mistakes_would_not(temperature, top_k, top_p):
    draws = 20_000
    tokens, _ = _draw(temperature, top_k, top_p, draws)
    frequencies = torch.bincount(tokens, minlength=len(LOGITS)).float() / draws
    expected = expected_distribution(LOGITS, temperature, top_k, top_p)
    # 4.5 binomial standard deviations per token (plus a floor): a wrong test here fails about once in 10^4 runs
    tolerance = 4.5 * (expected * (1 - expected) / draws).sqrt() + 1e-3
    assert ((frequencies - expected).abs() <= tolerance).all(), (frequencies, expected)

    mistakes = {"temperature 1 instead of T" if temperature != 1 else "temperature 0.7 instead of 1":
                expected_distribution(LOGITS, 1.0 if temperature != 1 else 0.7, top_k, top_p)}
    if top_p < 1.0:
        for shift in (-1, 1):
            wrong = expected_distribution(LOGITS, temperature, top_k, top_p, nucleus_shift=shift)
            if not torch.equal(wrong > 0, expected > 0):
                mistakes[f"nucleus off by {shift}"] = wrong
    for name, wrong in mistakes.items():  # the tolerance is tight enough to catch each mistake
        assert ((frequencies - wrong).abs() > tolerance).any(), name


def test_top_p_keeps_the_first_token_even_when_it_alone_exceeds_the_mass():
    tokens, logprobs = _draw(1.0, 0, 0.05, draws=256)
    assert (tokens == 0).all() and torch.allclose(logprobs, torch.zeros(256), atol=1e-6)


def test_the_sampling_temperature_is_the_one_the_logprobs_use():
    _, logprobs = _draw(0.5, 0, 1.0, draws=8)
    tokens, _ = _draw(0.5, 0, 1.0, draws=8)
    assert torch.allclose(logprobs, torch.log_softmax(LOGITS / 0.5, -1)[tokens], atol=1e-5)
    assert not math.isclose(float(logprobs.sum()), float(torch.log_softmax(LOGITS, -1)[tokens].sum()), abs_tol=1e-3)
