"""Shard reading and writing shared by the ``mmfuse data`` subcommands.

Reading goes through the same code as training (:func:`mmfuse.core.data.shards_to_samples`: tar
members grouped by key, or JSONL lines), one sample at a time, with a rich progress bar over the
shards. Unreadable tar data (a zero-byte or truncated shard, a bad gzip stream) is recorded per
shard instead of raised, so a tool can report it and go on. Writing uses webdataset's
``ShardWriter`` / ``TarWriter`` with reproducible members (mtime 0, no user or group names).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mmfuse.core.data import Sample, expand_urls, shards_to_samples

#: Diagnostics (progress bars) go to stderr, so stdout holds only the human summary.
console = Console(stderr=True)

#: Tar member options that make the same samples give the same bytes.
TAR_OPTIONS: dict[str, Any] = {"mtime": 0, "user": "", "group": "", "encoder": False}


@dataclass
class ReadErrors:
    """Shard-level read failures, as ``{"shard", "key", "reason"}`` rows.

    A tar that cannot be read from some point on (truncated, bad gzip, zero bytes) loses the rest of
    that shard; the row names the shard and, when webdataset knows it, the member being read.
    """

    rows: list[dict[str, str]] = field(default_factory=list)
    _url: str = ""

    def __call__(self, exn: Exception) -> bool:
        """webdataset's error handler protocol: record and continue (True)."""
        detail = exn.args[0] if exn.args else ""  # webdataset appends the stream and URL to args
        self.rows.append({"shard": self._url, "key": "?", "reason": f"{type(exn).__name__}: {detail}"})
        return True


def resolve_shards(urls: Sequence[str]) -> list[str]:
    """Expand each brace / ``::`` URL given on the command line into shard paths.

    Raises:
        FileNotFoundError: a local shard does not exist.
        ValueError: an expansion is empty.
    """
    return [shard for url in urls for shard in expand_urls(url)]


def progress_bar() -> Progress:
    """A rich progress bar on stderr: description, bar, done/total, a samples counter, elapsed time."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards, {task.fields[samples]} samples"),
        TimeElapsedColumn(),
        console=console,
    )


def read_samples(
    urls: Sequence[str], *, description: str, errors: ReadErrors | None = None
) -> Iterator[Sample]:
    """Every sample of ``urls`` in order, one at a time, with a progress bar over the shards.

    Each sample is webdataset's dict (``__key__``, ``__url__``, one bytes value per member
    extension). ``errors`` collects unreadable tar data; without it such data is skipped silently.
    """
    errors = errors if errors is not None else ReadErrors()
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(urls), samples=0)
        count = 0
        for url in urls:
            errors._url = url
            for sample in shards_to_samples([{"url": url}], handler=errors):
                count += 1
                yield sample
                bar.update(task, samples=count)
            bar.advance(task)


def split_of(key: str, val_percent: float) -> str:
    """``"val"`` when SHA-256(key)'s first 8 bytes, big-endian, modulo 100 fall below ``val_percent``.

    The rule of the embedded data (``scripts/media_bytes.py``): a sample's split depends on its key
    only, so adding samples never moves an old one to the other split.
    """
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return "val" if bucket < val_percent else "train"


def brace_url(paths: Sequence[str]) -> str:
    """The brace-notation URL of ``{prefix}{000000..00000n}{suffix}`` shards, or the ``::``-joined paths.

    ``--data.train_shards`` accepts either form.
    """
    if not paths:
        return ""
    if len(paths) == 1:
        return paths[0]
    first, last = paths[0], paths[-1]
    start = next(i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b)
    while start and first[start - 1].isdigit():
        start -= 1
    end = start
    while end < len(first) and first[end].isdigit():
        end += 1
    prefix, suffix = first[:start], first[end:]
    width = end - start
    expected = [f"{prefix}{i:0{width}d}{suffix}" for i in range(len(paths))]
    if list(paths) != expected:
        return "::".join(paths)
    return f"{prefix}{{{0:0{width}d}..{len(paths) - 1:0{width}d}}}{suffix}"


class SplitWriter:
    """Writes samples to ``{out}/{split}-%06d.tar`` shards, one webdataset ``ShardWriter`` per split.

    A split's first shard is opened at its first sample, so an empty split writes no file.

    Args:
        out: output directory (created).
        max_size: bytes of member data per shard before a new one starts.
        max_count: samples per shard before a new one starts.
        gzip: write ``.tar.gz`` shards (webdataset and training read them transparently).
    """

    def __init__(self, out: Path, *, max_size: float, max_count: int, gzip: bool = False) -> None:
        self.out, self.max_size, self.max_count = out, max_size, max_count
        self.suffix = ".tar.gz" if gzip else ".tar"
        self.writers: dict[str, wds.ShardWriter] = {}
        self.paths: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}
        out.mkdir(parents=True, exist_ok=True)

    def write(self, split: str, sample: Sample) -> None:
        """Write one sample (``__key__`` plus bytes members) to ``split``'s current shard."""
        if split not in self.writers:
            self.paths[split], self.counts[split] = [], 0
            self.writers[split] = wds.ShardWriter(
                str(self.out / f"{split}-%06d{self.suffix}"), maxcount=self.max_count,
                maxsize=self.max_size, post=self.paths[split].append, verbose=0, **TAR_OPTIONS,
            )  # fmt: skip
        self.writers[split].write(sample)
        self.counts[split] += 1

    def close(self) -> dict[str, list[str]]:
        """Close every shard; return split -> written shard paths."""
        for writer in self.writers.values():
            writer.close()
        return self.paths


def copy_shards(
    urls: Sequence[str], out: Path, keep: Callable[[Sample], bool], *, description: str
) -> dict[str, int]:
    """Copy shards into ``out`` (same file names) with only the samples ``keep`` accepts.

    Every member of a kept sample is copied byte for byte, and every input shard gets its copy (an
    empty one when nothing is kept), so the input's brace URL works on ``out``.

    Returns:
        ``{"kept", "removed"}`` sample counts.

    Raises:
        ValueError: a shard is a JSONL file or two shards share a file name.
    """
    names = [os.path.basename(u) for u in urls]
    if len(set(names)) != len(names):
        raise ValueError(f"shards with the same file name cannot be copied into one directory: {names}")
    not_tar = [u for u in urls if not u.endswith((".tar", ".tar.gz", ".tgz"))]
    if not_tar:
        raise ValueError(f"only tar shards can be copied, not {not_tar}")
    out.mkdir(parents=True, exist_ok=True)
    counts = {"kept": 0, "removed": 0}
    writer, current = None, None
    try:
        for sample in read_samples(urls, description=description):
            if sample["__url__"] != current:
                if writer is not None:
                    writer.close()
                current = sample["__url__"]
                writer = wds.TarWriter(str(out / os.path.basename(current)), **TAR_OPTIONS)
            if keep(sample):
                writer.write(sample)
                counts["kept"] += 1
            else:
                counts["removed"] += 1
    finally:
        if writer is not None:
            writer.close()
    for name in names:  # an input shard that yielded no sample still gets its (empty) copy
        if not (out / name).exists():
            wds.TarWriter(str(out / name), **TAR_OPTIONS).close()
    return counts
