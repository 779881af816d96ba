"""PPO and GRPO on gymnasium environments, with Stable-Baselines3's surface and llm_rl.core's math.

    import gymnasium as gym
    from llm_rl.control import PPO
    env = gym.make("CartPole-v1")
    model = PPO(policy="MlpPolicy", env=env, verbose=1)
    model.learn(total_timesteps=50_000)
    obs, _ = env.reset()
    action, _state = model.predict(obs, deterministic=True)

Needs the `control` extra: `pip install -e ".[control]"` (gymnasium).
"""

from llm_rl.control.config import ConfigError, GRPOConfig, PPOConfig
from llm_rl.control.envs import evaluate, make_vec_env, normalize
from llm_rl.control.grpo import GRPO
from llm_rl.control.policies import MlpPolicy
from llm_rl.control.ppo import PPO

__all__ = ["GRPO", "PPO", "ConfigError", "GRPOConfig", "MlpPolicy", "PPOConfig", "evaluate", "make_vec_env", "normalize"]
