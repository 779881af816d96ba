"""PPO and GRPO on gymnasium: short real runs, truncation bootstrap, groups, save/load, and every bad input."""

import json

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium", reason="llm_rl.control needs the control extra: pip install -e '.[control]'")
from gymnasium.spaces import Box, Dict, Discrete, MultiDiscrete  # noqa: E402
from gymnasium.vector import AutoresetMode  # noqa: E402

from llm_rl.control import GRPO, PPO, ConfigError, evaluate, make_vec_env  # noqa: E402


class Corridor(gym.Env):
    """obs = [t]; reward 1 per step; terminates at t == end, truncated by a TimeLimit wrapper if shorter."""

    observation_space = Box(-np.inf, np.inf, (1,), np.float32)
    action_space = Discrete(2)

    def __init__(self, end=1000):
        self.end, self.t = end, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)], np.float32), 1.0, self.t >= self.end, False, {}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny MLPs: one torch thread (more only add synchronisation, and thrash on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def params(model):
    return torch.cat([p.detach().flatten().clone() for p in model.policy.parameters()])


# -- short runs on real environments ---------------------------------------------------------


def test_ppo_cartpole_2000_steps_trains_and_logs(tmp_path, capsys):
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, n_envs=4, batch_size=64, seed=0, verbose=1, log_dir=tmp_path)
    before = params(model)
    model.learn(2_000)
    assert model.num_timesteps == 2_048  # whole rollouts of 64 x 4
    assert not torch.equal(before, params(model))
    assert len(model.ep_returns) > 10 and all(r >= 8 for r in model.ep_returns)  # CartPole lasts >= 8 steps
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and lines[-1]["time/total_timesteps"] == 2_048
    for key in (
        "rollout/ep_rew_mean",
        "time/fps",
        "train/policy_loss",
        "train/value_loss",
        "train/approx_kl",
        "train/clip_fraction",
        "train/explained_variance",
        "train/entropy",
    ):
        assert np.isfinite(lines[-1][key]), key
    out = capsys.readouterr().out
    assert "ep_rew_mean" in out and "explained_variance" in out and out.count("total_timesteps") == 8


def test_ppo_pendulum_2000_steps_gaussian_actions_within_bounds():
    model = PPO("MlpPolicy", "Pendulum-v1", n_steps=250, n_envs=2, batch_size=100, seed=0)
    before = params(model)
    model.learn(2_000)
    assert model.num_timesteps == 2_000 and not torch.equal(before, params(model))
    assert len(model.ep_returns) == 10  # Pendulum always truncates at 200 steps: 2 envs x 1000 steps
    obs = np.zeros((50, 3), np.float32)
    actions, state = model.predict(obs)  # stochastic: samples outside [-2, 2] are clipped
    assert state is None and actions.shape == (50, 1) and actions.min() >= -2 and actions.max() <= 2


def test_grpo_cartpole_2000_steps(tmp_path):
    model = GRPO("MlpPolicy", "CartPole-v1", group_size=4, n_groups=2, batch_size=128, seed=0, log_dir=tmp_path)
    before = params(model)
    assert model.policy.critic is None
    model.learn(2_000)
    assert model.num_timesteps >= 2_000 and not torch.equal(before, params(model))
    assert len(model.history) % 8 == 0  # whole rounds of 2 groups x 4 episodes
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(line["train/policy_loss"]) and line["train/groups_with_signal"] > 0


def test_grpo_with_kl_to_the_initial_policy():
    model = GRPO("MlpPolicy", "CartPole-v1", group_size=2, n_groups=2, beta=0.1, kl_estimator="k3", seed=1, n_epochs=3)
    assert model.ref_policy is not None and not any(p.requires_grad for p in model.ref_policy.parameters())
    ref_before = torch.cat([p.flatten().clone() for p in model.ref_policy.parameters()])
    model.learn(300)
    assert torch.equal(ref_before, torch.cat([p.flatten() for p in model.ref_policy.parameters()]))  # frozen


def test_group_of_episodes_starts_from_identical_observations():
    model = GRPO("MlpPolicy", "CartPole-v1", group_size=4, n_groups=3, seed=0)
    obs = model.reset_groups().reshape(3, 4, -1)  # (groups, G, obs_dim)
    assert (obs == obs[:, :1]).all()  # the same start state within a group
    assert not np.allclose(obs[0, 0], obs[1, 0]) and not np.allclose(obs[1, 0], obs[2, 0])  # groups differ
    episodes = model.collect()
    first = episodes.obs[:12].reshape(3, 4, -1)  # time step 0 of every env, flattened time-major
    assert episodes.episode[:12].tolist() == list(range(12))
    assert (first == first[:, :1]).all()  # the episodes that were trained on start identically per group
    assert episodes.lengths.sum() == episodes.obs.shape[0]  # only the steps of the episodes, none after an end


def test_grpo_episodes_run_to_their_ends_and_carry_group_advantages():
    env = gym.make_vec("CartPole-v1", 4, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    model = GRPO("MlpPolicy", env, group_size=4, n_groups=1, seed=3)
    episodes = model.collect()
    assert (episodes.returns == episodes.lengths).all()  # CartPole pays 1 per step, to the end
    counts = torch.bincount(episodes.episode, minlength=4).numpy()
    assert (counts == episodes.lengths).all()


# -- the truncation bootstrap ---------------------------------------------------------------


def test_rollout_bootstraps_truncation_with_the_final_observation_and_not_termination():
    # TimeLimit(3) truncates each episode at t = 3 (final obs [3]); Corridor(end=2) would terminate at t = 2.
    trunc_env = gym.wrappers.TimeLimit(Corridor(), max_episode_steps=3)
    model = PPO("MlpPolicy", trunc_env, n_envs=1, n_steps=7, batch_size=7, seed=0)
    from llm_rl.control.buffer import RolloutBuffer

    buffer = RolloutBuffer(7, 1, (1,), (), model.device)
    model._obs, _ = model.env.reset(seed=0)
    model._ep_return, model._ep_length = np.zeros(1), np.zeros(1, dtype=np.int64)
    rollout, last_values = model.collect_rollout(buffer)
    assert rollout.truncated[:, 0].tolist() == [False, False, True, False, False, True, False]
    assert rollout.obs[:, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]  # the reset obs follows an episode end
    v_final = model.policy.value(torch.tensor([[3.0]])).item()
    assert rollout.final_values[2, 0].item() == pytest.approx(v_final)
    assert rollout.final_values[5, 0].item() == pytest.approx(v_final)
    assert last_values.item() == pytest.approx(model.policy.value(torch.tensor([[1.0]])).item())

    term_model = PPO("MlpPolicy", Corridor(end=2), n_envs=1, n_steps=4, batch_size=4, seed=0)
    buffer = RolloutBuffer(4, 1, (1,), (), term_model.device)
    term_model._obs, _ = term_model.env.reset(seed=0)
    term_model._ep_return, term_model._ep_length = np.zeros(1), np.zeros(1, dtype=np.int64)
    rollout, _ = term_model.collect_rollout(buffer)
    assert rollout.terminated[:, 0].tolist() == [False, True, False, True]
    assert not rollout.truncated.any()
    assert term_model.history == [(2, 2.0), (4, 2.0)]  # (timestep, return) of each finished episode


def test_normalize_shares_one_statistic_normalises_the_final_observation_and_logs_raw_returns():
    from llm_rl.control import normalize
    from llm_rl.control.envs import eval_env_like

    # Corridor obs = [t]; TimeLimit(3) truncates at t = 3, so every third step hands a raw final obs [3] to the wrapper
    raw = gym.vector.SyncVectorEnv([lambda: gym.wrappers.TimeLimit(Corridor(), max_episode_steps=3)] * 2,
                                   autoreset_mode=AutoresetMode.SAME_STEP)  # fmt: skip
    env = normalize(raw, gamma=0.9)
    model = PPO("MlpPolicy", env, n_steps=6, batch_size=6, seed=0)
    from llm_rl.control.buffer import RolloutBuffer

    buffer = RolloutBuffer(6, 2, (1,), (), model.device)
    model._obs, _ = model.env.reset(seed=0)
    model._ep_return, model._ep_length = np.zeros(2), np.zeros(2, dtype=np.int64)
    rollout, _ = model.collect_rollout(buffer)

    obs_norm = env.env  # RecordEpisodeStatistics -> NormalizeObservation -> NormalizeReward
    assert obs_norm.obs_rms.count == pytest.approx(1e-4 + 2 * 7)  # one statistic over both envs: reset + 6 steps
    # the final obs [3] is normalised with the statistics of its step (seen at steps 2 and 5), not passed raw
    assert rollout.truncated[:, 0].tolist() == [False, False, True, False, False, True]
    value_of_raw_3 = model.policy.value(torch.tensor([[3.0]])).item()
    assert rollout.final_values[2, 0].item() != pytest.approx(value_of_raw_3, abs=1e-4)
    assert abs(rollout.obs[:, 0, 0]).max() < 3  # every stored observation is normalised too
    # rewards are scaled (1 per step becomes 1 / std of the discounted return), logged returns stay raw
    assert not np.allclose(rollout.rewards.numpy(), 1.0)
    assert model.history == [(6, 3.0), (6, 3.0), (12, 3.0), (12, 3.0)]
    # evaluation copies the vector statistics, frozen
    evaluation = eval_env_like("CartPole-v1", env)
    assert isinstance(evaluation, gym.wrappers.NormalizeObservation) and not evaluation.update_running_mean
    np.testing.assert_array_equal(evaluation.obs_rms.mean, obs_norm.obs_rms.mean)


# -- predict, save, load ----------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_save_load_round_trip_gives_identical_deterministic_actions(tmp_path, env_id):
    model = PPO("MlpPolicy", env_id, n_steps=32, n_envs=2, batch_size=32, seed=0, net_arch="32,32", activation_fn="relu")
    model.learn(64)
    folder = model.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())  # plain JSON, no pickle anywhere
    assert meta["config"]["net_arch"] == "32,32" and meta["num_timesteps"] == 64
    loaded = PPO.load(folder)
    obs = np.random.default_rng(0).normal(size=(64, model.observation_space.shape[0])).astype(np.float32)
    a1, _ = model.predict(obs, deterministic=True)
    a2, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    single, _ = loaded.predict(obs[0], deterministic=True)  # one observation: a (1, obs_dim) matmul, same to float rounding
    np.testing.assert_allclose(single, a1[0], rtol=1e-5, atol=1e-6)
    assert loaded.config == model.config


