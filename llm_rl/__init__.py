"""llm_rl: clear, lean PPO and GRPO for language models.

    from llm_rl import GRPOConfig, GRPOTrainer
    GRPOTrainer(model="tiny", reward_funcs=[my_reward], args=GRPOConfig(), train_dataset=ds).train()
"""

from llm_rl.trainers import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer, RLConfig

__all__ = ["GRPOConfig", "GRPOTrainer", "PPOConfig", "PPOTrainer", "RLConfig"]
__version__ = "0.1.0"
