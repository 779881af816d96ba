"""Pure RL math for llm_rl: tensors in, tensors (and metrics) out. Imports torch only."""

from llm_rl.core.advantages import (
    gae,
    group_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    return_to_go,
    rloo_advantages,
)
from llm_rl.core.correction import rollout_correction
from llm_rl.core.episodic import episodic_gae
from llm_rl.core.kl import AdaptiveKLController, FixedKLController, kl_penalized_rewards, kl_penalty
from llm_rl.core.lm_head import chunked_lm_head_logprobs
from llm_rl.core.logprobs import entropy_from_logits, selective_log_softmax
from llm_rl.core.losses import (
    aggregate_loss,
    aggregation_denominator,
    cispo_policy_loss,
    clipped_policy_loss,
    clipped_value_loss,
)
from llm_rl.core.masked import explained_variance, masked_mean, masked_var, masked_whiten
from llm_rl.core.preference import bradley_terry_loss

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "aggregate_loss",
    "aggregation_denominator",
    "bradley_terry_loss",
    "chunked_lm_head_logprobs",
    "cispo_policy_loss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "episodic_gae",
    "explained_variance",
    "gae",
    "group_advantages",
    "kl_penalized_rewards",
    "kl_penalty",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "return_to_go",
    "rloo_advantages",
    "rollout_correction",
    "selective_log_softmax",
]
