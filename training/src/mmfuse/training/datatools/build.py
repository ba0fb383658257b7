"""``mmfuse data build``: your own data -> train/val webdataset shards that training reads.

Reads the layouts of :mod:`~mmfuse.training.datatools.sources` (a folder of ``img.jpg`` +
``img.txt``, Hugging Face ``imagefolder``/``audiofolder`` with ``metadata.jsonl``, CSV/JSONL with
media paths, img2dataset's tar shards), one sample at a time, and writes
``{out}/train-000000.tar ...`` and ``{out}/val-000000.tar ...``: a new shard after ``--shard_size``
bytes or ``--max_count`` samples. The split is a hash of each media file's path (or a tar sample's
key): SHA-256, first 8 bytes big-endian, modulo 100, below ``--val_percent`` is val, the rule of
the embedded data, so rebuilding after adding files keeps every old sample in its split. Samples
keep the input's order (training shuffles shards and samples). ``build.json`` records the shards,
the brace URLs for ``--data.train_shards`` / ``--data.val_shards``, and every skipped input.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from mmfuse.training.datatools.parts import MODALITY_EXTENSIONS
from mmfuse.training.datatools.reporting import print_lines, print_table, subcommand, write_json
from mmfuse.training.datatools.shards import SplitWriter, brace_url, console, split_of
from mmfuse.training.datatools.sources import Options, input_samples

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> float:
    """``"256MB"``, ``"1.5G"``, ``"1000"`` -> bytes (decimal units).

    Raises:
        ValueError: naming the text when it is not a number with an optional K/M/G/T unit.
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)B?\s*", text.upper())
    if match is None:
        raise ValueError(f"--shard_size {text!r}: expected a size such as 256MB or 1G")
    return float(match.group(1)) * _UNITS[match.group(2)]


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Write the shards of every input; return the report."""
    writer = SplitWriter(
        args.out, max_size=parse_size(args.shard_size), max_count=args.max_count, gzip=args.gzip
    )
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    modalities = frozenset(args.modality) if args.modality else None
    options = Options(args.source, args.media_column, args.caption_column, modalities)
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    )
    with progress:
        task = progress.add_task("build", total=None)
        for spec in args.inputs:

            def on_skip(what: str, reason: str, spec: str = spec) -> None:
                skipped.append({"input": spec, "item": what, "reason": reason})

            for group, sample in input_samples(spec, options, on_skip):
                if sample["__key__"] in seen:
                    on_skip(sample["__key__"], "duplicate key (an earlier input has the same path or key)")
                    continue
                seen.add(sample["__key__"])
                writer.write(split_of(group, args.val_percent), sample)
                progress.update(task, description=f"build: train {writer.counts.get('train', 0):,}, "
                                f"val {writer.counts.get('val', 0):,} samples")  # fmt: skip
    paths = writer.close()
    splits = {
        split: {"samples": writer.counts[split], "shards": paths[split],
                "bytes": sum(os.path.getsize(p) for p in paths[split])}
        for split in sorted(paths)
    }  # fmt: skip
    return {
        "inputs": args.inputs,
        "out": str(args.out),
        "val_percent": args.val_percent,
        "splits": splits,
        "train_shards": brace_url(paths.get("train", [])),
        "val_shards": brace_url(paths.get("val", [])),
        "skipped": skipped,
    }


def run(args: argparse.Namespace) -> int:
    """Build, write ``build.json`` in ``--out``, print the summary."""
    report = build(args)
    path = write_json(args.out / "build.json", report)
    print_table(
        "mmfuse data build",
        ["split", "samples", "shards", "MB on disk"],
        [[s, v["samples"], len(v["shards"]), v["bytes"] / 1e6] for s, v in report["splits"].items()],
    )
    lines = [f"skipped {r['input']} {r['item']}: {r['reason']}" for r in report["skipped"][:20]]
    if len(report["skipped"]) > 20:
        lines.append(f"... {len(report['skipped'])} skipped in all (see the report)")
    lines.append(f"--data.train_shards '{report['train_shards']}' --data.val_shards '{report['val_shards']}'")
    num_train = len(report["splits"].get("train", {}).get("shards", []))
    if num_train < 2:
        workers = max(num_train, 1)
        lines.append(
            f"{num_train} train shard(s): train with --data.num_workers {workers}, or build more, smaller"
            " shards (--max_count) so that every dataloader worker gets one"
        )
    lines.append(f"report: {path}; check the media with `mmfuse data validate {args.out}/*.tar*`")
    print_lines(lines)
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``build`` and its options."""
    parser = subcommand(subparsers, "build", __doc__)
    parser.add_argument("inputs", nargs="+", help="folders, CSV/TSV/JSONL files or tar shards")
    parser.add_argument("--out", type=Path, required=True, help="output directory of the shards")
    parser.add_argument("--val_percent", type=float, default=15.0, help="percent of groups in val (0: none)")
    parser.add_argument("--shard_size", default="256MB", help="bytes of samples per shard, e.g. 256MB")
    parser.add_argument("--max_count", type=int, default=10000, help="samples per shard")
    parser.add_argument("--gzip", action="store_true", help="write .tar.gz shards")
    parser.add_argument("--source", default=None, help="json 'source' of the samples (default: input name)")
    parser.add_argument(
        "--modality", action="append", choices=sorted(MODALITY_EXTENSIONS), help="keep only it (repeatable)"
    )
    parser.add_argument("--media_column", default=None, help="media path column of a table")
    parser.add_argument("--caption_column", default=None, help="caption column of a table")
    parser.set_defaults(run=run)
