"""Media-text pairs from webdataset shards, for contrastive alignment of any modality."""

from __future__ import annotations

from typing import Any

import open_clip

from mmfuse.core.data import MediaTextDecoder, MediaTransform
from mmfuse.training.data.base import ShardedDataModule


class MediaTextDataModule(ShardedDataModule):
    """Media-text pairs: batches of media tensors + ``input_ids`` + ``text`` + ``meta``.

    A batch holds the media transform's tensors (e.g. ``pixel_values [b, 3, h, w] float32``),
    ``input_ids [b, context_length] int64`` (open_clip tokenizer), ``text`` (list of captions),
    ``meta`` (list of the samples' json dicts), ``__key__`` and ``num_skipped`` (int: corrupt
    samples skipped by the worker since its previous batch). Epochs, shards, workers and
    resampling: :class:`~mmfuse.training.data.base.ShardedDataModule`.

    Args:
        train_shards: brace-notation shard URLs (local paths or ``pipe:`` commands), ``::``-joined.
        val_shards: the same for validation; None disables validation.
        media: the media transform (``mmfuse.vision.ImageTransform``, ``mmfuse.audio.AudioTransform``...).
        tokenizer: open_clip tokenizer name (``open_clip.get_tokenizer``).
        context_length: tokens per caption (must equal the text tower's ``context_length``).
        kwargs: :class:`~mmfuse.training.data.base.ShardedDataModule`'s ``batch_size``, ``num_workers``,
            ``shuffle_buffer``, ``num_samples``, ``resampled``, ``seed``.
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None,
        media: MediaTransform,
        tokenizer: str = "ViT-B-32",
        context_length: int = 77,
        **kwargs: Any,
    ) -> None:
        super().__init__(train_shards, val_shards, **kwargs)
        self.media = media
        self.tokenizer = open_clip.get_tokenizer(tokenizer, context_length=context_length)

    def decoder(self) -> MediaTextDecoder:
        return MediaTextDecoder(self.media, self.tokenizer)


__all__ = ["MediaTextDataModule"]
