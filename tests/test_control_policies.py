"""MlpPolicy's distributions against torch.distributions, its init, and Box-action clipping."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium", reason="llm_rl.control needs the control extra: pip install -e '.[control]'")
from gymnasium.spaces import Box, Discrete  # noqa: E402

from llm_rl.control.policies import Categorical, DiagGaussian, MlpPolicy  # noqa: E402


@pytest.mark.parametrize("seed", range(3))
def test_categorical_log_prob_and_entropy_match_torch(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, 5, generator=g) * 3
    actions = torch.randint(0, 5, (16,), generator=g)
    ref = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(Categorical.log_prob(logits, actions), ref.log_prob(actions))
    torch.testing.assert_close(Categorical.entropy(logits), ref.entropy())
    assert Categorical.mode(logits).tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("seed", range(3))
def test_gaussian_log_prob_and_entropy_match_torch(seed):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(16, 3, generator=g)
    log_std = torch.randn(3, generator=g) * 0.5
    actions = torch.randn(16, 3, generator=g) * 2
    ref = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(DiagGaussian.log_prob(mean, log_std, actions), ref.log_prob(actions).sum(-1))
    torch.testing.assert_close(DiagGaussian.entropy(mean, log_std), ref.entropy().sum(-1))


def test_categorical_sampling_follows_the_probabilities():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20_000, 3)
    freq = torch.bincount(Categorical.sample(logits), minlength=3).float() / 20_000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)


def test_gaussian_sampling_moments():
    torch.manual_seed(0)
    mean, log_std = torch.tensor([[1.0, -2.0]]).expand(50_000, 2), torch.log(torch.tensor([0.5, 2.0]))
    x = DiagGaussian.sample(mean, log_std)
    torch.testing.assert_close(x.mean(0), torch.tensor([1.0, -2.0]), atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), torch.tensor([0.5, 2.0]), atol=0.03, rtol=0)


def test_policy_shapes_init_and_separate_networks():
    torch.manual_seed(0)
    obs_space = Box(-1, 1, (4,), np.float32)
    policy = MlpPolicy(obs_space, Discrete(2), net_arch=[32, 16], activation_fn="relu")
    assert [m.out_features for m in policy.actor if isinstance(m, torch.nn.Linear)] == [32, 16, 2]
    assert isinstance(policy.actor[1], torch.nn.ReLU)
    assert all(a is not b for a, b in zip(policy.actor.parameters(), policy.critic.parameters()))
    # Orthogonal init: W W^T = gain^2 I for a wide-to-narrow layer; biases 0.
    w = policy.actor[-1].weight  # (2, 16), gain 0.01
    torch.testing.assert_close(w @ w.T, 1e-4 * torch.eye(2), atol=1e-7, rtol=0)
    w = policy.critic[-1].weight  # (1, 16), gain 1
    torch.testing.assert_close((w @ w.T).squeeze(), torch.tensor(1.0))
    assert all((m.bias == 0).all() for m in policy.actor if isinstance(m, torch.nn.Linear))
    obs = torch.randn(7, 4)
    actions, logp = policy.act(obs)
    assert actions.shape == (7,) and logp.shape == (7,) and policy.value(obs).shape == (7,)
    # Near-uniform first actions (head gain 0.01): log-probs close to log(1/2).
    assert torch.allclose(logp, torch.full((7,), math.log(0.5)), atol=0.05)


def test_gaussian_policy_has_state_independent_log_std_and_no_critic_when_asked():
    policy = MlpPolicy(Box(-1, 1, (3,), np.float32), Box(-2, 2, (2,), np.float32), log_std_init=-0.5, critic=False)
    assert policy.critic is None
    assert policy.log_std.shape == (2,) and torch.all(policy.log_std == -0.5)
    obs = torch.randn(5, 3)
    actions, logp = policy.act(obs)
    logp2, ent = policy.evaluate(obs, actions)
    torch.testing.assert_close(logp, logp2)
    assert ent.shape == (5,)
