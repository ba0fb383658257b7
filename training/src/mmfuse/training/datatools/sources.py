"""The inputs ``mmfuse data build`` reads, each as a stream of webdataset samples.

Every reader yields ``(group, sample)``: ``sample`` is ``{"__key__", <media ext>: bytes, "txt",
"json"}`` (or a tar sample as stored), ``group`` the name the train/val split hashes, the media
file's path, so the captions of one picture never straddle the split. One media file is read at a
time. Layouts:

* **a folder of media with captions**: ``cat.jpg`` + ``cat.txt`` (and an optional ``cat.json`` of
  metadata, as img2dataset's ``files`` output writes), in any sub-folders;
* **a Hugging Face ``imagefolder`` / ``audiofolder``**: a folder holding ``metadata.jsonl`` or
  ``metadata.csv`` (in it or in split sub-folders), rows with ``file_name`` (relative to the
  metadata file) and a caption column;
* **a CSV / TSV / JSONL file** with a media-path column (relative to the file) and a caption column;
* **webdataset tar shards**, e.g. img2dataset's ``webdataset`` output (``.jpg``, ``.txt``,
  ``.json`` per sample): samples are copied as they are.

Bad items (no caption, a missing file, a row without a media path) go to ``on_skip(what, reason)``.
Media of a modality outside ``Options.modalities`` are left out (a folder of stamps whose sound
effects share the pictures' names and captions gives pictures only with ``--modality image``).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfuse.core.data import Sample, is_jsonl, shards_to_samples
from mmfuse.training.datatools.parts import modality_of
from mmfuse.training.datatools.shards import resolve_shards

MEDIA_COLUMNS = ("file_name", "path", "file", "filepath", "filename", "image", "audio", "video", "media")
CAPTION_COLUMNS = ("text", "caption", "txt", "transcription", "sentence", "label")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")

Skip = Callable[[str, str], None]


@dataclass(frozen=True)
class Options:
    """How to read an input.

    Attributes:
        source: json ``source`` of its samples and prefix of their keys (default: the input's name).
        media_column: media path column of a table (default: the first of :data:`MEDIA_COLUMNS`).
        caption_column: caption column of a table (default: the first of :data:`CAPTION_COLUMNS`).
        modalities: modalities to keep (None: every one a transform reads).
    """

    source: str | None = None
    media_column: str | None = None
    caption_column: str | None = None
    modalities: frozenset[str] | None = None

    def media(self, ext: str) -> bool:
        """Whether a file with extension ``ext`` is media to keep."""
        modality = modality_of(ext)
        return modality is not None and (self.modalities is None or modality in self.modalities)


def slug(name: str) -> str:
    """A webdataset key from a path: every run of characters outside ``[A-Za-z0-9_-]`` -> ``-``.

    Dots must go: webdataset splits a member name into key and extension at the first dot.
    """
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")


def stem_of(relative: str) -> str:
    """``dir/name.ext`` -> ``dir/name``."""
    return relative.rpartition(".")[0] or relative


def make_sample(key: str, ext: str, media: bytes, caption: str, meta: dict[str, Any]) -> Sample:
    """A media-text sample as the pair decoder reads it (``.txt`` caption, ``.json`` metadata)."""
    return {"__key__": key, ext: media, "txt": caption.encode(),
            "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()}  # fmt: skip


def folder_samples(root: Path, source: str, options: Options, on_skip: Skip) -> Iterator[tuple[str, Sample]]:
    """Media files with a same-named ``.txt`` caption (the whole file, stripped), in sorted path order."""
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            stem, _, ext = name.rpartition(".")
            if not stem or not options.media(ext):
                continue
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            caption_path = path.with_name(f"{stem}.txt")
            if not caption_path.is_file():
                on_skip(relative, f"no caption file {caption_path.name}")
                continue
            caption = caption_path.read_text(encoding="utf-8").strip()
            if not caption:
                on_skip(relative, f"empty caption file {caption_path.name}")
                continue
            meta_path = path.with_name(f"{stem}.json")
            meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
            meta = {**meta, "source": source, "file": relative}
            # the key names the file (a picture and a sound may share a stem and a caption); the
            # split group is the stem, so they land in the same split
            group, key = slug(f"{source}/{stem_of(relative)}"), slug(f"{source}/{relative}")
            yield group, make_sample(key, ext.lower(), path.read_bytes(), caption, meta)


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a CSV/TSV (header line) or JSONL file (``.gz`` too), one at a time."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        if is_jsonl(str(path)):
            yield from (json.loads(line) for line in f if line.strip())
        else:
            yield from csv.DictReader(f, delimiter="\t" if ".tsv" in path.name else ",")


def _column(row: dict[str, Any], given: str | None, candidates: tuple[str, ...], what: str) -> str:
    """The column named ``given``, else the first of ``candidates`` in the row."""
    if given is not None:
        if given not in row:
            raise KeyError(f"no {what} column {given!r}; columns: {sorted(row)}")
        return given
    found = next((c for c in candidates if c in row), None)
    if found is None:
        raise KeyError(
            f"no {what} column among {candidates}; columns: {sorted(row)} (set it with --{what}_column)"
        )
    return found


def table_samples(
    path: Path, source: str, options: Options, on_skip: Skip, prefix: str = ""
) -> Iterator[tuple[str, Sample]]:
    """Rows of a table with a media path (relative to the table's folder) and a caption.

    ``prefix``: the table's folder relative to the input (a Hugging Face split folder), so that
    ``train/a.wav`` and ``test/a.wav`` get different keys.
    """
    seen: dict[str, int] = {}
    for number, row in enumerate(_rows(path), start=1):
        where = f"{path.name}:{number}"
        try:
            media_key = _column(row, options.media_column, MEDIA_COLUMNS, "media")
            caption_key = _column(row, options.caption_column, CAPTION_COLUMNS, "caption")
            relative, caption = str(row[media_key]), str(row[caption_key] or "").strip()
            ext = relative.rpartition(".")[2].lower()
            if not options.media(ext):
                raise ValueError(
                    f"{relative!r} is not media of {sorted(options.modalities or ['any modality'])}"
                )
            if not caption:
                raise ValueError("empty caption")
            data = (path.parent / relative).read_bytes()
        except (KeyError, ValueError, OSError) as exn:
            on_skip(where, f"{type(exn).__name__}: {exn}")
            continue
        meta = {k: v for k, v in row.items() if k not in (media_key, caption_key)}
        file = f"{prefix}/{relative}" if prefix else relative
        group = slug(f"{source}/{stem_of(file)}")
        seen[group] = seen.get(group, 0) + 1
        key = group if seen[group] == 1 else f"{group}-{seen[group]}"  # more captions of one file
        yield group, make_sample(key, ext, data, caption, {**meta, "source": source, "file": file})


def metadata_samples(
    root: Path, source: str, options: Options, on_skip: Skip
) -> Iterator[tuple[str, Sample]]:
    """Every ``metadata.jsonl`` / ``metadata.csv`` table under ``root`` (Hugging Face folder layouts)."""
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in METADATA_FILES:
            if name in files:
                prefix = Path(directory).relative_to(root).as_posix()
                yield from table_samples(
                    Path(directory) / name, source, options, on_skip, "" if prefix == "." else prefix
                )


def tar_samples(url: str, on_skip: Skip) -> Iterator[tuple[str, Sample]]:
    """The samples of webdataset shards, keyed and grouped by their own keys, copied whole."""
    for shard in resolve_shards([url]):

        def handler(exn: Exception, shard: str = shard) -> bool:
            on_skip(shard, f"{type(exn).__name__}: {exn.args[0] if exn.args else ''}")
            return True

        for sample in shards_to_samples([{"url": shard}], handler=handler):
            yield (
                sample["__key__"],
                {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("_")},
            )


def input_samples(spec: str, options: Options, on_skip: Skip) -> Iterator[tuple[str, Sample]]:
    """The samples of one input (a folder, a table file, or tar shards), by its layout.

    Raises:
        FileNotFoundError: ``spec`` names nothing that exists.
    """
    path = Path(spec)
    source = options.source or path.stem.split(".")[0] or "data"
    if path.is_dir():
        if any(set(METADATA_FILES) & set(files) for _, _, files in os.walk(path)):
            return metadata_samples(path, source, options, on_skip)
        return folder_samples(path, source, options, on_skip)
    if spec.endswith((".tar", ".tar.gz", ".tgz")) or "{" in spec:
        return tar_samples(spec, on_skip)
    if path.is_file():
        return table_samples(path, source, options, on_skip)
    raise FileNotFoundError(f"input not found: {spec}")
