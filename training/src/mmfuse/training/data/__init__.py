"""Lightning DataModules and collators of the mmfuse stages."""

from mmfuse.training.data.chat import ChatDataModule
from mmfuse.training.data.media_text import MediaTextDataModule
from mmfuse.training.data.preference import PreferenceDataModule
from mmfuse.training.data.prompts import PromptDataModule

__all__ = ["ChatDataModule", "MediaTextDataModule", "PreferenceDataModule", "PromptDataModule"]
