"""Reward functions for RL on language models, following TRL's convention.

A reward function is ``f(prompts, completions, **columns) -> list[float | None]``:
one reward per completion, ``None`` where it does not apply; ``columns`` are the
dataset's other columns (e.g. ``answer``). Prompts and completions may be strings or
chat message lists. ``compute_rewards`` calls several and combines them with weights;
a function that accepts them also gets ``completion_ids`` (token ids, EOS excluded) and
``trainer_state`` (``TrainerState``), as in TRL. Functions may be ``async def`` (see
``reward_models.calling``); ``RemoteReward`` scores over HTTP (``recipes/reward_server.py``).
"""

from reward_models._text import completion_text
from reward_models.calling import TrainerState
from reward_models.combine import RewardError, RewardWarning, compute_rewards, reward_name
from reward_models.format import DEFAULT_FORMAT_PATTERN, format_reward, make_format_reward
from reward_models.learned import LearnedReward
from reward_models.length import make_length_penalty, overlong_penalty, soft_overlong_penalty
from reward_models.math import answers_match, extract_final_number, math_correctness
from reward_models.remote import RemoteReward

__all__ = [
    "DEFAULT_FORMAT_PATTERN",
    "LearnedReward",
    "RemoteReward",
    "RewardError",
    "RewardWarning",
    "TrainerState",
    "answers_match",
    "completion_text",
    "compute_rewards",
    "extract_final_number",
    "format_reward",
    "make_format_reward",
    "make_length_penalty",
    "math_correctness",
    "overlong_penalty",
    "reward_name",
    "soft_overlong_penalty",
]
