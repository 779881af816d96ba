"""llm_rl: clear, lean PPO and GRPO for language models.

    from llm_rl import GRPOConfig, GRPOTrainer
    GRPOTrainer(model="tiny", reward_funcs=[my_reward], args=GRPOConfig(), train_dataset=ds).train()
"""

import importlib

__all__ = ["GRPOConfig", "GRPOTrainer", "PPOConfig", "PPOTrainer", "RLConfig"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The trainers load on first use (PEP 562): they import accelerate, peft and datasets (about 8 s on 2 cores),
    # which `import llm_rl.core` or `llm_rl.control` alone never needs.
    if name in __all__:
        value = getattr(importlib.import_module("llm_rl.trainers"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llm_rl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
