"""Webdataset pipeline pieces shared by every modality.

One pass over a sharded dataset is:

    shard list (brace notation, local paths or ``pipe:`` commands)
      -> deterministic seeded shard shuffle, new order every epoch
      -> split by node (rank) -> split by dataloader worker
      -> tar members grouped into samples (or JSONL lines) -> shuffle buffer
      -> decode + transform in the worker (a corrupt sample is skipped and counted)
      -> batches

This follows open_clip's ``open_clip_train/data.py`` (``detshuffle2`` -> ``split_by_node`` ->
``split_by_worker``; resampled shards when shards are fewer than ranks x workers) with two
differences: the shard assignment is a pure function (:func:`assign_shards`) so it can be tested
as an exact partition, and the number of skipped samples travels inside the batches
(``batch["num_skipped"]``) so the training process can log it, whichever worker skipped them.

A shard is a webdataset tar (``.tar``, ``.tar.gz``) or a JSON Lines file (``.jsonl``,
``.jsonl.gz``): each line becomes a sample ``{"__key__", "__url__", "json": line bytes}`` whose
media are files named in the record (read by the decoder, relative to the JSONL file).

Media transforms (``mmfuse.vision.ImageTransform``, ``mmfuse.audio.AudioTransform``,
``mmfuse.video.VideoTransform``) follow :class:`MediaTransform`.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import itertools
import json
import logging
import os
import random
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import IterableDataset

log = logging.getLogger(__name__)

Sample = dict[str, Any]


class MediaTransform(Protocol):
    """Decodes one media member of a sample into fixed-shape tensors.

    Attributes:
        extensions: tar member extensions the transform reads, in order of preference,
            e.g. ``("png", "jpg", "jpeg")``.
    """

    extensions: tuple[str, ...]

    def __call__(self, data: bytes, *, train: bool) -> dict[str, Tensor]:
        """Decode ``data``; raise any exception on corrupt input (the pipeline skips and counts it)."""
        ...


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Expand brace notation and ``::``-joined lists into shard URLs.

    ``"data/train-{000000..000003}.tar"`` gives four paths; ``"a.tar::b.tar"`` two. A URL with a
    scheme (``pipe:``, ``s3://``, ``https://``) is passed through; a local path must exist.

    Raises:
        FileNotFoundError: naming the first local shard that does not exist.
        ValueError: when the expansion is empty.
    """
    expanded = wds.shardlists.expand_urls(urls) if isinstance(urls, str) else list(urls)
    if not expanded:
        raise ValueError(f"no shards in {urls!r}")
    for url in expanded:
        if ":" not in url.split("/")[0] and not os.path.exists(url):
            raise FileNotFoundError(f"shard not found: {url} (from {urls!r})")
    return expanded


def count_samples(urls: Sequence[str]) -> int:
    """Number of samples (distinct keys) in local tar shards, read from the tar headers only.

    Raises:
        ValueError: for a URL that is not a local file (pass ``num_samples`` explicitly then).
    """
    total = 0
    for url in urls:
        if not os.path.isfile(url):
            raise ValueError(f"cannot count samples of {url}: not a local file; set num_samples")
        if is_jsonl(url):
            with _open_jsonl(url) as lines:
                total += sum(1 for line in lines if line.strip())
            continue
        with tarfile.open(url) as tar:
            total += len({_split_member(m.name)[0] for m in tar.getmembers() if m.isfile()})
    return total


def is_jsonl(url: str) -> bool:
    """Whether a shard URL names a JSON Lines file (``.jsonl``, ``.jsonl.gz``) rather than a tar."""
    return url.endswith((".jsonl", ".jsonl.gz"))


@contextlib.contextmanager
def _open_jsonl(url: str) -> Iterator[Iterator[bytes]]:
    """The lines (without newline) of a JSONL shard, local or ``pipe:``, gunzipped if ``.gz``."""
    with wds.gopen(url, "rb") as stream:  # a file, or webdataset's Pipe (which has only `read`)
        yield _read_lines(gzip.open(stream) if url.endswith(".gz") else stream)


