"""Callbacks of the mmfuse stages: evaluation, run bookkeeping, guards."""

from mmfuse.training.callbacks.zeroshot import ZeroShotRetrieval, ZeroShotTask

__all__ = ["ZeroShotRetrieval", "ZeroShotTask"]
