"""Policy/value losses and loss aggregation: hand values, loop references, shard combination."""

import math

import pytest
import torch

from llm_rl.core import aggregate_loss, aggregation_denominator, clipped_policy_loss, clipped_value_loss

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_aggregation_hand_values():
    assert aggregate_loss(LOSS, MASK, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate_loss(LOSS, MASK, "seq_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate_loss(LOSS, MASK, "seq_sum_norm").item() == pytest.approx(10 / 6)


def test_seq_sum_norm_divides_by_the_generation_budget_when_given():
    assert aggregate_loss(LOSS, MASK, "seq_sum_norm", max_length=5).item() == pytest.approx(10 / (2 * 5))
    assert aggregation_denominator(MASK, "seq_sum_norm", max_length=5).item() == 10.0
    assert aggregation_denominator(MASK, "seq_sum_norm").item() == 6.0  # B x the padded width
    with pytest.raises(ValueError, match="max_length=2 is shorter than the loss's 3 columns"):
        aggregate_loss(LOSS, MASK, "seq_sum_norm", max_length=2)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean", "seq_sum_norm"])
def test_micro_batches_trimmed_to_their_own_width_combine_to_the_whole_batch(mode):
    """What the trainers do: each micro-batch (or process) drops the columns that are padding in
    all its rows; weighting by the denominators recovers the whole batch's aggregate exactly."""
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 8, generator=g, dtype=torch.float64)
    mask = torch.arange(8)[None, :] < torch.tensor([8, 2, 1, 3, 0, 5])[:, None]
    whole = aggregate_loss(loss, mask, mode, max_length=10)
    parts = []
    for rows in (slice(0, 2), slice(2, 4), slice(4, 6)):
        width = int(mask[rows].sum(-1).max().clamp_min(1))  # 8, 3, 5 columns
        part_loss, part_mask = loss[rows, :width], mask[rows, :width]
        parts.append((aggregate_loss(part_loss, part_mask, mode, max_length=10),
                      aggregation_denominator(part_mask, mode, max_length=10)))  # fmt: skip
    combined = sum(value * d for value, d in parts) / sum(d for _, d in parts)
    assert combined.item() == pytest.approx(whole.item(), rel=1e-12)
    assert whole.item() == pytest.approx(_loop_aggregate(loss, mask, mode, max_length=10))


def test_unknown_aggregation_lists_choices():
    with pytest.raises(ValueError, match="seq_mean.*seq_sum_norm.*token_mean"):
        aggregate_loss(LOSS, MASK, "sum")


def _loop_aggregate(loss, mask, mode, max_length=None):
    B, T = loss.shape
    rows = [[loss[b, t].item() for t in range(T) if mask[b, t]] for b in range(B)]
    n_tokens = sum(len(r) for r in rows)
    if mode == "token_mean":
        return sum(map(sum, rows)) / max(n_tokens, 1)
    if mode == "seq_mean":
        return sum(sum(r) / len(r) if r else 0.0 for r in rows) / B
    return sum(map(sum, rows)) / (B * (max_length or T))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean", "seq_sum_norm"])
def test_aggregation_vs_loop(seed, mode):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randn(5, 6, generator=g, dtype=torch.float64)
    lengths = torch.randint(0, 7, (5,), generator=g)
    lengths[0] = 0  # an all-padding row
    mask = torch.arange(6)[None, :] < lengths[:, None]
    loss[~mask] = float("nan")  # padding must not leak
    expected = _loop_aggregate(loss, mask, mode)
    assert aggregate_loss(loss, mask, mode).item() == pytest.approx(expected)


def test_token_mean_over_two_shards_equals_global():
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(4, 8, generator=g, dtype=torch.float64)
    mask = torch.arange(8)[None, :] < torch.tensor([8, 7, 1, 2])[:, None]  # uneven shards
    global_value = aggregate_loss(loss, mask, "token_mean")
    # Each rank sends (its token mean * its token count, its token count); sum both, then divide.
    numerators, denominators = [], []
    for shard in (slice(0, 2), slice(2, 4)):
        n_tokens = mask[shard].sum()
        numerators.append(aggregate_loss(loss[shard], mask[shard], "token_mean") * n_tokens)
        denominators.append(n_tokens)
    combined = sum(numerators) / sum(denominators)
    torch.testing.assert_close(combined, global_value)
    # Averaging the shards' means is not the same thing when shards hold different token counts.
    mean_of_means = sum(n / d for n, d in zip(numerators, denominators)) / 2
    assert not torch.isclose(mean_of_means, global_value)


# ---- policy loss ----


def _one_token(log_ratio, advantage, **kwargs):
    logp = torch.tensor([[log_ratio]], requires_grad=True)
    loss, stats = clipped_policy_loss(logp, torch.zeros(1, 1), torch.tensor([advantage]), torch.ones(1, 1), **kwargs)
    loss.backward()
    return loss.item(), stats, logp.grad.item()


def test_policy_loss_hand_values_and_zero_gradient_when_clipped():
    # ratio 1.5, A = 1: -min(1.5, 1.2) = -1.2, clipped, no gradient.
    loss, stats, grad = _one_token(math.log(1.5), 1.0)
    assert loss == pytest.approx(-1.2) and stats["clip_fraction"].item() == 1.0 and grad == 0.0
    # ratio 0.5, A = -1: -min(-0.5, -0.8) = 0.8, clipped.
    loss, stats, grad = _one_token(math.log(0.5), -1.0)
    assert loss == pytest.approx(0.8) and stats["clip_fraction"].item() == 1.0 and grad == 0.0
    # ratio 1.5, A = -1: -min(-1.5, -1.2) = 1.5, not clipped; d/dlogp (-ratio * A) = ratio.
    loss, stats, grad = _one_token(math.log(1.5), -1.0)
    assert loss == pytest.approx(1.5) and stats["clip_fraction"].item() == 0.0 and grad == pytest.approx(1.5)
    # ratio 0.5, A = 1: -min(0.5, 0.8) = -0.5, not clipped.
    loss, stats, grad = _one_token(math.log(0.5), 1.0)
    assert loss == pytest.approx(-0.5) and stats["clip_fraction"].item() == 0.0 and grad == pytest.approx(-0.5)


def test_clip_higher_changes_the_result():
    # ratio 1.5, A = 1: symmetric 0.2 clips at 1.2; DAPO's eps_high=0.28 at 1.28; 0.6 not at all.
    assert _one_token(math.log(1.5), 1.0, eps_low=0.2)[0] == pytest.approx(-1.2)
    assert _one_token(math.log(1.5), 1.0, eps_low=0.2, eps_high=0.28)[0] == pytest.approx(-1.28)
    loss, stats, grad = _one_token(math.log(1.5), 1.0, eps_low=0.2, eps_high=0.6)
    assert loss == pytest.approx(-1.5) and stats["clip_fraction"].item() == 0.0 and grad == pytest.approx(-1.5)
    # eps_high does not touch the lower side: ratio 0.5, A = -1 still clips at 0.8.
    assert _one_token(math.log(0.5), -1.0, eps_low=0.2, eps_high=0.6)[0] == pytest.approx(0.8)


def test_unclipped_policy_loss():
    loss, stats, grad = _one_token(math.log(3.0), 2.0, eps_low=None)
    assert loss == pytest.approx(-6.0) and stats["clip_fraction"].item() == 0.0 and grad == pytest.approx(-6.0)
    with pytest.raises(ValueError):
        _one_token(0.0, 1.0, eps_low=None, eps_high=0.3)


def _loop_policy_loss(logp, old, adv, mask, eps_low, eps_high):
    per_token, clipped, kl, ratios = [], [], [], []
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            r, a = math.exp(logp[b, t] - old[b, t]), adv[b, t].item()
            per_token.append(-min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a))
            clipped.append((r < 1 - eps_low and a < 0) or (r > 1 + eps_high and a > 0))
            kl.append(0.5 * (logp[b, t] - old[b, t]).item() ** 2)
            ratios.append(r)
    n = len(per_token)
    return sum(per_token) / n, sum(clipped) / n, sum(kl) / n, sum(ratios) / n


