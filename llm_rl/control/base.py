"""What PPO and GRPO on gymnasium share: setup, predict, save/load, and the metrics log.

Stable-Baselines3's surface (`PPO("MlpPolicy", env).learn(n)`, `predict`, `save`, `load`),
without its class tower: one base class here, one `learn()` loop per algorithm beside it.
Saved models are a folder of `model.safetensors` (weights) and `config.json` (settings and
spaces); nothing is pickled.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import fields
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.spaces import Box, Discrete
from gymnasium.vector import VectorEnv
from safetensors.torch import load_file, save_file

from llm_rl.control.config import ConfigError
from llm_rl.control.envs import check_spaces, make_vec_env
from llm_rl.control.policies import ACTIVATIONS, MlpPolicy


def _space_to_json(space: gym.Space) -> dict:
    if isinstance(space, Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    # inf is not JSON: write it as the string "inf" / "-inf", which float() reads back.
    finite = lambda a: [float(x) if np.isfinite(x) else str(float(x)) for x in a.ravel()]  # noqa: E731
    return {
        "type": "Box",
        "low": finite(space.low),
        "high": finite(space.high),
        "shape": list(space.shape),
        "dtype": str(space.dtype),
    }


def _space_from_json(d: dict) -> gym.Space:
    if d["type"] == "Discrete":
        return Discrete(d["n"], start=d["start"])
    shape = tuple(d["shape"])
    low = np.array([float(x) for x in d["low"]], dtype=d["dtype"]).reshape(shape)
    high = np.array([float(x) for x in d["high"]], dtype=d["dtype"]).reshape(shape)
    return Box(low, high, shape=shape, dtype=np.dtype(d["dtype"]))


def _settings(config_class, policy_kwargs: dict | None, settings: dict) -> dict:
    """SB3-style `policy_kwargs={"net_arch": [64, 64], "activation_fn": nn.Tanh}` -> config fields."""
    settings = dict(settings)
    for key, value in (policy_kwargs or {}).items():
        if key == "net_arch":
            if isinstance(value, dict):
                raise ConfigError(
                    "Invalid config: net_arch as a dict (separate pi / vf widths) is not supported; pass one list, e.g. [64, 64]"
                )
            settings["net_arch"] = ",".join(str(int(w)) for w in value)
        elif key == "activation_fn":
            names = {cls: name for name, cls in ACTIVATIONS.items()}
            settings["activation_fn"] = (
                value if isinstance(value, str) else names.get(value, getattr(value, "__name__", str(value)))
            )
        elif key == "log_std_init":
            settings["log_std_init"] = value
        else:
            raise ConfigError(
                f"Invalid config: unknown policy_kwargs key {key!r}; supported: net_arch, activation_fn, log_std_init"
            )
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"Invalid config: unknown setting(s) {unknown} for {config_class.__name__}; the settings are {sorted(known)}"
        )
    return settings


class BaseAlgorithm:
    """Builds the env, the policy and the optimizer; predict, save, load, log. Subclasses add `learn`."""

    config_class: type
    uses_critic: bool = True

    def __init__(
        self, policy="MlpPolicy", env=None, *, log_dir: str | None = None, policy_kwargs: dict | None = None, **settings
    ):
        if policy != "MlpPolicy":
            raise ValueError(f"policy must be 'MlpPolicy' (the only policy llm_rl.control has), got {policy!r}")
        if isinstance(env, VectorEnv) and "n_envs" in {f.name for f in fields(self.config_class)}:
            settings.setdefault("n_envs", env.num_envs)  # a VectorEnv brings its own count, as in SB3
        self.config = self.config_class(**_settings(self.config_class, policy_kwargs, settings))
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if self.config.device == "auto" else self.config.device
        )
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.num_timesteps = 0
        self.ep_returns: deque[float] = deque(maxlen=100)  # last 100 episodes, as SB3's ep_rew_mean
        self.ep_lengths: deque[int] = deque(maxlen=100)
        self.history: list[tuple[int, float]] = []  # (timestep, return) of every finished episode
        if self.config.seed is not None:
            torch.manual_seed(self.config.seed)
        self.env = None if env is None else make_vec_env(env, self._n_envs(), **self._env_kwargs())
        if self.env is not None:
            self._build(self.env.single_observation_space, self.env.single_action_space)

    # -- setup ---------------------------------------------------------------------------------

    def _n_envs(self) -> int:
        raise NotImplementedError

    def _env_kwargs(self) -> dict:
        return {}

    def _build(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        check_spaces(observation_space, action_space)
        self.observation_space, self.action_space = observation_space, action_space
        self.policy = MlpPolicy(
            observation_space,
            action_space,
            net_arch=self.config.hidden_sizes(),
            activation_fn=self.config.activation_fn,
            log_std_init=self.config.log_std_init,
            critic=self.uses_critic,
        ).to(self.device)
        # fused Adam: one kernel for every parameter, instead of a Python loop over them.
        self.optimizer = torch.optim.Adam(
            self.policy.parameters(), lr=self.config.learning_rate, eps=1e-5, fused=self.device.type in ("cpu", "cuda")
        )
        if isinstance(action_space, Box):
            self._low = torch.as_tensor(action_space.low, dtype=torch.float32, device=self.device)
            self._high = torch.as_tensor(action_space.high, dtype=torch.float32, device=self.device)

    def _check_learn(self, total_timesteps) -> int:
        if self.env is None:
            raise ValueError("this model has no environment: pass env= to the constructor or to load() before learn()")
        if isinstance(total_timesteps, float) and total_timesteps.is_integer():
            total_timesteps = int(total_timesteps)
        if not isinstance(total_timesteps, int) or isinstance(total_timesteps, bool) or total_timesteps <= 0:
            raise ValueError(f"total_timesteps must be a positive int, got {total_timesteps!r}")
        return total_timesteps

    def _learning_rate(self, progress_remaining: float) -> float:
        """The rate for this update: constant, or linear from learning_rate to 0 (progress_remaining 1 -> 0)."""
        scale = progress_remaining if self.config.lr_schedule == "linear" else 1.0
        return self.config.learning_rate * scale

    def _env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """Actions as the env takes them: Box actions clipped to its bounds (log-probs stay those of the sample)."""
        if self.policy.continuous:
            actions = torch.maximum(torch.minimum(actions, self._high), self._low)
        return actions.cpu().numpy()

    # -- inference -----------------------------------------------------------------------------

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        """`(action, None)` for one observation `(obs_dim,)` or a batch `(B, obs_dim)`, like Stable-Baselines3.

        Box actions are clipped to the action space's bounds. `state` and `episode_start` exist for
        SB3 compatibility (recurrent policies) and are ignored.
        """
        obs = np.asarray(observation, dtype=np.float32)
        expected = self.observation_space.shape
        single = obs.shape == expected
        if not single and obs.shape[1:] != expected:
            raise ValueError(f"observation has shape {obs.shape}; expected {expected} or (batch, *{expected})")
        with torch.inference_mode():
            actions, _ = self.policy.act(torch.as_tensor(obs[None] if single else obs, device=self.device), deterministic)
            actions = self._env_actions(actions)
        return (actions[0] if single else actions), None

    # -- save / load ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write `path/model.safetensors` and `path/config.json`; returns the folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.policy.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))
        meta = {
            "algorithm": type(self).__name__,
            "config": self.config.to_dict(),
            "observation_space": _space_to_json(self.observation_space),
            "action_space": _space_to_json(self.action_space),
            "num_timesteps": self.num_timesteps,
        }
        (path / "config.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, env=None, device: str | None = None, **overrides):
        """A model saved by `save`; pass `env` to train it further (its spaces must match)."""
        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"no saved model at {path}: expected config.json and model.safetensors there (written by .save)"
            )
        meta = json.loads((path / "config.json").read_text())
        if meta["algorithm"] != cls.__name__:
            raise ValueError(f"{path} holds a {meta['algorithm']} model; load it with {meta['algorithm']}.load")
        settings = {**meta["config"], **overrides, **({"device": device} if device else {})}
        model = cls("MlpPolicy", None, **settings)
        observation_space, action_space = _space_from_json(meta["observation_space"]), _space_from_json(meta["action_space"])
        model._build(observation_space, action_space)
        model.policy.load_state_dict(load_file(str(path / "model.safetensors"), device=str(model.device)))
        model.num_timesteps = meta["num_timesteps"]
        if env is not None:
            model.env = make_vec_env(env, model._n_envs(), **model._env_kwargs())
            got = (model.env.single_observation_space, model.env.single_action_space)
            if (
                got[0].shape != observation_space.shape
                or type(got[1]) is not type(action_space)
                or got[1].shape != action_space.shape
            ):
                raise ValueError(f"env spaces {got} do not match the saved model's {(observation_space, action_space)}")
        return model

    # -- logging -------------------------------------------------------------------------------

    def _record_episodes(self, returns: np.ndarray, lengths: np.ndarray, timestep: int) -> None:
        """Episodes that ended at `timestep` (environment steps so far, all envs together)."""
        for r, n in zip(returns.tolist(), lengths.tolist()):
            self.ep_returns.append(r)
            self.ep_lengths.append(n)
            self.history.append((timestep, r))

    def _log(self, metrics: dict[str, float], start_time: float, start_steps: int) -> None:
        """Print SB3's table (verbose=1) and append a line to log_dir/metrics.jsonl."""
        elapsed = time.perf_counter() - start_time
        row = {
            "rollout/ep_rew_mean": float(np.mean(self.ep_returns)) if self.ep_returns else math.nan,
            "rollout/ep_len_mean": float(np.mean(self.ep_lengths)) if self.ep_lengths else math.nan,
            "time/episodes": len(self.history),
            "time/fps": int((self.num_timesteps - start_steps) / max(elapsed, 1e-9)),
            "time/time_elapsed": round(elapsed, 2),
            "time/total_timesteps": self.num_timesteps,
            **{f"train/{k}": float(v) for k, v in metrics.items()},
        }
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}) + "\n")
        if self.config.verbose >= 1:
            print(_table(row), flush=True)


def _table(row: dict) -> str:
    """Stable-Baselines3's console table: one section per key prefix."""
    lines, section = [], None
    for key, value in row.items():
        prefix, name = key.split("/", 1)
        if prefix != section:
            lines.append((f"{prefix}/", ""))
            section = prefix
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append((f"    {name}", text))
    w0, w1 = max(len(a) for a, _ in lines), max(len(b) for _, b in lines)
    rule = "-" * (w0 + w1 + 7)
    return "\n".join([rule, *(f"| {a:<{w0}} | {b:<{w1}} |" for a, b in lines), rule])
