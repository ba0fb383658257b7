"""``mmfuse data validate``: decode every sample as training does; list the corrupt ones.

With ``--config`` (the training YAML, layered as for ``mmfuse fit``) the data module of that config
is built and its own decoder runs on every sample: the pair decoder (``mmfuse.core.data.MediaTextDecoder``)
or the chat decoder (``mmfuse.training.data.chat.ChatDecoder``) with the config's media transforms,
tokenizer and ``max_length``; the config's train shards are decoded as in training (augmentation
on), its val shards as in validation. Without a config each sample gets the decoder its members
call for, with default arguments: the chat decoder for a json record with ``messages``
(``--tokenizer``, ``--max_length``), else the pair decoder with the transform of its media member
(open_clip's ``ViT-B-32`` tokenizer).

A shard that cannot be read (zero bytes, truncated, bad gzip) or holds no sample is listed too:
training skips a corrupt sample, but a worker left with only empty shards stops the run. The exit
status is 1 when anything is listed, so the command can gate a job.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import open_clip
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule

from mmfuse.core.data import MediaTextDecoder, Sample
from mmfuse.core.text import load_tokenizer
from mmfuse.training.data.chat import ChatDecoder
from mmfuse.training.datatools.parts import default_transforms, modality_of, record
from mmfuse.training.datatools.reporting import print_lines, print_table, subcommand, write_json
from mmfuse.training.datatools.shards import ReadErrors, read_samples, resolve_shards

Decoder = Callable[..., Any]


class DefaultDecoder:
    """The training decoder a sample's members call for, with default arguments.

    Args:
        tokenizer: tokenizer directory of the chat decoder (loaded at the first chat sample).
        max_length: tokens per conversation of the chat decoder.

    Raises (per sample):
        KeyError: no member that a media transform reads and no chat messages.
    """

    def __init__(self, tokenizer: str, max_length: int) -> None:
        self.transforms = default_transforms()
        clip_tokenizer = open_clip.get_tokenizer("ViT-B-32")
        self.pairs = {m: MediaTextDecoder(t, clip_tokenizer) for m, t in self.transforms.items()}
        self.tokenizer, self.max_length = tokenizer, max_length
        self._chat: ChatDecoder | None = None

    def __call__(self, sample: Sample, *, train: bool) -> Any:
        if isinstance(record(sample).get("messages"), list):
            if self._chat is None:
                self._chat = ChatDecoder(load_tokenizer(self.tokenizer), self.transforms, self.max_length)
            return self._chat(sample, train=train)
        modality = next((m for k in sample if not k.startswith("_") and (m := modality_of(k))), None)
        if modality is None:
            members = sorted(k for k in sample if not k.startswith("_"))
            raise KeyError(f"no media member and no chat messages; members: {members}")
        return self.pairs[modality](sample, train=train)


def config_datamodule(configs: Sequence[Path]) -> LightningDataModule:
    """The ``data`` section of training configs (later files override earlier ones), instantiated.

    Raises:
        ValueError: no config has a ``data`` section.
    """
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    namespace = None
    for path in configs:
        section = (yaml.safe_load(path.read_text()) or {}).get("data")
        if section is not None:
            namespace = parser.parse_object({"data": section}, namespace=namespace)
    if namespace is None:
        raise ValueError(f"no 'data' section in {[str(p) for p in configs]}")
    return parser.instantiate(namespace).data


def validate(jobs: Sequence[tuple[list[str], bool]], decode: Decoder) -> dict[str, Any]:
    """Decode every sample of each ``(shards, train)`` job with ``decode(sample, train=train)``.

    Returns:
        The report: ``samples``, ``decoded``, ``corrupt`` (``{"key", "shard", "reason"}`` rows),
        ``unreadable`` (shard-level read failures), ``empty_shards``, ``per_shard`` counts and ``ok``.
    """
    corrupt: list[dict[str, str]] = []
    errors = ReadErrors()
    per_shard: dict[str, dict[str, int]] = {}
    decoded = 0
    for urls, train in jobs:
        for url in urls:
            per_shard.setdefault(url, {"samples": 0, "corrupt": 0})
        for sample in read_samples(urls, description="validate", errors=errors):
            counts = per_shard[sample["__url__"]]
            counts["samples"] += 1
            try:
                decode(sample, train=train)
            except Exception as exn:  # noqa: BLE001 - any decoder failure is a corrupt sample
                counts["corrupt"] += 1
                reason = f"{type(exn).__name__}: {exn}"
                corrupt.append({"key": sample["__key__"], "shard": sample["__url__"], "reason": reason[:500]})
                continue
            decoded += 1
    unreadable = {row["shard"] for row in errors.rows}
    empty = [u for u, c in per_shard.items() if c["samples"] == 0 and u not in unreadable]
    return {
        "shards": len(per_shard),
        "samples": sum(c["samples"] for c in per_shard.values()),
        "decoded": decoded,
        "corrupt": corrupt,
        "unreadable": errors.rows,
        "empty_shards": empty,
        "per_shard": per_shard,
        "ok": not (corrupt or errors.rows or empty),
    }


def run(args: argparse.Namespace) -> int:
    """Validate, write ``validate.json`` in ``--out``, print the summary; 1 when anything is wrong."""
    if args.config:
        datamodule = config_datamodule(args.config)
        if getattr(datamodule, "tokenizer", "") is None:  # an LM stage's data reads the model's tokenizer
            datamodule.tokenizer = load_tokenizer(args.tokenizer, modalities=list(datamodule.transforms))
        decode = datamodule.decoder()
        if args.shards:
            jobs = [(resolve_shards(args.shards), args.train)]
        else:
            train = datamodule.train_shards
            sources = (
                [train]
                if isinstance(train, str)
                else [s["shards"] if isinstance(s, dict) else s.shards for s in train]
            )
            jobs = [(resolve_shards(sources), True)]
            if datamodule.val_shards:
                jobs.append((resolve_shards([datamodule.val_shards]), False))
    elif args.shards:
        decode = DefaultDecoder(args.tokenizer, args.max_length)
        jobs = [(resolve_shards(args.shards), args.train)]
    else:
        raise ValueError("give shards, a --config, or both")
    report = validate(jobs, decode)
    path = write_json(args.out / "validate.json", report)
    print_table(
        "mmfuse data validate",
        ["shards", "samples", "decoded", "corrupt", "unreadable shards", "empty shards"],
        [[report["shards"], report["samples"], report["decoded"], len(report["corrupt"]),
          len({r["shard"] for r in report["unreadable"]}), len(report["empty_shards"])]],
    )  # fmt: skip
    problems = [f"corrupt {r['shard']} {r['key']}: {r['reason']}" for r in report["corrupt"]]
    problems += [f"unreadable {r['shard']}: {r['reason']}" for r in report["unreadable"]]
    problems += [f"empty {u}" for u in report["empty_shards"]]
    print_lines(problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []))
    print_lines([f"{'OK' if report['ok'] else 'FAILED'}; report: {path}"])
    return 0 if report["ok"] else 1


def add_parser(subparsers: Any) -> None:
    """Register ``validate`` and its options."""
    parser = subcommand(subparsers, "validate", __doc__)
    parser.add_argument("shards", nargs="*", help="shard URLs (brace notation); default: the config's")
    parser.add_argument("--config", type=Path, action="append", help="training YAML (repeatable, layered)")
    parser.add_argument("--train", action="store_true", help="decode given shards as in training")
    parser.add_argument(
        "--tokenizer", default="data/tokenizer", help="chat tokenizer (the model's, for an LM config)"
    )
    parser.add_argument("--max_length", type=int, default=256, help="chat max_length without --config")
    parser.add_argument("--out", type=Path, default=Path("runs/data/validate"), help="report directory")
    parser.set_defaults(run=run)