def _read_lines(stream: Any) -> Iterator[bytes]:
    rest = b""
    while chunk := stream.read(1 << 16):
        *lines, rest = (rest + chunk).split(b"\n")
        yield from lines
    if rest:
        yield rest


def jsonl_to_samples(url: str) -> Iterator[Sample]:
    """The lines of a JSONL shard as samples ``{"__key__": "<name>:<line>", "__url__", "json"}``.

    Blank lines are skipped; a line that is not valid JSON still becomes a sample, so the decoder
    rejects it and the pipeline counts it like any corrupt sample.
    """
    name = os.path.basename(url)
    with _open_jsonl(url) as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield {"__key__": f"{name}:{number}", "__url__": url, "json": line}


def shards_to_samples(sources: Iterable[dict[str, str]], handler: Callable[..., bool]) -> Iterator[Sample]:
    """Samples of each ``{"url": ...}`` in turn: tar members grouped by key, or JSONL lines.

    Args:
        sources: shard descriptors, as webdataset's shard lists yield them.
        handler: webdataset error handler for unreadable tar members (True: skip and go on).
    """
    read_tar = wds.tarfile_to_samples(handler=handler)
    for source in sources:
        yield from jsonl_to_samples(source["url"]) if is_jsonl(source["url"]) else read_tar([source])


def assign_shards(
    urls: Sequence[str],
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
) -> list[str]:
    """The shards one dataloader worker of one rank reads in one epoch.

    The shard list is shuffled with ``random.Random(seed, epoch)``-derived state (same on every
    rank), then dealt round-robin to ranks, then to the workers of each rank. Over all
    ``(rank, worker)`` pairs the result is an exact partition of ``urls``.

    Raises:
        ValueError: when this worker gets no shard (fewer shards than ranks x workers); use
            resampled shards or fewer workers.
    """
    order = list(urls)
    random.Random(f"{seed}-{epoch}").shuffle(order)
    mine = order[rank::world_size][worker::num_workers]
    if not mine:
        raise ValueError(
            f"{len(urls)} shards cannot feed {world_size} ranks x {num_workers} workers: rank {rank} "
            f"worker {worker} has none. Use more shards, fewer workers, or resampled=True."
        )
    return mine


class SkipCounter:
    """Counts samples dropped for bad input and logs each one once (key and reason).

    Attributes:
        pending: skipped since the last :meth:`take`.
        decoded: samples decoded so far (the stream counts them, to notice a pass that decodes none).
        last: the reason of the latest skip.
    """

    def __init__(self) -> None:
        self.pending = self.decoded = 0
        self.last = ""

    def __call__(self, exn: Exception, key: str = "?") -> bool:
        self.pending += 1
        self.last = f"{key}: {type(exn).__name__}: {exn}"
        log.warning("skipping sample %s", self.last)
        return True  # webdataset handler protocol: True = continue

    def take(self) -> int:
        n, self.pending = self.pending, 0
        return n


class MediaTextDecoder:
    """Turns a raw webdataset sample into one media-text training example.

    Output: the media tensors from ``media`` (e.g. ``pixel_values [c, h, w]``), ``input_ids``
    ``[context_length] int64`` from ``tokenizer``, ``text`` (the caption), ``meta`` (the sample's
    json, ``{}`` if none) and ``__key__``.

    Args:
        media: a :class:`MediaTransform`.
        tokenizer: maps a list of strings to ``[n, context_length]`` token ids (open_clip's
            tokenizer protocol).
    """

    def __init__(self, media: MediaTransform, tokenizer: Callable[[list[str]], Tensor]) -> None:
        self.media = media
        self.tokenizer = tokenizer

    def __call__(self, sample: Sample, *, train: bool) -> Sample:
        ext = next((e for e in self.media.extensions if e in sample), None)
        if ext is None:
            raise KeyError(f"no member with extension {self.media.extensions}; has {sorted(sample)}")
        if "txt" not in sample:
            raise KeyError("no .txt caption")
        text = sample["txt"].decode("utf-8").strip()
        meta = json.loads(sample["json"]) if "json" in sample else {}
        out = dict(self.media(sample[ext], train=train))
        out["input_ids"] = self.tokenizer([text])[0]
        out.update(text=text, meta=meta, __key__=sample["__key__"])
        return out


