"""``mmfuse data``: build, inspect, validate, deduplicate and decontaminate webdataset shards.

Every subcommand reads the shards training reads (tar or JSONL, brace notation), one sample at a
time, shows a rich progress bar on stderr, writes a JSON report in ``--out`` and prints a human
summary on stdout::

    mmfuse data build DIR_OR_FILE... --out SHARDS_DIR     # own data -> train/val shards
    mmfuse data inspect SHARDS...                         # counts, sizes, durations, text lengths
    mmfuse data validate SHARDS... [--config CFG]         # decode as training does; exit 1 if corrupt
    mmfuse data dedup SHARDS... --out DIR                 # duplicate clusters + a filtered copy
    mmfuse data decontaminate --train SHARDS --eval SHARDS  # eval items found in training data
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

import torch

SUBCOMMANDS = ("build", "inspect", "validate", "dedup", "decontaminate")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``mmfuse data <subcommand> ...`` and run it; return the exit status.

    Bad input (a missing file, an invalid option value) exits with status 2 and one line naming it.
    """
    parser = argparse.ArgumentParser(prog="mmfuse data", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"mmfuse.training.datatools.{name}").add_parser(subparsers)
    args = parser.parse_args(argv)
    # One small item at a time: torch's intra-op threads only add contention (5x slower audio
    # fingerprints on a loaded 2-core machine).
    torch.set_num_threads(1)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as exn:
        parser.exit(2, f"mmfuse data {args.command}: {exn}\n")


__all__ = ["SUBCOMMANDS", "main"]
