"""KL estimators, KL-shaped rewards and KL controllers: hand values and a Monte Carlo check."""

import math

import pytest
import torch

from llm_rl.core import AdaptiveKLController, FixedKLController, kl_penalized_rewards, kl_penalty


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_estimators_are_exactly_zero_when_policy_equals_reference(estimator):
    logp = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kl_penalty(logp, logp.clone(), estimator), torch.zeros(3, 5))


def test_estimator_hand_values():
    logp = torch.tensor([0.0, -1.0])
    ref = torch.tensor([-1.0, 0.0])  # logp - ref = [1, -1]
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.5, 0.5]))
    # k3 = exp(ref - logp) - (ref - logp) - 1: e^-1 + 1 - 1, e^1 - 1 - 1
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([math.exp(-1), math.e - 2]))


def test_k3_clamps_log_ratio_to_stay_finite():
    k3 = kl_penalty(torch.tensor([-200.0]), torch.tensor([0.0]), "k3")  # ref - logp = 200 -> 20
    torch.testing.assert_close(k3, torch.tensor([math.exp(20) - 21]))


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_estimators_match_exact_kl_in_expectation(estimator):
    g = torch.Generator().manual_seed(0)
    logp_all = torch.randn(6, generator=g, dtype=torch.float64).log_softmax(-1)  # policy
    logq_all = torch.randn(6, generator=g, dtype=torch.float64).log_softmax(-1)  # reference
    exact = (logp_all.exp() * (logp_all - logq_all)).sum()
    samples = torch.multinomial(logp_all.exp(), 200_000, replacement=True, generator=g)
    estimate = kl_penalty(logp_all[samples], logq_all[samples], estimator).mean()
    assert estimate.item() == pytest.approx(exact.item(), abs=0.01)


def test_kl_penalized_rewards_places_score_at_last_valid_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0, 5.0], [-1.0, 7.0, 7.0, 7.0], [0.0, 0.0, 0.0, 0.0]])
    ref = torch.tensor([[-2.0, -2.0, -1.0, 0.0], [-0.5, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    scores = torch.tensor([10.0, 20.0, 30.0])
    rewards = kl_penalized_rewards(scores, logp, ref, mask, kl_coef=0.1, estimator="k1")
    expected = torch.tensor(
        [
            [-0.1 * 1.0, 0.0, -0.1 * -2.0 + 10.0, 0.0],  # k1 = [1, 0, -2], score on t=2
            [-0.1 * -0.5 + 20.0, 0.0, 0.0, 0.0],  # single valid token
            [0.0, 0.0, 0.0, 0.0],  # no valid token: no score, no crash
        ]
    )
    torch.testing.assert_close(rewards, expected)


def test_adaptive_controller_moves_towards_target():
    up = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    up.update(current_kl=6.6, n_steps=100)  # e = 0.1
    assert up.value == pytest.approx(0.1 * (1 + 0.1 * 100 / 10_000))
    down = AdaptiveKLController(0.1, 6.0, 10_000)
    down.update(torch.tensor(5.4), n_steps=100)  # e = -0.1, tensor accepted
    assert down.value == pytest.approx(0.1 * (1 - 0.1 * 100 / 10_000))


def test_adaptive_controller_error_is_clipped():
    high = AdaptiveKLController(0.1, target=1.0, horizon=100)
    high.update(current_kl=50.0, n_steps=10)  # e = 49 -> 0.2
    assert high.value == pytest.approx(0.1 * 1.02)
    low = AdaptiveKLController(0.1, target=1.0, horizon=100)
    low.update(current_kl=0.0, n_steps=10)  # e = -1 -> -0.2
    assert low.value == pytest.approx(0.1 * 0.98)


def test_controllers_state_dict_round_trip():
    adaptive = AdaptiveKLController(0.2, 6.0, 1000)
    adaptive.update(12.0, 50)
    restored = AdaptiveKLController(0.2, 6.0, 1000)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value != 0.2
    assert all(type(v) is float for v in adaptive.state_dict().values())

    fixed = FixedKLController(0.05)
    fixed.update(100.0, 10)
    assert fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05