@pytest.mark.parametrize("seed", range(4))
def test_policy_loss_vs_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 6
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logp = old + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.arange(T)[None, :] < torch.tensor([T, 1, 3, 5])[:, None]
    logp_padded = logp.masked_fill(~mask, float("inf"))  # garbage on padding must not leak
    eps_low, eps_high = 0.2, [None, 0.28, 0.2, 0.5][seed]
    loss, stats = clipped_policy_loss(logp_padded, old, adv, mask, eps_low, eps_high)
    ref = _loop_policy_loss(logp, old, adv, mask, eps_low, eps_high if eps_high is not None else eps_low)
    assert loss.item() == pytest.approx(ref[0])
    assert stats["clip_fraction"].item() == pytest.approx(ref[1])
    assert stats["approx_kl"].item() == pytest.approx(ref[2])
    assert stats["ratio_mean"].item() == pytest.approx(ref[3])
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "seq_sum_norm"])
def test_sequence_advantages_broadcast_over_tokens(aggregation):
    g = torch.Generator().manual_seed(0)
    logp, old = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    adv = torch.tensor([1.0, -0.5, 2.0])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    per_seq, _ = clipped_policy_loss(logp, old, adv, mask, aggregation=aggregation)
    per_token, _ = clipped_policy_loss(logp, old, adv[:, None].expand(3, 4), mask, aggregation=aggregation)
    expected_per_token = -torch.minimum(
        (logp - old).exp() * adv[:, None], (logp - old).exp().clamp(0.8, 1.2) * adv[:, None]
    )
    torch.testing.assert_close(per_seq, per_token)
    torch.testing.assert_close(per_seq, aggregate_loss(expected_per_token, mask, aggregation))


