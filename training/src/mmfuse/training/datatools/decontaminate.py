"""``mmfuse data decontaminate``: evaluation items that occur in the training shards.

An evaluation item is hit by a training sample when

* **text:** the training text contains one of the item's 13-grams (normalised words), or the whole
  item when it is shorter (GPT-3's contamination rule; case and punctuation ignored); counted
  again as ``text_equal`` when the whole normalised texts are equal (a short caption such as
  "rook" is contained in "a black rook" but equals only "Rook!"); or
* **media:** a training media item of the same modality is a near duplicate of one of the item's
  (pHash and thumbnail within the modality's thresholds, as ``dedup``).

The evaluation sets are indexed in memory (their fingerprints and n-grams); the training shards
stream past them once. ``decontaminate.json`` has, per evaluation set, every item hit, by which
measures and by which training samples (the first ``--max_listed`` of them, and their count).
``--filtered DIR`` also writes the training shards without every sample that hit an item.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mmfuse.training.datatools.measures import measure
from mmfuse.training.datatools.near import NearIndex, Thresholds, add_threshold_arguments, near_thresholds
from mmfuse.training.datatools.reporting import print_lines, print_table, subcommand, write_json
from mmfuse.training.datatools.shards import ReadErrors, brace_url, copy_shards, read_samples, resolve_shards
from mmfuse.training.datatools.textmatch import NgramIndex, normalize

ItemId = tuple[str, str, str]  # (eval set, shard, key)


class EvalIndex:
    """The evaluation items' media fingerprints and text n-grams.

    Args:
        ngram: n-gram length in words.
        thresholds: modality -> (pHash bits per 64, thumbnail RMS) of a near-duplicate media item.
    """

    def __init__(self, ngram: int, thresholds: Thresholds) -> None:
        self.text = NgramIndex(ngram)
        self.normalized: dict[ItemId, str] = {}
        self.media = {modality: NearIndex(*limits) for modality, limits in thresholds.items()}
        self.items: dict[str, list[ItemId]] = defaultdict(list)
        self.unmeasured: list[dict[str, str]] = []

    def add_set(self, name: str, urls: list[str], errors: ReadErrors) -> None:
        """Index every sample of one evaluation set."""
        for sample in read_samples(urls, description=f"index {name}", errors=errors):
            item = (name, sample["__url__"], sample["__key__"])
            try:
                measures = measure(sample)
            except Exception as exn:  # noqa: BLE001 - a corrupt eval item cannot be matched; reported
                self.unmeasured.append({"set": name, "shard": item[1], "key": item[2],
                                        "reason": f"{type(exn).__name__}: {exn}"[:500]})  # fmt: skip
                continue
            self.items[name].append(item)
            for modality, fingerprint in measures.media:
                self.media[modality].add(item, fingerprint)
            if measures.text:
                self.text.add(item, measures.text)
                self.normalized[item] = normalize(measures.text)

    def hits(self, sample: dict[str, Any]) -> dict[ItemId, list[dict[str, Any]]]:
        """Evaluation items a training sample hits: ``{item: [{"measure", ...detail}]}``.

        Raises:
            Exception: the sample's media cannot be decoded (the caller counts it).
        """
        measures = measure(sample)
        found: dict[ItemId, list[dict[str, Any]]] = defaultdict(list)
        for modality, fingerprint in measures.media:
            for item, bits, rms in self.media[modality].query(fingerprint):
                found[item].append({"measure": modality, "hamming": bits, "rms": round(rms, 4)})
        if measures.text:
            text = normalize(measures.text)
            for item, ngram in self.text.query(measures.text).items():
                found[item].append({"measure": "text", "ngram": ngram})
                if self.normalized[item] == text:
                    found[item].append({"measure": "text_equal"})
        return found


def decontaminate(
    train: list[str], evals: dict[str, list[str]], index: EvalIndex, max_listed: int
) -> tuple[dict[str, Any], set[tuple[str, str]]]:
    """Index ``evals``, stream ``train`` past them; return the report and the hitting training samples."""
    errors = ReadErrors()
    for name, urls in evals.items():
        index.add_set(name, urls, errors)
    hits: dict[ItemId, list[dict[str, Any]]] = defaultdict(list)
    hit_counts: Counter[ItemId] = Counter()
    measures_of: dict[ItemId, set[str]] = defaultdict(set)
    hitting: set[tuple[str, str]] = set()
    unmeasured_train, samples = [], 0
    for sample in read_samples(train, description="train", errors=errors):
        samples += 1
        source = (sample["__url__"], sample["__key__"])
        try:
            found = index.hits(sample)
        except Exception as exn:  # noqa: BLE001 - counted and reported; it is kept by --filtered
            unmeasured_train.append({"shard": source[0], "key": source[1],
                                     "reason": f"{type(exn).__name__}: {exn}"[:500]})  # fmt: skip
            continue
        if found:
            hitting.add(source)
        for item, matches in found.items():
            hit_counts[item] += 1
            measures_of[item].update(m["measure"] for m in matches)
            if len(hits[item]) < max_listed:
                hits[item].append({"shard": source[0], "key": source[1], "matches": matches})
    sets = {}
    for name, items in index.items.items():
        hit_items = [i for i in items if i in hit_counts]
        by_measure = Counter(m for i in hit_items for m in measures_of[i])
        sets[name] = {
            "shards": evals[name],
            "items": len(items),
            "contaminated": len(hit_items),
            "fraction": len(hit_items) / len(items) if items else 0.0,
            "by_measure": dict(sorted(by_measure.items())),
            "items_hit": [
                {
                    "shard": i[1],
                    "key": i[2],
                    "measures": sorted(measures_of[i]),
                    "train_hits": hit_counts[i],
                    "train": hits[i],
                }
                for i in hit_items
            ],  # fmt: skip
        }
    report = {
        "train": {
            "shards": train,
            "samples": samples,
            "hitting": len(hitting),
            "unmeasured": unmeasured_train,
        },
        "sets": sets,
        "unmeasured_eval": index.unmeasured,
        "unreadable": errors.rows,
    }
    return report, hitting


def _eval_sets(specs: list[str]) -> dict[str, list[str]]:
    """``[NAME=]URL`` arguments -> ``{name: shards}``; default name: ``<directory>/<shard prefix>``."""
    sets: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or "/" in name:
            name, url = "", spec
        urls = resolve_shards([url])
        first = Path(urls[0])
        name = name or f"{first.parent.name}/{first.name.split('.')[0].split('-')[0]}"
        if name in sets:
            raise ValueError(f"two --eval sets are named {name!r}; name them with NAME=URL")
        sets[name] = urls
    return sets


def run(args: argparse.Namespace) -> int:
    """Decontaminate, write ``decontaminate.json`` (and ``--filtered`` shards), print the summary."""
    train = resolve_shards(args.train)
    evals = _eval_sets(args.eval)
    thresholds = near_thresholds(args.max_hamming, args.max_rms)
    index = EvalIndex(args.ngram, thresholds)
    report, hitting = decontaminate(train, evals, index, args.max_listed)
    report["thresholds"] = {"ngram": args.ngram, "media": thresholds}
    report["filtered"] = None
    if args.filtered:
        counts = copy_shards(
            train, args.filtered, lambda s: (s["__url__"], s["__key__"]) not in hitting, description="filter"
        )
        shards = brace_url([str(args.filtered / os.path.basename(u)) for u in train])
        report["filtered"] = {"shards": shards, **counts}
    path = write_json(args.out / "decontaminate.json", report)
    kinds = sorted({k for s in report["sets"].values() for k in s["by_measure"]})
    print_table(
        f"mmfuse data decontaminate: {report['train']['samples']:,} training samples",
        ["eval set", "items", "contaminated", "fraction", *[f"by {k}" for k in kinds]],
        [[name, s["items"], s["contaminated"], s["fraction"], *[s["by_measure"].get(k, 0) for k in kinds]]
         for name, s in report["sets"].items()],
    )  # fmt: skip
    lines = [f"{report['train']['hitting']:,} training samples hit an evaluation item; report: {path}"]
    if report["filtered"]:
        lines.append(
            f"filtered training shards: {report['filtered']['shards']} ({report['filtered']['kept']} kept)"
        )
    print_lines(lines)
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``decontaminate`` and its options."""
    parser = subcommand(subparsers, "decontaminate", __doc__)
    parser.add_argument("--train", nargs="+", required=True, help="training shard URLs")
    parser.add_argument("--eval", nargs="+", required=True, help="evaluation sets: [NAME=]URL")
    parser.add_argument("--out", type=Path, default=Path("runs/data/decontaminate"), help="report directory")
    parser.add_argument("--filtered", type=Path, default=None, help="write training shards without the hits")
    parser.add_argument("--ngram", type=int, default=13, help="n-gram length in words")
    add_threshold_arguments(parser)
    parser.add_argument("--max_listed", type=int, default=20, help="training samples listed per item")
    parser.set_defaults(run=run)
