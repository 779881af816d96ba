"""Group-relative advantages and GAE: hand values, slow loop references, edge cases."""

import statistics

import pytest
import torch

from llm_rl.core import gae, group_advantages


def test_style_guide_example_scale_none():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=2, scale="none")
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5]
    assert group_advantages([1, 0, 0, 1], group_size=2, scale="none").tolist() == [0.5, -0.5, -0.5, 0.5]


def test_group_scale_hand_values():
    # G=2: [1, 0] has mean 0.5 and Bessel std sqrt(0.5).
    adv = group_advantages([1.0, 0.0], group_size=2, eps=1e-4)
    expected = 0.5 / (0.5**0.5 + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([expected, -expected]))
    # G=3: [0, 1, 2] has mean 1 and std 1.
    adv = group_advantages([0.0, 1.0, 2.0], group_size=3, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0]))


def test_batch_scale_hand_values():
    # Group means 0.5 and 2.5; std of the whole batch [0, 1, 2, 3] is sqrt(5/3).
    adv = group_advantages([0.0, 1.0, 2.0, 3.0], group_size=2, scale="batch", eps=1e-4)
    d = 0.5 / ((5 / 3) ** 0.5 + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([-d, d, -d, d]))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_equal_group_is_exactly_zero(scale):
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 1.0, 0.0, 0.3])
    adv = group_advantages(rewards, group_size=3, scale=scale)
    assert (adv[:6] == 0).all()
    assert (adv[6:] != 0).all()


def _loop_group_advantages(rewards, group_size, scale, eps):
    batch_std = statistics.stdev(rewards)
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = statistics.fmean(group)
        std = {"group": statistics.stdev(group), "batch": batch_std, "none": None}[scale]
        out += [(r - mean) if std is None else (r - mean) / (std + eps) for r in group]
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_vs_loop(seed, scale):
    g = torch.Generator().manual_seed(seed)
    group_size = 2 + seed % 3
    rewards = torch.randn(4 * group_size, generator=g, dtype=torch.float64)
    adv = group_advantages(rewards, group_size, scale=scale, eps=1e-4)
    expected = _loop_group_advantages(rewards.tolist(), group_size, scale, 1e-4)
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("group_size", [0, 1, 3])
def test_bad_group_size_raises(group_size):
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), group_size=group_size)


def test_unknown_scale_lists_choices():
    with pytest.raises(ValueError, match="batch.*group.*none"):
        group_advantages(torch.zeros(4), group_size=2, scale="rank")


# ---- GAE ----


def _loop_gae(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    adv, ret = torch.zeros(B, T, dtype=torch.float64), torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        length = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(length)):
            next_value = values[b, t + 1].item() if t + 1 < length else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
            ret[b, t] = last + values[b, t].item()
    return adv, ret


def test_gae_hand_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)  # Monte Carlo: returns all 1
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=0.95)  # deltas [0, 0, 0.5]
    torch.testing.assert_close(adv, torch.tensor([[0.95**2 * 0.5, 0.95 * 0.5, 0.5]]))


@pytest.mark.parametrize("seed", range(5))
def test_gae_vs_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 7
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[:3] = torch.tensor([0, 1, T])  # all-padding row, single token, no padding
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    gamma, lam = [(1.0, 0.95), (0.99, 0.9), (0.9, 1.0), (1.0, 0.0), (0.5, 0.5)][seed]
    rewards_with_garbage = rewards.masked_fill(mask == 0, float("nan"))  # padding must not leak
    adv, ret = gae(rewards_with_garbage, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = _loop_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
    assert (adv[0] == 0).all() and (ret[0] == 0).all()
    # single valid token: A = r - V
    assert adv[1, 0].item() == pytest.approx(rewards[1, 0].item() - values[1, 0].item())