# ---- value loss ----


def test_value_loss_hand_values():
    values = torch.tensor([[1.0, 0.6, 123.0]])
    old_values = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: (1 - 2)^2 = 1, clipped v = 0.7 -> 1.69 (used, clipped); token 1: 0.36 both ways.
    loss, stats = clipped_value_loss(values, old_values, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.36) / 2)
    assert stats["value_clip_fraction"].item() == pytest.approx(0.5)
    loss, stats = clipped_value_loss(values, old_values, returns, mask, clip=None)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.36) / 2)
    assert stats["value_clip_fraction"].item() == 0.0


def test_value_loss_gradient_zero_where_clipped():
    values = torch.tensor([[1.0, 0.6]], requires_grad=True)
    loss, _ = clipped_value_loss(values, torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.0]]), torch.ones(1, 2))
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.5 * 2 * 0.6 / 2]]))


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean"])
def test_micro_batches_weighted_by_denominator_equal_global_aggregate(mode):
    from llm_rl.core import aggregation_denominator

    torch.manual_seed(3)
    loss = torch.randn(6, 5)
    mask = torch.tensor([[1] * k + [0] * (5 - k) for k in (5, 1, 3, 0, 2, 4)])
    parts = [(loss[:2], mask[:2]), (loss[2:3], mask[2:3]), (loss[3:], mask[3:])]
    total = sum(aggregation_denominator(m, mode) for _, m in parts)
    combined = sum(aggregate_loss(x, m, mode) * aggregation_denominator(m, mode) / total for x, m in parts)
    assert torch.allclose(combined, aggregate_loss(loss, mask, mode), atol=1e-6)
    assert aggregation_denominator(mask, mode).item() == (mask.sum().item() if mode == "token_mean" else 6)


# ---- GSPO: sequence-level ratio and clip ----


