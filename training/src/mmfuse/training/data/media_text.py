"""Media-text pairs from webdataset shards, for contrastive alignment of any modality."""

from __future__ import annotations

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
        batch_size, num_workers, shuffle_buffer, num_samples, resampled, seed: see
            :class:`~mmfuse.training.data.base.ShardedDataModule`.
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None,
        media: MediaTransform,
        tokenizer: str = "ViT-B-32",
        context_length: int = 77,
        batch_size: int = 64,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        num_samples: int | None = None,
        resampled: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            train_shards, val_shards, batch_size=batch_size, num_workers=num_workers,
            shuffle_buffer=shuffle_buffer, num_samples=num_samples, resampled=resampled, seed=seed,
        )  # fmt: skip
        self.media = media
        self.tokenizer = open_clip.get_tokenizer(tokenizer, context_length=context_length)

    def decoder(self) -> MediaTextDecoder:
        return MediaTextDecoder(self.media, self.tokenizer)


__all__ = ["MediaTextDataModule"]