def test_load_with_env_trains_on(tmp_path):
    model = GRPO("MlpPolicy", "CartPole-v1", group_size=2, n_groups=1, seed=0)
    model.learn(50)
    loaded = GRPO.load(model.save(tmp_path / "g"), env="CartPole-v1")
    steps = loaded.num_timesteps
    loaded.learn(50)
    assert loaded.num_timesteps > steps
    with pytest.raises(ValueError, match="holds a GRPO model; load it with GRPO.load"):
        PPO.load(tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="no saved model"):
        PPO.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="no environment"):
        GRPO.load(tmp_path / "g").learn(10)


def test_a_single_env_instance_is_copied_from_its_spec_or_used_alone():
    vec = make_vec_env(gym.make("CartPole-v1"), n_envs=3)
    assert vec.num_envs == 3 and vec.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert isinstance(vec, gym.vector.SyncVectorEnv)
    env = gym.make("CartPole-v1")
    assert make_vec_env(env, n_envs=1).envs[0] is env
    model = PPO(
        "MlpPolicy",
        gym.make_vec("CartPole-v1", 3, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}),
        n_steps=8,
        batch_size=8,
    )
    assert model.config.n_envs == 3  # a VectorEnv brings its own count


def test_evaluate_is_deterministic_and_seeded():
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=16, n_envs=2, batch_size=32, seed=0)
    assert evaluate(model, "CartPole-v1", 3, seed=5) == evaluate(model, "CartPole-v1", 3, seed=5)


