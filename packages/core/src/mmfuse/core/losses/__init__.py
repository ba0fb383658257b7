"""Losses of the mmfuse stages."""

from mmfuse.core.losses.contrastive import clip_loss, gather_with_grad, siglip_loss

__all__ = ["clip_loss", "gather_with_grad", "siglip_loss"]
