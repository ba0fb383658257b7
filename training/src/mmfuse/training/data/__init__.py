"""Lightning DataModules and collators of the mmfuse stages."""

from mmfuse.training.data.chat import ChatDataModule
from mmfuse.training.data.pairs import PairDataModule

__all__ = ["ChatDataModule", "PairDataModule"]
