"""Sampling groups of completions: ``generate_rollout`` and the ``Rollout`` it returns."""

from llm_rl.rollout.generate import Rollout, completion_mask_from_ids, eos_token_ids, generate_rollout
from llm_rl.rollout.sampler import GroupSampler

__all__ = ["GroupSampler", "Rollout", "completion_mask_from_ids", "eos_token_ids", "generate_rollout"]
