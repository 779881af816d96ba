"""episodic_gae: hand values, a plain per-environment loop, termination vs truncation, edge cases."""

import pytest
import torch

from llm_rl.core import episodic_gae, gae


def loop_gae(rewards, values, terminated, truncated, final_values, last_values, gamma, lam):
    """The textbook definition, one environment and one step at a time, in Python floats.

    A_t = sum_{k >= t, up to the episode's end or the rollout's} (gamma * lam)^(k - t) * delta_k
    """
    T, N = len(rewards), len(rewards[0])
    advantages = [[0.0] * N for _ in range(T)]
    for n in range(N):
        deltas = []
        for t in range(T):
            if terminated[t][n]:
                next_value = 0.0
            elif truncated[t][n]:
                next_value = final_values[t][n]
            elif t == T - 1:
                next_value = last_values[n]
            else:
                next_value = values[t + 1][n]
            deltas.append(rewards[t][n] + gamma * next_value - values[t][n])
        for t in range(T):
            total, weight = 0.0, 1.0
            for k in range(t, T):
                total += weight * deltas[k]
                if terminated[k][n] or truncated[k][n]:
                    break  # the episode ended at step k: nothing after it belongs to A_t
                weight *= gamma * lam
            advantages[t][n] = total
    return advantages


def random_rollout(T, N, seed, p_end=0.2):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g, dtype=torch.float64)
    values = torch.randn(T, N, generator=g, dtype=torch.float64)
    ends = torch.rand(T, N, generator=g) < p_end
    terminated = ends & (torch.rand(T, N, generator=g) < 0.5)
    truncated = ends & ~terminated
    final_values = torch.randn(T, N, generator=g, dtype=torch.float64)
    last_values = torch.randn(N, generator=g, dtype=torch.float64)
    return rewards, values, terminated, truncated, final_values, last_values


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (1.0, 1.0), (0.9, 0.0)])
def test_matches_plain_loop(seed, gamma, lam):
    rollout = random_rollout(T=17, N=4, seed=seed)
    advantages, returns = episodic_gae(*rollout, gamma=gamma, lam=lam)
    expected = torch.tensor(loop_gae(*(x.tolist() for x in rollout), gamma, lam), dtype=torch.float64)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + rollout[1])


def test_termination_hand_values():
    # One env, 3 steps, the pole falls at step 1, a new episode runs on past the rollout.
    r = torch.tensor([[1.0], [1.0], [1.0]])
    v = torch.tensor([[0.5], [0.2], [0.4]])
    term = torch.tensor([[False], [True], [False]])
    trunc = torch.zeros(3, 1, dtype=torch.bool)
    final = torch.full((3, 1), 99.0)  # never read: nothing is truncated
    last = torch.tensor([2.0])
    a, ret = episodic_gae(r, v, term, trunc, final, last, gamma=0.5, lam=0.5)
    d2 = 1 + 0.5 * 2.0 - 0.4  # bootstrap from last_values: the episode goes on
    d1 = 1 + 0.0 - 0.2  # terminated: next value 0
    d0 = 1 + 0.5 * 0.2 - 0.5
    torch.testing.assert_close(a, torch.tensor([[d0 + 0.25 * d1], [d1], [d2]]))
    torch.testing.assert_close(ret, a + v)


def test_truncation_bootstraps_from_final_value_not_next_episode():
    r = torch.tensor([[1.0], [1.0]])
    v = torch.tensor([[0.5], [7.0]])  # 7.0 is the value of the next episode's first observation
    trunc = torch.tensor([[True], [False]])
    term = torch.zeros(2, 1, dtype=torch.bool)
    final = torch.tensor([[3.0], [0.0]])  # V(final observation of the cut episode)
    a, _ = episodic_gae(r, v, term, trunc, final, torch.tensor([0.0]), gamma=0.9, lam=0.95)
    assert a[0, 0].item() == pytest.approx(1 + 0.9 * 3.0 - 0.5)  # not 1 + 0.9 * 7.0 - 0.5, not 1 - 0.5


def test_termination_wins_over_truncation():
    r, v = torch.ones(1, 1), torch.zeros(1, 1)
    both = torch.ones(1, 1, dtype=torch.bool)
    a, _ = episodic_gae(r, v, both, both, torch.full((1, 1), 5.0), torch.tensor([5.0]), gamma=1.0, lam=1.0)
    assert a.item() == 1.0


@pytest.mark.parametrize("where", [0, -1])
def test_boundary_at_first_and_last_step(where):
    for kind in ("terminated", "truncated"):
        rollout = list(random_rollout(T=6, N=3, seed=3, p_end=0.0))
        flag = torch.zeros(6, 3, dtype=torch.bool)
        flag[where] = True
        rollout[2 if kind == "terminated" else 3] = flag
        a, _ = episodic_gae(*rollout, gamma=0.97, lam=0.9)
        expected = torch.tensor(loop_gae(*(x.tolist() for x in rollout), 0.97, 0.9), dtype=torch.float64)
        torch.testing.assert_close(a, expected)
        if where == -1:  # an episode that ends on the last step never reads last_values
            changed = rollout[:5] + [rollout[5] + 100.0]
            torch.testing.assert_close(episodic_gae(*changed, gamma=0.97, lam=0.9)[0], a)


def test_rollout_ending_mid_episode_bootstraps_last_values():
    # No episode end at all: lam = 1 gives the discounted return plus gamma^(T - t) * last_value.
    T, gamma = 5, 0.9
    r = torch.arange(1.0, T + 1)[:, None]  # (T, 1)
    v = torch.zeros(T, 1)
    no = torch.zeros(T, 1, dtype=torch.bool)
    last = torch.tensor([10.0])
    _, ret = episodic_gae(r, v, no, no, torch.zeros(T, 1), last, gamma=gamma, lam=1.0)
    expected = [sum(gamma ** (k - t) * r[k, 0].item() for k in range(t, T)) + gamma ** (T - t) * 10.0 for t in range(T)]
    torch.testing.assert_close(ret[:, 0], torch.tensor(expected))


def test_agrees_with_completion_gae_when_each_row_terminates_at_its_end():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)  # (B, T)
    a_ref, r_ref = gae(rewards, values, torch.ones(3, 8), gamma=0.95, lam=0.9)
    term = torch.zeros(8, 3, dtype=torch.bool)
    term[-1] = True
    a, r = episodic_gae(rewards.T, values.T, term, torch.zeros_like(term), torch.zeros(8, 3), torch.zeros(3), 0.95, 0.9)
    torch.testing.assert_close(a.T, a_ref)
    torch.testing.assert_close(r.T, r_ref)


def test_bad_shapes_are_named():
    r = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="values must have the shape"):
        episodic_gae(r, torch.zeros(4, 3), r.bool(), r.bool(), r, torch.zeros(2))
    with pytest.raises(ValueError, match="last_values must be"):
        episodic_gae(r, r, r.bool(), r.bool(), r, torch.zeros(4))
    with pytest.raises(ValueError, match="time first"):
        episodic_gae(torch.zeros(4), r, r.bool(), r.bool(), r, torch.zeros(2))
