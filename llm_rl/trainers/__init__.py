"""The trainers: thin orchestration of rollout -> score -> advantages -> update."""

from llm_rl.trainers.config import RLConfig
from llm_rl.trainers.grpo_config import GRPOConfig
from llm_rl.trainers.grpo_trainer import GRPOTrainer

__all__ = ["GRPOConfig", "GRPOTrainer", "RLConfig"]
