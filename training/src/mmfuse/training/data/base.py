"""The one sharded data module base: shard lists, epoch length, training and validation streams.

Every data module of mmfuse (media-text pairs, chat, and the preference and prompt data of the later
stages) reads webdataset tars or JSONL files through :class:`~mmfuse.core.data.ShardedStream` and
:class:`~mmfuse.core.data.EpochLoader`; a subclass only says how a sample is decoded
(:meth:`ShardedDataModule.decoder`) and how many samples one training batch holds
(:attr:`ShardedDataModule.step_size`). So shard expansion, sample counting, the epoch length, the
too-few-samples / too-few-shards errors, resampling and the dataloader-worker cap behave the same in
every stage.

Several training sources mix by weight: ``train_shards`` as a list of :class:`ShardSource`
(``{shards, weight, name}``), each weight a constant or a piecewise-linear schedule over the optimiser
step (a curriculum). Samples are drawn per sample by weight (:class:`~mmfuse.core.data.MixedStream`),
the observed share of each source is logged as ``data/mix/<name>`` (:func:`log_data`), and a resumed
run replays the same draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L

from mmfuse.core.data import EpochLoader, MixedStream, ShardedStream, Weight, count_samples, expand_urls


@dataclass
class ShardSource:
    """One training source of a mix.

    Attributes:
        shards: brace-notation shard URLs, ``::``-joined.
        weight: relative sampling weight, or a piecewise-linear schedule ``[[step, weight], ...]`` over
            the optimiser step (constant outside it), e.g. ``[[0, 1.0], [1000, 0.2]]``.
        name: the source's name in ``data/mix/<name>``; its position (``source0``...) when None.
    """

    shards: str
    weight: Weight = 1.0
    name: str | None = None


def log_data(module: L.LightningModule, batch: dict[str, Any]) -> None:
    """Log ``data/skipped`` (corrupt samples skipped before this batch, summed over the epoch and the
    ranks: one meaning in every stage) and, for a mix, ``data/mix/<source>`` (the share of this batch's
    samples, averaged over the epoch)."""
    skipped = float(batch.get("num_skipped", 0))
    module.log("data/skipped", skipped, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True)
    mix = batch.get("mix")
    if mix:
        total = sum(mix.values())
        module.log_dict({f"data/mix/{name}": count / total for name, count in mix.items()}, on_epoch=True)


class ShardedDataModule(L.LightningDataModule):
    """Training and validation loaders over shards; subclasses give the decoder.

    A training epoch is exactly ``num_samples // (world_size * step_size)`` batches per rank of
    ``step_size`` samples; validation reads every val sample once, split over ranks and workers, in
    batches of ``val_batch_size``. Batches carry ``num_skipped`` (corrupt samples skipped since the
    worker's previous batch).

    Args:
        train_shards: brace-notation shard URLs (local paths or ``pipe:`` commands), ``::``-joined:
            webdataset tars or JSONL files; or a list of :class:`ShardSource` to mix by weight.
        val_shards: the same for validation; None disables validation.
        batch_size: samples per training batch on each rank.
        val_batch_size: samples per validation batch (None: ``batch_size``).
        num_workers: dataloader workers per rank; capped, with a warning, at the shards per rank.
        shuffle_buffer: samples in the training shuffle buffer.
        num_samples: training samples per epoch over all ranks; counted from the local shards if None.
        resampled: draw training shards with replacement (any number of shards, e.g. for mixing).
        seed: integer seed of shard order, shuffle buffer and worker RNGs.
    """

    def __init__(
        self,
        train_shards: str | list[ShardSource],
        val_shards: str | None = None,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        num_samples: int | None = None,
        resampled: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_shards, self.val_shards = train_shards, val_shards
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.num_samples, self.resampled, self.seed = num_samples, resampled, seed

    @property
    def step_size(self) -> int:
        """Samples per training batch on one rank."""
        return self.batch_size

    def decoder(self) -> Callable[..., dict[str, Any]]:
        """``decode(sample, train=...) -> dict``; an exception skips and counts a sample, None filters it."""
        raise NotImplementedError

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def train_dataloader(self) -> EpochLoader:
        """Exactly ``num_samples // (world_size * step_size)`` batches per epoch.

        Raises:
            ValueError: fewer samples than one step needs, or (without ``resampled``) fewer shards
                than ranks.
        """
        sources = self._sources()
        world_size = self._world_size()
        urls = [u for shards in sources.values() for u in shards]
        if not self.resampled and len(sources) == 1 and len(urls) < world_size:
            raise ValueError(
                f"data.train_shards has {len(urls)} shards for {world_size} ranks: every rank needs one."
                " Split the data into more shards or set data.resampled=true."
            )
        num_samples = self.num_samples or count_samples(urls)
        num_batches = num_samples // (world_size * self.step_size)
        if num_batches == 0:
            raise ValueError(
                f"{num_samples} training samples in {self.train_shards!r}, fewer than one step needs:"
                f" world_size {world_size} x {self.step_size} samples per step; lower data.batch_size"
            )
        streams = {
            name: ShardedStream(
                shards,
                self.decoder(),
                batch_size=self.step_size,
                train=True,
                seed=self.seed,
                shuffle_buffer=self.shuffle_buffer,
                resampled=self.resampled or len(sources) > 1,
                repeat=True,
            )  # fmt: skip
            for name, shards in sources.items()
        }
        stream = next(iter(streams.values()))
        if len(streams) > 1:
            weights = {self._name(i, s): s.weight for i, s in enumerate(self.train_shards)}
            stream = MixedStream(streams, weights, batch_size=self.step_size, steps_per_epoch=num_batches,
                                 seed=self.seed)  # fmt: skip
        return EpochLoader(stream, num_batches=num_batches, num_workers=self.num_workers, seed=self.seed)

    @staticmethod
    def _name(index: int, source: ShardSource) -> str:
        return source.name or f"source{index}"

    def _sources(self) -> dict[str, list[str]]:
        """Source name -> its expanded shard URLs (one unnamed source for a plain string)."""
        if isinstance(self.train_shards, str):
            return {"train": expand_urls(self.train_shards)}
        sources = [ShardSource(**s) if isinstance(s, dict) else s for s in self.train_shards]
        self.train_shards = sources
        return {self._name(i, s): expand_urls(s.shards) for i, s in enumerate(sources)}

    def val_dataloader(self) -> EpochLoader | list:
        """Every validation sample once; an empty list without ``val_shards``."""
        return [] if self.val_shards is None else self.pass_dataloader(self.val_shards)

    def pass_dataloader(self, shards: str) -> EpochLoader:
        """Every sample of ``shards`` once, unshuffled, in ``val_batch_size`` batches decoded with
        ``train=False``, split over ranks and workers (validation; a precomputing pass over the data)."""
        urls = expand_urls(shards)
        stream = ShardedStream(
            urls, self.decoder(), batch_size=self.val_batch_size, train=False, shuffle_buffer=0,
            split_samples=len(urls) < self._world_size() * max(self.num_workers, 1),
        )  # fmt: skip
        return EpochLoader(stream, num_batches=None, num_workers=self.num_workers)


__all__ = ["ShardSource", "ShardedDataModule", "log_data"]
