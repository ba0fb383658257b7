"""Losses of the mmfuse stages."""

from mmfuse.core.losses.contrastive import clip_loss, gather_with_grad, siglip_loss
from mmfuse.core.losses.policy import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    AdaptiveKLController,
    entropy_bonus,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_estimate,
    kl_penalized_rewards,
    masked_whiten,
    policy_loss,
    rloo_advantages,
    value_loss,
)
from mmfuse.core.losses.preference import DPO_LOSS_TYPES, DPOOutput, dpo_loss, reward_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "DPO_LOSS_TYPES",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "AdaptiveKLController",
    "DPOOutput",
    "clip_loss",
    "dpo_loss",
    "entropy_bonus",
    "entropy_from_logits",
    "gae",
    "gather_with_grad",
    "group_advantages",
    "kl_estimate",
    "kl_penalized_rewards",
    "masked_whiten",
    "policy_loss",
    "reward_loss",
    "rloo_advantages",
    "siglip_loss",
    "value_loss",
]
