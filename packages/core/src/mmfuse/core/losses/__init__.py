"""Losses of the mmfuse stages."""

from mmfuse.core.losses.contrastive import clip_loss, gather_with_grad, siglip_loss
from mmfuse.core.losses.preference import DPO_LOSS_TYPES, DPOOutput, dpo_loss, reward_loss

__all__ = [
    "DPO_LOSS_TYPES",
    "DPOOutput",
    "clip_loss",
    "dpo_loss",
    "gather_with_grad",
    "reward_loss",
    "siglip_loss",
]