def collate(samples: Sequence[Sample]) -> Sample:
    """Stack tensors (``[...] -> [b, ...]``) and list everything else."""
    batch: Sample = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if isinstance(values[0], Tensor):
            batch[name] = torch.stack(values)
        else:
            batch[name] = values
    return batch


class ShardedStream(IterableDataset):
    """A seeded, epoch-aware stream of decoded batches from webdataset shards.

    Each worker reads the shards :func:`assign_shards` gives it (or, with ``resampled=True``,
    draws shards with replacement from a per-(seed, epoch, rank, worker) RNG, like webdataset's
    ``ResampledShards``). With ``repeat=True`` a worker that finishes its shards starts a new pass
    with a new shard order, so a training epoch never runs dry; :class:`EpochLoader` decides
    where the epoch ends. Batches carry ``num_skipped``: the samples this worker skipped since
    its previous batch. In training the last partial batch of a pass is dropped.

    Args:
        urls: shard URLs (already expanded).
        decode: ``decode(sample, train=...) -> dict``; an exception skips the sample and counts it,
            None leaves it out uncounted (a filter).
        batch_size: samples per batch.
        train: augmentation on, shuffle buffer on, partial last batch dropped.
        seed: integer seed of shard order, shuffle buffer and resampling.
        shuffle_buffer: samples held by the shuffle buffer (0 = no shuffle).
        resampled: draw shards with replacement (any number of shards works).
        repeat: start a new pass when the shards are exhausted.
        split_samples: every worker reads all shards and keeps every n-th sample (n = ranks x
            workers): an exact partition for any shard count, at the cost of reading every shard
            n times. Meant for small validation sets with fewer shards than ranks x workers.
    """

    def __init__(
        self,
        urls: Sequence[str],
        decode: Callable[..., Sample],
        *,
        batch_size: int,
        train: bool,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        repeat: bool = False,
        split_samples: bool = False,
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.decode = decode
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.repeat = repeat
        self.split_samples = split_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shard order the next iteration uses."""
        self.epoch = epoch

    def _samples(
        self, rank: int, world_size: int, worker: int, num_workers: int, skips: SkipCounter
    ) -> Iterator[Sample]:
        to_samples = functools.partial(shards_to_samples, handler=skips)
        if self.split_samples:
            slot, num_slots = rank * num_workers + worker, world_size * num_workers
            yield from itertools.islice(to_samples({"url": u} for u in self.urls), slot, None, num_slots)
            return
        if self.resampled:
            rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{worker}")
            sources = ({"url": rng.choice(self.urls)} for _ in itertools.count())
            yield from self._shuffled(to_samples(sources), 0)
            return
        # One pass = this worker's shards once; the shuffle buffer drains at the end of each pass,
        # so no sample is seen twice in an epoch shorter than a pass.
        for n_pass in itertools.count() if self.repeat else range(1):
            shards = assign_shards(
                self.urls, seed=self.seed, epoch=self.epoch * 1_000_003 + n_pass, rank=rank,
                world_size=world_size, worker=worker, num_workers=num_workers,
            )  # fmt: skip
            decoded = skips.decoded
            yield from self._shuffled(to_samples({"url": u} for u in shards), n_pass)
            if self.repeat and skips.decoded == decoded:  # repeating would loop forever
                raise ValueError(
                    f"rank {rank} worker {worker} read all of {shards} and decoded no sample"
                    f" (last skipped: {skips.last or 'none: empty shards or all filtered'})"
                )

    def _shuffled(self, samples: Iterable[Sample], n_pass: int) -> Iterable[Sample]:
        if self.shuffle_buffer <= 0:
            return samples
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        seed = random.Random(f"{self.seed}-{self.epoch}-{n_pass}-{rank}-{worker}").getrandbits(31)
        return wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=seed)(samples)

    def decoded(self, skips: SkipCounter) -> Iterator[Sample]:
        """This worker's decoded samples; a sample whose decoding raises is skipped and counted."""
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        for sample in self._samples(rank, world_size, worker, num_workers, skips):
            try:
                out = self.decode(sample, train=self.train)
            except Exception as exn:  # noqa: BLE001 - any decoder failure is a bad sample
                skips(exn, sample.get("__key__", "?"))
                continue
            if out is None:  # left out on purpose by the decoder (a filter), not a bad sample
                continue
            skips.decoded += 1
            yield out

    def __iter__(self) -> Iterator[Sample]:
        skips = SkipCounter()
        batch: list[Sample] = []
        for sample in self.decoded(skips):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield {**collate(batch), "num_skipped": skips.take()}
                batch = []
        if batch and not self.train:
            yield {**collate(batch), "num_skipped": skips.take()}
        if skips.pending:
            log.warning("%d skipped samples after the last batch of this worker", skips.pending)


#: A mixing weight: constant, or a piecewise-linear schedule ``[[step, weight], ...]`` (constant
#: before the first and after the last point).
Weight = float | Sequence[Sequence[float]]


def weight_at(weight: Weight, step: int) -> float:
    """The value of a :data:`Weight` at optimiser step ``step`` (``numpy.interp`` semantics).

    Raises:
        ValueError: a schedule whose steps do not increase, or a negative weight.
    """
    if isinstance(weight, int | float):
        points = [(0.0, float(weight))]
    else:
        points = [(float(x), float(y)) for x, y in weight]
    if any(b[0] <= a[0] for a, b in itertools.pairwise(points)) or any(y < 0 for _, y in points):
        raise ValueError(f"a mixing schedule needs increasing steps and weights >= 0, got {weight!r}")
    if step <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if step <= x1:
            return y0 + (y1 - y0) * (step - x0) / (x1 - x0)
    return points[-1][1]


class MixedStream(IterableDataset):
    """Batches whose samples are drawn from several :class:`ShardedStream` s by weight, per sample.

    Each sample picks its source with probability ``weight_at(w_source, step) / sum`` from an RNG
    seeded by ``(seed, epoch, rank, worker)``, so the mix is reproducible and a resumed loader that
    replays the epoch's first batches (:class:`EpochLoader`) continues the same draws. ``step`` is
    the optimiser step of the batch being filled: a worker's ``k``-th batch of an epoch is the
    epoch's batch ``k * num_workers + worker`` (the DataLoader takes batches round-robin). Batches
    carry ``mix``: samples per source in this batch. The sources should be ``resampled`` and
    ``repeat`` (a source is read for as long as the mix asks for it), as webdataset's weighted
    ``RandomMix`` and open_clip's ``--train-data-upsampling-factors`` intend, but per sample.

    Args:
        streams: source name -> its stream (``batch_size`` unused).
        weights: source name -> :data:`Weight`.
        batch_size: samples per batch.
        steps_per_epoch: optimiser steps per epoch (for the step of a batch).
        seed: integer seed of the source draws.

    Raises:
        ValueError: sources and weights name different sources.
    """

    resampled, split_samples = True, False  # what EpochLoader reads: every worker reads every source

    def __init__(
        self,
        streams: Mapping[str, ShardedStream],
        weights: Mapping[str, Weight],
        *,
        batch_size: int,
        steps_per_epoch: int,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if set(streams) != set(weights):
            raise ValueError(f"mixing sources {sorted(streams)} but weights for {sorted(weights)}")
        self.streams, self.weights = dict(streams), dict(weights)
        self.batch_size, self.steps_per_epoch, self.seed = batch_size, steps_per_epoch, seed
        self.urls = [u for stream in self.streams.values() for u in stream.urls]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for stream in self.streams.values():
            stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[Sample]:
        rank, _, worker, num_workers = wds.utils.pytorch_worker_info()
        skips = SkipCounter()
        sources = {name: stream.decoded(skips) for name, stream in self.streams.items()}
        names = list(sources)
        rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{worker}-mix")
        for k in itertools.count():
            step = self.epoch * self.steps_per_epoch + k * max(num_workers, 1) + worker
            weights = [weight_at(self.weights[n], step) for n in names]
            picks = rng.choices(names, weights=weights, k=self.batch_size)
            batch = [next(sources[name]) for name in picks]
            yield {**collate(batch), "num_skipped": skips.take(), "mix": dict(Counter(picks))}


class EpochLoader:
    """A DataLoader over a :class:`ShardedStream` whose epoch is exactly ``num_batches`` long.

    webdataset's ``with_epoch(n)`` on a dataset counts per worker (an epoch of n x workers);
    here the main process takes exactly ``num_batches`` batches from the workers. The worker RNG
    is seeded from ``(seed, epoch)`` so augmentation is reproducible, and the loader is
    *stateful* in Lightning's sense: ``state_dict()`` records how far the epoch got and
    ``load_state_dict`` makes the next iteration skip those batches, so a resumed run continues at
    the same data position. Lightning calls ``sampler.set_epoch(epoch)`` every epoch.

    Args:
        stream: the batches.
        num_batches: batches per epoch (None: until the stream ends, for validation).
        num_workers: dataloader worker processes; capped, with a warning, at the shards per rank
            when the stream assigns whole shards to workers (e.g. one JSONL file feeds one worker).
        seed: seeds the worker RNGs together with the epoch.
    """

    def __init__(
        self, stream: ShardedStream | MixedStream, *, num_batches: int | None, num_workers: int, seed: int = 0
    ):
        self.stream = self.dataset = stream  # `dataset`: Lightning's loader inspection expects it
        self.sampler = stream  # Lightning's per-epoch hook calls `loader.sampler.set_epoch(epoch)`
        self.num_batches = num_batches
        self.num_workers = num_workers
        self.seed = seed
        self._yielded = 0
        self._skip = 0

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("validation stream has no fixed length")
        return self.num_batches

    def _workers(self) -> int:
        """``num_workers``, or fewer when there are fewer shards per rank than workers to give them to."""
        if self.stream.resampled or self.stream.split_samples:
            return self.num_workers
        _, world_size, _, _ = wds.utils.pytorch_worker_info()
        shards_per_rank = len(self.stream.urls) // world_size
        if 0 < shards_per_rank < self.num_workers:  # no shard per rank: assign_shards names the problem
            log.warning("%d shards per rank: %d dataloader workers, not %d", shards_per_rank,
                        shards_per_rank, self.num_workers)  # fmt: skip
            return shards_per_rank
        return self.num_workers

    def __iter__(self) -> Iterator[Sample]:
        num_workers = self._workers()
        loader = torch.utils.data.DataLoader(
            self.stream,
            batch_size=None,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.stream.epoch),
            persistent_workers=False,
            multiprocessing_context="fork" if num_workers else None,
        )
        skip, self._skip = self._skip, 0
        self._yielded = 0
        for i, batch in enumerate(loader):
            if self.num_batches is not None and i >= self.num_batches:
                break
            self._yielded = i + 1
            if i >= skip:
                yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the batches of the current epoch already handed out."""
        return {"epoch": self.stream.epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume mid-epoch: the next iteration of epoch ``state["epoch"]`` skips the batches seen.

        A state taken after the epoch's last batch (Lightning checkpoints in ``on_train_batch_end``)
        resumes at the start of the next epoch, which Lightning then selects with ``set_epoch``.
        """
        self.stream.set_epoch(state["epoch"])
        epoch_done = self.num_batches is not None and state["batches"] >= self.num_batches
        self._skip = 0 if epoch_done else state["batches"]


def _split_member(name: str) -> tuple[str, str]:
    """webdataset's key/extension split: ``dir/key.ext.gz`` -> (``dir/key``, ``ext.gz``)."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext
