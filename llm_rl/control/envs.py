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
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv

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
    final_info = infos.get("final_info", {})
    if "episode" in final_info:
        recorded = final_info["_episode"]
        return np.where(recorded, final_info["episode"]["r"], running)[done]
    return running[done]


def eval_env_like(env_id: str, train_env: VectorEnv | None = None) -> gym.Env:
    """`gym.make(env_id)`, with the observation normalisation of `train_env`'s first env copied and frozen.

    Rewards are left raw, so evaluation returns are the environment's own.
    """
    env = gym.make(env_id)
    source = train_env.envs[0] if isinstance(train_env, SyncVectorEnv) else None
    while isinstance(source, gym.Wrapper):
        if isinstance(source, gym.wrappers.NormalizeObservation):
            env = gym.wrappers.NormalizeObservation(env, epsilon=source.epsilon)
            env.obs_rms = copy.deepcopy(source.obs_rms)
            env.update_running_mean = False
            break
        source = source.env
    return env


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