def _rows(log_ratios, advantages, lengths, **kwargs):
    """Policy loss on rows whose old log-probs are 0, so logp is the log-ratio; returns (loss, stats, grad)."""
    T = max(lengths)
    logp = torch.zeros(len(lengths), T, dtype=torch.float64)
    for b, row in enumerate(log_ratios):
        logp[b, : len(row)] = torch.tensor(row, dtype=torch.float64)
    logp.requires_grad_(True)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    loss, stats = clipped_policy_loss(logp, torch.zeros_like(logp), torch.tensor(advantages, dtype=torch.float64), mask,
                                      **kwargs)  # fmt: skip
    loss.backward()
    return loss, stats, logp.grad


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "seq_sum_norm"])
def test_sequence_ratio_equals_token_ratio_when_all_tokens_agree(aggregation):
    rows, lengths, adv = [[0.1, 0.1, 0.1], [-0.3, -0.3], [0.5]], [3, 2, 1], [1.0, -2.0, 0.5]
    token = _rows(rows, adv, lengths, aggregation=aggregation)
    sequence = _rows(rows, adv, lengths, aggregation=aggregation, importance_sampling_level="sequence")
    torch.testing.assert_close(sequence[0], token[0])
    torch.testing.assert_close(sequence[2], token[2])
    for key in ("clip_fraction", "approx_kl", "ratio_mean"):
        torch.testing.assert_close(sequence[1][key], token[1][key])


def test_sequence_level_hand_values_clip_and_gradient():
    # row 0: log-ratios [0.1, 0.3] -> s = exp(0.2) = 1.221 > 1.2 with A > 0: clipped as a whole sequence,
    # though token 0 alone (1.105) would not be; row 1: [0.0, -0.1, 0.1] -> s = 1, unclipped.
    loss, stats, grad = _rows([[0.1, 0.3], [0.0, -0.1, 0.1]], [1.0, -1.0], [2, 3], aggregation="seq_mean",
                              importance_sampling_level="sequence")  # fmt: skip
    assert loss.item() == pytest.approx((-1.2 + 1.0) / 2)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 5)  # the two tokens of row 0, of 5
    assert stats["ratio_mean"].item() == pytest.approx((2 * math.exp(0.2) + 3 * 1.0) / 5)
    assert stats["approx_kl"].item() == pytest.approx(0.5 * (0.01 + 0.09 + 0.0 + 0.01 + 0.01) / 5)  # per token
    assert (grad[0] == 0).all()  # the clipped sequence gives no gradient
    # row 1: loss/2 = -A s_1 / 2, d s_1 / d logp_t = s_1 / 3 (GSPO: s * mean_t grad logp) -> 1 * 1 / 3 / 2
    torch.testing.assert_close(grad[1], torch.full((3,), 1 / 6, dtype=torch.float64))


def _loop_sequence_policy_loss(log_ratios, adv, eps_low, eps_high):
    """seq_mean GSPO loss, loop form: one ratio, one clip per sequence (arXiv 2507.18071, eq. 5)."""
    total, clipped_tokens, tokens = 0.0, 0, 0
    for row, a in zip(log_ratios, adv):
        if not row:
            continue  # an all-padding row adds 0 but counts as one of the rows
        s = math.exp(sum(row) / len(row))
        total += -min(s * a, min(max(s, 1 - eps_low), 1 + eps_high) * a)
        clipped_tokens += len(row) * ((s < 1 - eps_low and a < 0) or (s > 1 + eps_high and a > 0))
        tokens += len(row)
    return total / len(log_ratios), clipped_tokens / tokens


@pytest.mark.parametrize("seed", range(4))
def test_sequence_level_vs_loop(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 1, 0, 3, 4]  # a single token and an all-padding row among them
    rows = [(1e-3 * torch.randn(n, generator=g, dtype=torch.float64)).tolist() for n in lengths]
    adv = torch.randn(len(rows), generator=g, dtype=torch.float64).tolist()
    loss, stats, grad = _rows(rows, adv, lengths, eps_low=3e-4, eps_high=4e-4, aggregation="seq_mean",
                              importance_sampling_level="sequence")  # fmt: skip
    expected_loss, expected_clip = _loop_sequence_policy_loss(rows, adv, 3e-4, 4e-4)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert stats["clip_fraction"].item() == pytest.approx(expected_clip)
    assert torch.isfinite(grad).all() and (grad[2] == 0).all()


def test_sequence_level_ignores_garbage_on_padding_and_unknown_level_raises():
    logp = torch.tensor([[0.1, float("inf")], [float("-inf"), float("nan")]])
    mask = torch.tensor([[1, 0], [0, 0]])
    loss, stats = clipped_policy_loss(logp, torch.zeros(2, 2), torch.ones(2), mask, importance_sampling_level="sequence")
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    with pytest.raises(ValueError, match="sequence.*token"):
        clipped_policy_loss(logp, torch.zeros(2, 2), torch.ones(2), mask, importance_sampling_level="sentence")


# ---- CISPO ----


def _cispo_one_token(log_ratio, advantage, logp_value=-1.0, **kwargs):
    """logp = logp_value, old = logp_value - log_ratio; returns (loss, stats, d loss / d logp)."""
    from llm_rl.core import cispo_policy_loss

    logp = torch.tensor([[logp_value]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[logp_value - log_ratio]], dtype=torch.float64)
    loss, stats = cispo_policy_loss(logp, old, torch.tensor([advantage], dtype=torch.float64), torch.ones(1, 1), **kwargs)
    loss.backward()
    return loss.item(), stats, logp.grad.item()


def test_cispo_hand_values_cap_bounds_the_weight_but_keeps_the_gradient():
    # ratio 2 < cap 5: w = 2; loss = -2 * A * logp = -2 * 1 * -1 = 2; gradient -w * A = -2
    loss, stats, grad = _cispo_one_token(math.log(2.0), 1.0)
    assert loss == pytest.approx(2.0) and grad == pytest.approx(-2.0) and stats["clip_fraction"].item() == 0.0
    # ratio 8 > cap 5: w = 5 and the token still has a gradient (PPO's clip would give 0)
    loss, stats, grad = _cispo_one_token(math.log(8.0), 1.0)
    assert grad == pytest.approx(-5.0) and stats["clip_fraction"].item() == 1.0
    assert stats["ratio_mean"].item() == pytest.approx(8.0)
    assert _one_token(math.log(8.0), 1.0)[2] == 0.0
    # negative advantage, low ratio: no lower bound, w = 0.1; gradient -w * A = -0.1 * -2 = 0.2
    loss, stats, grad = _cispo_one_token(math.log(0.1), -2.0, ratio_cap=3.0)
    assert grad == pytest.approx(0.2) and stats["clip_fraction"].item() == 0.0


def test_cispo_gradient_equals_the_ppo_gradient_inside_the_trust_region():
    """d/dlogp of -ratio * A is -ratio * A: CISPO's -w * A * logp has the same gradient while w = ratio."""
    for log_ratio, adv in [(0.1, 1.0), (-0.1, -1.0), (0.05, -2.0)]:
        assert _cispo_one_token(log_ratio, adv)[2] == pytest.approx(_one_token(log_ratio, adv)[2])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "seq_sum_norm"])
def test_cispo_vs_loop(seed, aggregation):
    from llm_rl.core import cispo_policy_loss

    g = torch.Generator().manual_seed(seed)
    B, T, cap = 4, 5, 1.5
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logp = old + 0.6 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.arange(T)[None, :] < torch.tensor([T, 1, 0, 3])[:, None]
    loss, stats = cispo_policy_loss(logp.masked_fill(~mask, float("-inf")), old, adv, mask, cap, aggregation)
    per_token = torch.zeros(B, T, dtype=torch.float64)
    capped, n = 0, int(mask.sum())
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                r = math.exp(logp[b, t] - old[b, t])
                per_token[b, t] = -min(r, cap) * adv[b, t] * logp[b, t]
                capped += r > cap
    assert loss.item() == pytest.approx(_loop_aggregate(per_token, mask, aggregation))
    assert stats["clip_fraction"].item() == pytest.approx(capped / n)


def test_cispo_bad_cap_raises():
    from llm_rl.core import cispo_policy_loss

    with pytest.raises(ValueError, match="ratio_cap"):
        cispo_policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), ratio_cap=0.0)
