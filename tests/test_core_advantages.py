"""Group-relative advantages and GAE: hand values, slow loop references, edge cases."""

import math
import statistics

import pytest
import torch

from llm_rl.core import (
    gae,
    group_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    return_to_go,
    rloo_advantages,
)


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


# ---- RLOO ----


def test_rloo_hand_values():
    # G=4, one success: baseline of the success is 0, of each failure 1/3.
    torch.testing.assert_close(rloo_advantages([1.0, 0.0, 0.0, 0.0], 4), torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    # G=2: each sample's baseline is the other's reward.
    torch.testing.assert_close(rloo_advantages([1.0, 0.0, 0.3, 0.9], 2), torch.tensor([1.0, -1.0, -0.6, 0.6]))
    assert rloo_advantages([1, 0], 2).dtype == torch.float32  # integer rewards become float


def test_rloo_all_equal_group_is_exactly_zero():
    adv = rloo_advantages(torch.tensor([0.1, 0.1, 0.1, 0.7, 0.2, 0.7]), 3)
    assert (adv[:3] == 0).all() and (adv[3:] != 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_rloo_vs_loop(seed):
    g = torch.Generator().manual_seed(seed)
    G = 2 + seed
    rewards = torch.randn(3 * G, generator=g, dtype=torch.float64)
    expected = []
    for start in range(0, len(rewards), G):
        group = rewards[start : start + G].tolist()
        for i, r in enumerate(group):
            expected.append(r - statistics.fmean(group[:i] + group[i + 1 :]))
    torch.testing.assert_close(rloo_advantages(rewards, G), torch.tensor(expected, dtype=torch.float64))
    # = G / (G - 1) x the Dr. GRPO advantage
    torch.testing.assert_close(rloo_advantages(rewards, G), G / (G - 1) * group_advantages(rewards, G, scale="none"))


@pytest.mark.parametrize("group_size", [0, 1, 3])
def test_rloo_bad_group_size_raises(group_size):
    with pytest.raises(ValueError, match="group"):
        rloo_advantages(torch.zeros(4), group_size)


# ---- REINFORCE++ ----


def _loop_whiten(values, mask):
    """Per-token values -> whitened over all valid tokens (Bessel variance), 0 on padding."""
    valid = [values[b][t] for b in range(len(values)) for t in range(len(values[b])) if mask[b][t]]
    mean = statistics.fmean(valid)
    var = statistics.variance(valid) if len(valid) > 1 else 0.0
    return [[(values[b][t] - mean) / math.sqrt(var + 1e-8) if mask[b][t] else 0.0 for t in range(len(values[b]))]
            for b in range(len(values))]  # fmt: skip


def _padding_mask(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()


@pytest.mark.parametrize("seed", range(3))
def test_reinforce_pp_baseline_vs_loop(seed):
    g = torch.Generator().manual_seed(seed)
    G, T = 2 + seed, 5
    rewards = torch.randn(3 * G, generator=g, dtype=torch.float64)
    rewards[:G] = 0.5  # an all-equal group
    lengths = torch.randint(1, T + 1, (3 * G,), generator=g).tolist()
    lengths[G] = 0  # an all-padding row
    lengths[G + 1] = 1  # a single token
    mask = _padding_mask(lengths, T)
    centred = []
    for start in range(0, len(rewards), G):
        group = rewards[start : start + G].tolist()
        centred += [r - statistics.fmean(group) for r in group]
    per_token = [[centred[b]] * T for b in range(len(centred))]
    expected = torch.tensor(_loop_whiten(per_token, mask.tolist()), dtype=torch.float64)
    adv = reinforce_pp_baseline_advantages(rewards, G, mask)
    torch.testing.assert_close(adv, expected)
    assert (adv[mask == 0] == 0).all()
    # the all-equal group's centred reward is exactly 0, so after the global shift it is -mean / std
    mean = sum(c * n for c, n in zip(centred, lengths)) / sum(lengths)
    assert adv[0, 0].item() == pytest.approx(expected[0, 0].item()) and (adv[0, 0] > 0) == (mean < 0)


def test_reinforce_pp_baseline_hand_values():
    # G=2: centred rewards [0.5, -0.5] on 2 and 1 tokens, [0, 0] (all-equal) on 1 and 0 tokens
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [0, 0]])
    adv = reinforce_pp_baseline_advantages([1.0, 0.0, 2.0, 2.0], 2, mask)
    tokens = torch.tensor([0.5, 0.5, -0.5, 0.0])  # the valid tokens' centred rewards
    mean, var = tokens.mean(), tokens.var()
    expected = torch.tensor([[0.5, 0.5], [-0.5, 0.0], [0.0, 0.0], [0.0, 0.0]])
    expected = torch.where(mask.bool(), (expected - mean) / torch.sqrt(var + 1e-8), 0.0)
    torch.testing.assert_close(adv, expected)


@pytest.mark.parametrize("estimator", ["baseline", "no_baseline"])
def test_reinforce_pp_global_statistics_make_two_shards_whiten_as_one_batch(estimator):
    """mean_var (a pair, or a function of the values) carries the global batch's statistics."""
    g = torch.Generator().manual_seed(0)
    G, T = 2, 6
    rewards = torch.randn(8, generator=g, dtype=torch.float64)
    mask = _padding_mask([6, 2, 1, 4, 5, 3, 6, 1], T)
    token_rewards = torch.randn(8, T, generator=g, dtype=torch.float64)

    def run(rows, mean_var=None):
        if estimator == "baseline":
            return reinforce_pp_baseline_advantages(rewards[rows], G, mask[rows], mean_var=mean_var)
        return reinforce_pp_advantages(token_rewards[rows], mask[rows], gamma=0.9, mean_var=mean_var)[0]

    whole = run(slice(0, 8))
    values = {"baseline": lambda: group_advantages(rewards, G, scale="none")[:, None] * mask,
              "no_baseline": lambda: return_to_go(token_rewards, mask, 0.9)}[estimator]()  # the values before whitening
    from llm_rl.core import masked_mean, masked_var

    stats = (masked_mean(values, mask), masked_var(values, mask))
    shards = [run(slice(0, 4), stats), run(slice(4, 8), lambda x, m: stats)]  # a pair, and a function
    torch.testing.assert_close(torch.cat(shards), whole)
    alone = run(slice(0, 4))  # the shard's own statistics give another answer
    assert not torch.allclose(alone, whole[:4])


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_return_to_go_vs_loop(gamma):
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(4, 5, generator=g, dtype=torch.float64)
    mask = _padding_mask([5, 0, 1, 3], 5)
    expected = torch.zeros(4, 5, dtype=torch.float64)
    for b in range(4):
        n = int(mask[b].sum())
        for t in range(n):
            expected[b, t] = sum(gamma ** (s - t) * rewards[b, s].item() for s in range(t, n))
    torch.testing.assert_close(return_to_go(rewards.masked_fill(mask == 0, float("nan")), mask, gamma), expected)


def test_reinforce_pp_one_completion_per_prompt_hand_values():
    """No group: valid with G = 1. Scores on the last token, a KL penalty on each (as kl_penalized_rewards builds)."""
    from llm_rl.core import kl_penalized_rewards

    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    token_rewards = kl_penalized_rewards(torch.tensor([1.0, 0.0, 5.0]), logp, ref, mask, kl_coef=0.1)
    # row 0: k1 = [0.5, 0, -0.5] -> rewards [-0.05, 0, 0.05 + 1]; row 1: [0]; row 2: nothing
    advantages, returns = reinforce_pp_advantages(token_rewards, mask)
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.05, 1.05], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    valid = torch.tensor([1.0, 1.05, 1.05, 0.0])
    expected = torch.zeros(3, 3)
    expected[mask.bool()] = (valid - valid.mean()) / torch.sqrt(valid.var() + 1e-8)
    torch.testing.assert_close(advantages, expected)
