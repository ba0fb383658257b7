"""``mmfuse data decontaminate``: evaluation items that occur in the training shards.

An evaluation item is hit by a training sample when

* **text:** the training text contains one of the item's 13-grams (normalised words), or the whole
  item when it is shorter (GPT-3's contamination rule; case and punctuation ignored); counted
  again as ``text_equal`` when the whole normalised texts are equal (a short caption such as
  "rook" is contained in "a black rook" but equals only "Rook!"); or
* **media:** a training media item of the same modality is a near duplicate of one of the item's
  (pHash within ``--max_hamming`` bits per 64 and thumbnail within ``--max_rms``, as ``dedup``).

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
from mmfuse.training.datatools.near import MAX_HAMMING, MAX_RMS, NearIndex
from mmfuse.training.datatools.reporting import print_lines, print_table, subcommand, write_json
from mmfuse.training.datatools.shards import ReadErrors, brace_url, copy_shards, read_samples, resolve_shards
from mmfuse.training.datatools.textmatch import NgramIndex, normalize

ItemId = tuple[str, str, str]  # (eval set, shard, key)


class EvalIndex:
    """The evaluation items' media fingerprints and text n-grams.

    Args:
        ngram: n-gram length in words.
        max_hamming: pHash bits per 64 of a near-duplicate media item.
        max_rms: thumbnail RMS difference of a near-duplicate media item.
    """

    def __init__(self, ngram: int, max_hamming: int, max_rms: float) -> None:
        self.text = NgramIndex(ngram)
        self.normalized: dict[ItemId, str] = {}
        self.media: dict[str, NearIndex] = defaultdict(lambda: NearIndex(max_hamming, max_rms))
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
            for item, bits, rms in self.media[modality].query(fingerprint) if modality in self.media else []:
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
    index = EvalIndex(args.ngram, args.max_hamming, args.max_rms)
    report, hitting = decontaminate(train, evals, index, args.max_listed)
    report["thresholds"] = {"ngram": args.ngram, "max_hamming": args.max_hamming, "max_rms": args.max_rms}
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
    parser.add_argument("--max_hamming", type=int, default=MAX_HAMMING, help="pHash bits per 64")
    parser.add_argument("--max_rms", type=float, default=MAX_RMS, help="thumbnail RMS difference")
    parser.add_argument("--max_listed", type=int, default=20, help="training samples listed per item")
    parser.set_defaults(run=run)
