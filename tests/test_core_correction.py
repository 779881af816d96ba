"""Rollout-training mismatch correction: hand values, a loop reference, edge cases."""

import math

import pytest
import torch

from llm_rl.core import rollout_correction


def _log_ratios(rows, T=None):
    """Per-row log-ratios -> (train, rollout, mask), with rollout = -1 everywhere."""
    T = T or max(len(r) for r in rows)
    train = torch.full((len(rows), T), float("nan"))  # garbage on padding must not leak
    for b, row in enumerate(rows):
        train[b, : len(row)] = torch.tensor(row) - 1.0
    mask = torch.arange(T)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    return train, torch.full((len(rows), T), -1.0), mask


def test_token_truncate_hand_values():
    train, rollout, mask = _log_ratios([[math.log(0.5), math.log(3.0)], [0.0]])
    weights, stats = rollout_correction(train, rollout, mask, "token_truncate", cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[0.5, 2.0], [1.0, 0.0]]))
    assert stats["mean_ratio"].item() == pytest.approx((0.5 + 3.0 + 1.0) / 3)
    assert stats["truncated_fraction"].item() == pytest.approx(1 / 3)
    assert "masked_fraction" not in stats


def test_sequence_mask_hand_values():
    # sequence ratios: 1.5 (kept), 3 (out), 1/3 (out), exactly 2 = cap (kept), one token of 0.6 (kept), no token
    rows = [[math.log(1.5) / 2] * 2, [math.log(3.0)], [-math.log(3.0) / 3] * 3, [math.log(2.0)], [math.log(0.6)], []]
    train, rollout, mask = _log_ratios(rows, T=3)
    weights, stats = rollout_correction(train, rollout, mask, "sequence_mask", cap=2.0)
    expected = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(weights, expected)
    assert stats["masked_fraction"].item() == pytest.approx(2 / 5)  # of the 5 rows that have a token
    assert stats["mean_ratio"].item() == pytest.approx((1.5 + 3.0 + 1 / 3 + 2.0 + 0.6) / 5, rel=1e-5)
    assert "truncated_fraction" not in stats


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mode", ["token_truncate", "sequence_mask"])
def test_rollout_correction_vs_loop(seed, mode):
    g = torch.Generator().manual_seed(seed)
    B, T, cap = 6, 5, 1.3
    rollout = -torch.rand(B, T, generator=g) * 3
    train = rollout + 0.3 * torch.randn(B, T, generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor([5, 0, 1, 3, 4, 2])[:, None]
    weights, stats = rollout_correction(train, rollout, mask, mode, cap)
    expected = torch.zeros(B, T)
    ratios, flagged = [], 0
    for b in range(B):
        n = int(mask[b].sum())
        token_ratios = [math.exp(train[b, t] - rollout[b, t]) for t in range(n)]
        if mode == "token_truncate":
            for t, r in enumerate(token_ratios):
                expected[b, t] = min(r, cap)
                ratios.append(r)
                flagged += r > cap
        elif n:
            r = math.prod(token_ratios)
            ratios.append(r)
            inside = 1 / cap <= r <= cap
            expected[b, :n] = float(inside)
            flagged += not inside
    torch.testing.assert_close(weights, expected)
    assert stats["mean_ratio"].item() == pytest.approx(sum(ratios) / len(ratios), rel=1e-5)
    key = "truncated_fraction" if mode == "token_truncate" else "masked_fraction"
    assert stats[key].item() == pytest.approx(flagged / len(ratios))


@pytest.mark.parametrize("mode", ["token_truncate", "sequence_mask"])
def test_weights_are_detached_finite_and_zero_on_padding(mode):
    train = torch.tensor([[50.0, 60.0, 0.0], [-80.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # huge ratios, a tiny one, an all-padding row
    weights, stats = rollout_correction(train, torch.zeros(3, 3), mask, mode, cap=2.0)
    assert not weights.requires_grad and all(not v.requires_grad for v in stats.values())
    assert torch.isfinite(weights).all() and all(torch.isfinite(v) for v in stats.values())
    assert (weights[mask == 0] == 0).all() and weights.max() <= 2.0
    assert (weights[2] == 0).all()


def test_identical_log_probs_give_weight_one():
    logp = -torch.rand(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    for mode in ("token_truncate", "sequence_mask"):
        weights, stats = rollout_correction(logp, logp.clone(), mask, mode, cap=1.0)  # cap 1: only exact agreement passes
        torch.testing.assert_close(weights, mask.float())
        assert stats["mean_ratio"].item() == 1.0


def test_bad_mode_and_cap_raise():
    logp, mask = torch.zeros(1, 1), torch.ones(1, 1)
    with pytest.raises(ValueError, match="sequence_mask.*token_truncate"):
        rollout_correction(logp, logp, mask, "sequence_truncate", 2.0)
    with pytest.raises(ValueError, match="cap must be >= 1"):
        rollout_correction(logp, logp, mask, "token_truncate", 0.5)
