"""Masked statistics: hand values, torch references on the selected entries, edge cases."""

import math

import pytest
import torch

from llm_rl.core import explained_variance, masked_mean, masked_var, masked_whiten

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_mean_hand_values():
    assert masked_mean(X, MASK).item() == pytest.approx(7 / 3)
    torch.testing.assert_close(masked_mean(X, MASK, dim=-1), torch.tensor([1.5, 4.0]))
    torch.testing.assert_close(masked_mean(X, MASK.bool(), dim=0), torch.tensor([2.5, 2.0, 0.0]))


def test_masked_mean_fully_masked_is_zero_not_nan():
    assert masked_mean(X, torch.zeros_like(MASK)).item() == 0.0
    row_means = masked_mean(X, torch.tensor([[1, 0, 0], [0, 0, 0]]), dim=-1)
    torch.testing.assert_close(row_means, torch.tensor([1.0, 0.0]))


def test_padding_nan_does_not_leak():
    x = X.clone()
    x[~MASK.bool()] = float("nan")
    assert masked_mean(x, MASK).item() == pytest.approx(7 / 3)
    assert not torch.isnan(masked_var(x, MASK))
    assert not torch.isnan(masked_whiten(x, MASK)).any()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_matches_torch_var_of_selected(seed, unbiased):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 6, generator=g) > 0.4
    mask[0, :2] = True  # at least two valid entries
    expected = x[mask].var(unbiased=unbiased)
    torch.testing.assert_close(masked_var(x, mask, unbiased=unbiased), expected)


def test_masked_var_with_fewer_than_two_entries_is_zero():
    assert masked_var(X, torch.tensor([[0, 1, 0], [0, 0, 0]])).item() == 0.0
    assert masked_var(X, torch.zeros_like(MASK)).item() == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_masked_whiten(seed):
    g = torch.Generator().manual_seed(seed)
    x = 3 + 2 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    mask[3, 1:] = False
    white = masked_whiten(x, mask)
    assert (white[~mask] == 0).all()
    assert white[mask].mean().item() == pytest.approx(0.0, abs=1e-9)
    assert white[mask].std().item() == pytest.approx(1.0, abs=1e-6)  # Bessel-corrected
    scaled = masked_whiten(x, mask, shift_mean=False)
    assert scaled[mask].mean().item() == pytest.approx(x[mask].mean().item())
    assert (scaled[~mask] == 0).all()


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0)
    values = torch.tensor([[1.0, 1.0, 2.0, 0.0]])  # R - V = [0, 1, 1], var 1/3; Var[R] = 1
    assert explained_variance(values, returns, mask).item() == pytest.approx(1 - 1 / 3)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask).item())


def test_masked_whiten_with_given_statistics_matches_its_own():
    torch.manual_seed(0)
    x, mask = torch.randn(3, 5), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    own = masked_whiten(x, mask)
    given = masked_whiten(x, mask, mean_var=(masked_mean(x, mask), masked_var(x, mask)))
    assert torch.allclose(own, given)
    shifted = masked_whiten(x, mask, mean_var=(torch.tensor(0.0), torch.tensor(1.0)))
    assert torch.allclose(shifted, x * mask, atol=1e-6)
