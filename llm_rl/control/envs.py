"""Environments: build a gymnasium vector env from an id or an env, check its spaces, evaluate a policy.

Every rollout runs on a `gymnasium.vector.VectorEnv` in `AutoresetMode.SAME_STEP`: when a
sub-environment's episode ends, `step()` resets it at once and returns the final observation in
`infos["final_obs"]`, which the truncation bootstrap needs (Stable-Baselines3's DummyVecEnv works
the same way; gymnasium's default NEXT_STEP mode spends an extra, action-less step per episode).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Discrete
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv, VectorWrapper
from gymnasium.wrappers import vector as vector_wrappers
from gymnasium.wrappers.utils import RunningMeanStd

SUPPORTED_ACTION_SPACES = (Discrete, Box)


def make_vec_env(
    env: str | gym.Env | VectorEnv,
    n_envs: int = 1,
    wrappers: Sequence[Callable[[gym.Env], gym.Env]] | None = None,
    **make_kwargs,
) -> VectorEnv:
    """A SAME_STEP-autoreset vector env of `n_envs` environments.

    - an env id: `gymnasium.make_vec(id, n_envs)` (a SyncVectorEnv, as SB3's DummyVecEnv);
    - a `gymnasium.Env`: the instance itself for n_envs=1, else n_envs copies made from its spec;
    - a `VectorEnv` (SAME_STEP autoreset) with n_envs environments: used as it is.
    `wrappers` are applied to each sub-environment built here, e.g. `gymnasium.wrappers.NormalizeObservation`.
    """
    if isinstance(env, VectorEnv):
        if env.num_envs != n_envs:
            raise ValueError(f"the VectorEnv passed has {env.num_envs} environments but {n_envs} are needed; match them")
        mode = env.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"the VectorEnv passed uses autoreset_mode={mode}; llm_rl.control needs AutoresetMode.SAME_STEP (the final "
                "observation in infos, for the truncation bootstrap). Build it with gymnasium.make_vec(id, n, "
                'vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP}), or pass the env id'
            )
        vec = env
    elif isinstance(env, gym.Env) and n_envs == 1:
        if wrappers:
            raise ValueError("wrappers are applied to environments built from an id; wrap your gymnasium.Env yourself")
        vec = SyncVectorEnv([lambda: env], autoreset_mode=AutoresetMode.SAME_STEP)
    elif isinstance(env, gym.Env):
        # n_envs copies of the instance, rebuilt from its spec (id, kwargs and the wrappers gymnasium recorded).
        if env.spec is None:
            raise ValueError(
                f"n_envs={n_envs} copies of an env need its gymnasium spec, and this {type(env).__name__} has none "
                "(it was not made with gymnasium.make); pass n_envs=1, an env id, or a VectorEnv"
            )
        vec = gym.make_vec(
            env.spec,
            num_envs=n_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            wrappers=wrappers,
        )
    elif isinstance(env, str):
        try:
            gym.spec(env)
        except gym.error.Error as error:  # NameNotFound, VersionNotFound, DeprecatedEnv, ...
            raise ValueError(
                f"unknown environment id {env!r}: {error} (gymnasium.pprint_registry() lists the registered ids; "
                "an id from another package needs that package imported first)"
            ) from None
        vec = gym.make_vec(
            env,
            num_envs=n_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            wrappers=wrappers,
            **make_kwargs,
        )
    else:
        raise TypeError(
            f"env must be an env id string, a gymnasium.Env or a gymnasium.vector.VectorEnv, got {type(env).__name__}"
        )
    check_spaces(vec.single_observation_space, vec.single_action_space)
    return vec


class NormalizeObservation(VectorWrapper):
    """Observation normalisation over a whole SAME_STEP vector env, `infos["final_obs"]` included.

    One running mean and variance (gymnasium's `RunningMeanStd`) over every sub-environment, updated once
    per vector step, as Stable-Baselines3's VecNormalize. Under SAME_STEP autoreset the observation an
    episode ended on is in `infos["final_obs"]`; the truncation bootstrap gives it to the critic, which
    learnt on normalised observations, so it is normalised with the same statistics, without updating
    them (VecNormalize does the same). Written here because gymnasium's
    `gymnasium.wrappers.vector.NormalizeObservation` refuses SAME_STEP envs for that reason: it
    transforms only the returned observations.
    """

    def __init__(self, env: VectorEnv, epsilon: float = 1e-8):
        super().__init__(env)
        shape = env.single_observation_space.shape
        self.single_observation_space = Box(-np.inf, np.inf, shape, np.float32)
        self.observation_space = Box(-np.inf, np.inf, (env.num_envs, *shape), np.float32)
        self.obs_rms = RunningMeanStd(shape=shape)
        self.epsilon = epsilon
        self.update_running_mean = True

    def _normalized(self, observations: np.ndarray) -> np.ndarray:
        return ((observations - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.epsilon)).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        observations, infos = self.env.reset(seed=seed, options=options)
        if self.update_running_mean:
            self.obs_rms.update(observations)
        return self._normalized(observations), infos

    def step(self, actions):
        observations, rewards, terminations, truncations, infos = self.env.step(actions)
        if self.update_running_mean:
            self.obs_rms.update(observations)
        if "final_obs" in infos:
            final = infos["final_obs"].copy()
            for i in np.flatnonzero(infos["_final_obs"]):
                final[i] = self._normalized(final[i])
            infos = {**infos, "final_obs": final}
        return self._normalized(observations), rewards, terminations, truncations, infos


def normalize(env: VectorEnv, gamma: float = 0.99, epsilon: float = 1e-8) -> VectorEnv:
    """Observation and reward normalisation over a whole vector env (Stable-Baselines3's VecNormalize).

    `RecordEpisodeStatistics` (raw returns, read by the episode log) -> `NormalizeObservation` (above)
    -> `gymnasium.wrappers.vector.NormalizeReward` (rewards divided by the running standard deviation of
    the `gamma`-discounted return), all on the vector env: one update per vector step, where the same
    wrappers on each sub-environment update n_envs statistics one sample at a time.
    """
    env = vector_wrappers.RecordEpisodeStatistics(env)
    env = NormalizeObservation(env, epsilon=epsilon)
    return vector_wrappers.NormalizeReward(env, gamma=gamma, epsilon=epsilon)


def check_spaces(observation_space: gym.Space, action_space: gym.Space) -> None:
    """Refuse what MlpPolicy cannot handle, naming the space: observations must be a flat Box, actions Discrete or Box."""
    if not isinstance(observation_space, Box) or len(observation_space.shape) != 1:
        raise ValueError(
            f"unsupported observation space {observation_space}: MlpPolicy needs a 1-D Box; flatten it first "
            "(gymnasium.wrappers.FlattenObservation) or use another library for images / dicts"
        )
    if not isinstance(action_space, SUPPORTED_ACTION_SPACES) or (isinstance(action_space, Box) and len(action_space.shape) != 1):
        raise ValueError(
            f"unsupported action space {action_space}: llm_rl.control supports Discrete (categorical policy) and a 1-D Box "
            "(Gaussian policy); Dict, Tuple, MultiDiscrete and MultiBinary are not supported"
        )


def final_observations(obs: np.ndarray, done: np.ndarray, infos: dict) -> np.ndarray:
    """The observation each episode ended on: `infos["final_obs"]` where done, `obs` elsewhere (a copy)."""
    final = obs.copy()
    if done.any():
        for i in np.flatnonzero(done):
            final[i] = infos["final_obs"][i]
    return final


def episode_returns(infos: dict, done: np.ndarray, running: np.ndarray) -> np.ndarray:
    """Returns of the episodes that ended this step.

    A `gymnasium.wrappers.RecordEpisodeStatistics` inside the env (below reward normalisation) wins,
    so logged returns are the environment's own; otherwise `running`, the sum of the rewards seen.
    """
    if "episode" in infos:  # gymnasium.wrappers.vector.RecordEpisodeStatistics
        return np.where(infos["_episode"], infos["episode"]["r"], running)[done]
    final_info = infos.get("final_info", {})
    if "episode" in final_info:  # gymnasium.wrappers.RecordEpisodeStatistics on each sub-environment
        recorded = final_info["_episode"]
        return np.where(recorded, final_info["episode"]["r"], running)[done]
    return running[done]


def eval_env_like(env_id: str, train_env: VectorEnv | None = None) -> gym.Env:
    """`gym.make(env_id)`, with the observation normalisation of `train_env` copied and frozen: the
    vector env's own (`normalize`), else its first sub-environment's.

    Rewards are left raw, so evaluation returns are the environment's own.
    """
    source = _observation_normalizer(train_env)
    env = gym.make(env_id)
    if source is None:
        return env
    env = gym.wrappers.NormalizeObservation(env, epsilon=source.epsilon)
    env.obs_rms = copy.deepcopy(source.obs_rms)
    env.update_running_mean = False
    return env


def _observation_normalizer(train_env: VectorEnv | None):
    """The wrapper that holds `train_env`'s observation statistics: `normalize`'s, else the first
    sub-environment's `gymnasium.wrappers.NormalizeObservation`; None when there is neither."""
    source = train_env
    while isinstance(source, VectorWrapper):
        if isinstance(source, NormalizeObservation):
            return source
        source = source.env
    source = source.envs[0] if isinstance(source, SyncVectorEnv) else None
    while isinstance(source, gym.Wrapper):
        if isinstance(source, gym.wrappers.NormalizeObservation):
            return source
        source = source.env
    return None

def evaluate(model, env: str | gym.Env, n_episodes: int = 20, seed: int = 10_000, deterministic: bool = True) -> list[float]:
    """Return of each of `n_episodes` episodes of `model.predict` on `env` (an id or a gym.Env), seeded from `seed`."""
    if isinstance(env, str):
        env = gym.make(env)
    returns = []
    for episode in range(n_episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=deterministic)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns
