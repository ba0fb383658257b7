"""Media-text pairs from webdataset shards, for contrastive alignment of any modality."""

from __future__ import annotations

import lightning as L
import open_clip

from mmfuse.core.data import (
    EpochLoader,
    MediaTransform,
    PairDecoder,
    ShardedStream,
    count_samples,
    expand_urls,
)


class PairDataModule(L.LightningDataModule):
    """Media-text pairs: batches of media tensors + ``input_ids`` + ``text`` + ``meta``.

    A batch holds the media transform's tensors (e.g. ``pixel_values [b, 3, h, w] float32``),
    ``input_ids [b, context_length] int64`` (open_clip tokenizer), ``text`` (list of captions),
    ``meta`` (list of the samples' json dicts), ``__key__`` and ``num_skipped`` (int: corrupt
    samples skipped by the worker since its previous batch).

    A training epoch is exactly ``num_samples // (world_size * batch_size)`` batches per rank;
    validation reads every val sample once (split over ranks and workers).

    Args:
        train_shards: brace-notation shard URLs (local paths or ``pipe:`` commands), ``::``-joined.
        val_shards: the same for validation; None disables validation.
        media: the media transform (``mmfuse.vision.ImageTransform``, ``mmfuse.audio.AudioTransform``...).
        tokenizer: open_clip tokenizer name (``open_clip.get_tokenizer``).
        context_length: tokens per caption (must equal the text tower's ``context_length``).
        batch_size: samples per batch on each rank.
        num_workers: dataloader workers per rank; shards must be >= ranks x workers unless resampled.
        shuffle_buffer: samples in the training shuffle buffer.
        num_samples: training samples per epoch over all ranks; counted from the local shards if None.
        resampled: draw training shards with replacement (for shards < ranks x workers or mixing).
        seed: integer seed of shard order, shuffle buffer and worker RNGs.
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
        super().__init__()
        self.train_shards, self.val_shards = train_shards, val_shards
        self.media = media
        self.tokenizer = open_clip.get_tokenizer(tokenizer, context_length=context_length)
        self.decode = PairDecoder(media, self.tokenizer)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.num_samples = shuffle_buffer, num_samples
        self.resampled, self.seed = resampled, seed

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> EpochLoader:
        urls = expand_urls(self.train_shards)
        _, world_size = self._world()
        if not self.resampled and len(urls) < world_size * max(self.num_workers, 1):
            raise ValueError(
                f"data.train_shards has {len(urls)} shards for {world_size} ranks x {self.num_workers} "
                "workers: every worker needs a shard. Lower data.num_workers or set data.resampled=true."
            )
        num_samples = self.num_samples or count_samples(urls)
        num_batches = num_samples // (world_size * self.batch_size)
        if num_batches == 0:
            raise ValueError(
                f"{num_samples} samples < world_size x batch_size = {world_size * self.batch_size}"
            )
        stream = ShardedStream(
            urls, self.decode, batch_size=self.batch_size, train=True, seed=self.seed,
            shuffle_buffer=self.shuffle_buffer, resampled=self.resampled, repeat=True,
        )  # fmt: skip
        return EpochLoader(stream, num_batches=num_batches, num_workers=self.num_workers, seed=self.seed)

    def val_dataloader(self) -> EpochLoader | list:
        if self.val_shards is None:
            return []
        urls = expand_urls(self.val_shards)
        _, world_size = self._world()
        stream = ShardedStream(
            urls, self.decode, batch_size=self.batch_size, train=False, shuffle_buffer=0,
            split_samples=len(urls) < world_size * max(self.num_workers, 1),
        )  # fmt: skip
        return EpochLoader(stream, num_batches=None, num_workers=self.num_workers)