def test_policy_kwargs_as_in_stable_baselines3():
    model = PPO("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [8], "activation_fn": torch.nn.ReLU})
    assert model.config.net_arch == "8" and model.config.activation_fn == "relu"
    assert [m.out_features for m in model.policy.actor if isinstance(m, torch.nn.Linear)] == [8, 2]


# -- bad input: a clear error naming the problem ----------------------------------------------


class DictObsEnv(Corridor):
    observation_space = Dict({"a": Box(-1, 1, (2,))})


class MultiDiscreteEnv(Corridor):
    action_space = MultiDiscrete([2, 3])


@pytest.mark.parametrize(
    "env,match",
    [(DictObsEnv(), "unsupported observation space Dict"), (MultiDiscreteEnv(), "unsupported action space MultiDiscrete")],
)
def test_unsupported_space_is_named(env, match):
    with pytest.raises(ValueError, match=match):
        PPO("MlpPolicy", env, n_envs=1, n_steps=8, batch_size=8)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "100"])
def test_total_timesteps_must_be_positive(bad):
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=8, n_envs=1, batch_size=8)
    with pytest.raises(ValueError, match="total_timesteps must be a positive int"):
        model.learn(bad)
    with pytest.raises(ValueError, match="total_timesteps must be a positive int"):
        GRPO("MlpPolicy", "CartPole-v1", group_size=2, n_groups=1).learn(bad)


def test_batch_size_must_divide_the_rollout():
    with pytest.raises(ConfigError, match=r"batch_size=100 does not divide n_steps \* n_envs = 128 \* 8 = 1024"):
        PPO("MlpPolicy", "CartPole-v1", n_steps=128, n_envs=8, batch_size=100)


def test_unknown_env_id_is_named():
    with pytest.raises(ValueError, match="unknown environment id 'CartPoel-v1'"):
        PPO("MlpPolicy", "CartPoel-v1")
    with pytest.raises(ValueError, match="unknown environment id 'CartPole-v9'"):
        GRPO("MlpPolicy", "CartPole-v9")


def test_other_bad_settings_are_named():
    with pytest.raises(ValueError, match="policy must be 'MlpPolicy'"):
        PPO("CnnPolicy", "CartPole-v1")
    with pytest.raises(ConfigError, match="unknown setting"):
        PPO("MlpPolicy", "CartPole-v1", n_step=128)
    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        PPO("MlpPolicy", "CartPole-v1", learning_rate=0)
    with pytest.raises(ConfigError, match="group_size must be an int >= 2"):
        GRPO("MlpPolicy", "CartPole-v1", group_size=1)
    with pytest.raises(ConfigError, match="activation_fn must be one of"):
        PPO("MlpPolicy", "CartPole-v1", activation_fn="sigmoidish")
    with pytest.raises(ValueError, match="autoreset_mode"):
        PPO("MlpPolicy", gym.make_vec("CartPole-v1", 2, vectorization_mode="sync"), n_steps=8, batch_size=8)
    with pytest.raises(ValueError, match="has 2 environments but 8 are needed"):
        GRPO(
            "MlpPolicy",
            gym.make_vec("CartPole-v1", 2, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}),
            group_size=4,
            n_groups=2,
        )
    with pytest.raises(ValueError, match=r"observation has shape \(3,\)"):
        PPO("MlpPolicy", "CartPole-v1").predict(np.zeros(3))


def test_progress_bar_and_control_imports_only_core(capsys):
    PPO("MlpPolicy", "CartPole-v1", n_steps=16, n_envs=2, batch_size=32).learn(64, progress_bar=True)
    assert "64/64" in capsys.readouterr().err  # tqdm's bar
    import ast
    from pathlib import Path

    import llm_rl.control

    for path in Path(llm_rl.control.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                if name.startswith("llm_rl") or name.startswith("reward_models"):
                    assert name.startswith(("llm_rl.core", "llm_rl.control")), f"{path.name} imports {name}"


def test_control_and_core_load_without_the_language_model_trainers():
    """``import llm_rl.control`` (and ``llm_rl.core``) brings no trainer, accelerate, peft or datasets: control
    imports the core only, and the package loads its trainers on first use (about 8 s of imports saved)."""
    import subprocess
    import sys

    heavy = ("llm_rl.trainers", "accelerate", "peft", "datasets")
    code = (f"import sys, llm_rl.control, llm_rl.core; print([m for m in {heavy!r} if m in sys.modules]); "
            "from llm_rl import GRPOConfig; print('llm_rl.trainers' in sys.modules)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["[]", "True"]
