"""selective_log_softmax and entropy_from_logits against the naive full log-softmax."""

import math

import pytest
import torch

from llm_rl.core import entropy_from_logits, selective_log_softmax


def _naive_logps(logits, ids):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None]).squeeze(-1)


def _inputs(seed, dtype, B=3, T=5, V=50):
    g = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(B, T, V, generator=g)).to(dtype)
    ids = torch.randint(0, V, (B, T), generator=g)
    return logits, ids


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_selective_log_softmax_matches_naive(seed, dtype):
    logits, ids = _inputs(seed, dtype)
    out = selective_log_softmax(logits, ids)
    expected = _naive_logps(logits, ids)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.to(expected.dtype), expected, atol=1e-5, rtol=0)


def test_selective_log_softmax_hand_value():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # softmax = [1/4, 3/4]
    out = selective_log_softmax(logits, torch.tensor([[1]]))
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75)]]))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_log_softmax_gradient_matches_naive(seed, dtype):
    logits, ids = _inputs(seed, dtype)
    upstream = torch.randn(ids.shape, generator=torch.Generator().manual_seed(100 + seed))

    ours = logits.clone().requires_grad_()
    (selective_log_softmax(ours, ids) * upstream).sum().backward()
    # Reference gradient in float32 from the naive path, before any rounding to bf16.
    naive = logits.float().requires_grad_()
    (_naive_logps(naive, ids) * upstream).sum().backward()

    assert ours.grad.dtype == dtype
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-5, "rtol": 2**-8}
    torch.testing.assert_close(ours.grad.float(), naive.grad, **tol)


def test_selective_log_softmax_works_without_grad():
    logits, ids = _inputs(0, torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(selective_log_softmax(logits, ids), _naive_logps(logits, ids), atol=1e-5, rtol=0)


def _naive_entropy(logits):
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_entropy_matches_naive(seed, dtype):
    logits, _ = _inputs(seed, dtype)
    out = entropy_from_logits(logits, chunk_size=4)  # 15 rows -> 4 chunks, last one partial
    assert out.shape == (3, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, _naive_entropy(logits), atol=1e-5, rtol=1e-5)


def test_entropy_hand_values_and_shapes():
    uniform = torch.zeros(2, 8)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2,), math.log(8)))
    peaked = torch.tensor([0.0, -1e4, -1e4])
    assert entropy_from_logits(peaked).shape == ()
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_gradient_matches_naive():
    logits, _ = _inputs(1, torch.float64)
    ours, naive = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    entropy_from_logits(ours, chunk_size=2).sum().backward()
    (-(naive.softmax(-1) * naive.log_softmax(-1)).sum(-1)).sum().backward()
    torch.testing.assert_close(ours.grad, naive.grad)
