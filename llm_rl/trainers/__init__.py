"""The trainers: thin orchestration of rollout -> score -> advantages -> update."""

from llm_rl.trainers.config import RLConfig
from llm_rl.trainers.grpo_config import GRPOConfig
from llm_rl.trainers.grpo_trainer import GRPOTrainer
from llm_rl.trainers.ppo_config import PPOConfig
from llm_rl.trainers.ppo_trainer import PPOTrainer

__all__ = ["GRPOConfig", "GRPOTrainer", "PPOConfig", "PPOTrainer", "RLConfig"]
