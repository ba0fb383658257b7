"""``mmfuse data dedup``: exact and near-duplicate samples, their clusters, and a filtered copy.

Each sample is measured (:mod:`~mmfuse.training.datatools.measures`): every media item by its
fingerprint (image pHash + thumbnail; audio by its decoded waveform resampled to 8 kHz: exact
SHA-256 and a spectrogram pHash; video by 4 frames), its text by MinHash-LSH. Two samples are

* **exact duplicates** when their media content and text are identical (SHA-256; for audio, of the
  decoded waveform, so a re-muxed copy counts);
* **near duplicates** (``--match all``, the default) when they have the same kinds of content and
  every kind matches: each modality within its pHash and thumbnail thresholds (``media.NEAR``;
  ``--max_hamming`` / ``--max_rms`` override them), the texts at least ``--text_threshold``
  similar (estimated Jaccard over character 5-grams). ``--match any``: one
  matching kind is enough. With ``all``, two captions of one picture (COCO-style) and one caption
  template on two different digits are not duplicates; with ``any`` they are.

Duplicates are grouped into clusters (union-find); the first sample of a cluster in reading order
is kept. ``dedup.json`` lists every cluster, and the clusters of each single measure (e.g. every
group of samples sharing near-identical text) for inspection; the filtered copy (``--out``/filtered,
same shard names, unless ``--no_copy``) holds the kept samples. Memory: one fingerprint (~0.3 KB
per picture) and one MinHash (8 bytes x ``--num_perm``) per sample, never the media.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from mmfuse.training.datatools.measures import Measures, measure
from mmfuse.training.datatools.near import (
    DisjointSet,
    NearIndex,
    Thresholds,
    add_threshold_arguments,
    near_thresholds,
)
from mmfuse.training.datatools.reporting import print_lines, print_table, subcommand, write_json
from mmfuse.training.datatools.shards import ReadErrors, brace_url, copy_shards, read_samples, resolve_shards
from mmfuse.training.datatools.textmatch import TextNearIndex

ItemId = tuple[str, str]  # (shard, key)


class Deduplicator:
    """Streams samples in, finds each one's duplicates among those seen before.

    Args:
        thresholds: modality -> (pHash bits per 64, thumbnail RMS) of a near-duplicate media item.
        text_threshold: estimated Jaccard similarity of near-duplicate texts.
        num_perm: MinHash permutations.
        match: ``"all"`` (every kind of content must match) or ``"any"``.
    """

    def __init__(self, thresholds: Thresholds, text_threshold: float, num_perm: int, match: str) -> None:
        if match not in ("all", "any"):
            raise ValueError(f"match must be 'all' or 'any', not {match!r}")
        self.match = match
        self.media: dict[str, NearIndex] = {}
        self.thresholds = thresholds
        self.text = TextNearIndex(text_threshold, num_perm)
        self.first_exact: dict[bytes, ItemId] = {}
        self.exact_of: dict[ItemId, bytes] = {}
        self.parts: dict[ItemId, frozenset[str]] = {}
        self.order: list[ItemId] = []
        self.duplicates = DisjointSet()
        self.by_measure: dict[str, DisjointSet] = {"exact": DisjointSet()}

    def _near(self, item: ItemId, measures: Measures) -> dict[str, set[ItemId]]:
        """Earlier items near ``item`` on each kind of its content (media by modality, text)."""
        found: dict[str, set[ItemId]] = {}
        for modality, fingerprint in measures.media:
            if modality not in self.media:
                self.media[modality] = NearIndex(*self.thresholds[modality])
            index = self.media[modality]
            found.setdefault(modality, set()).update(i for i, _, _ in index.query(fingerprint))
            index.add(item, fingerprint)
        sketch = self.text.minhash(measures.text) if measures.text else None
        if sketch is not None:
            found["text"] = {i for i, _ in self.text.query(sketch)}
            self.text.add(item, sketch)
        return found

    def add(self, item: ItemId, measures: Measures) -> None:
        """Index one sample and join it to the clusters of its duplicates."""
        self.order.append(item)
        self.parts[item], self.exact_of[item] = measures.parts, measures.exact
        earlier = self.first_exact.setdefault(measures.exact, item)
        if earlier != item:
            self.duplicates.union(earlier, item)
            self.by_measure["exact"].union(earlier, item)
        near = self._near(item, measures)
        for kind, items in near.items():
            for other in items:
                self.by_measure.setdefault(kind, DisjointSet()).union(other, item)
        if self.match == "any":
            matches = set().union(*near.values())
        else:  # same kinds of content, each kind near
            matches = set.intersection(*near.values()) if near and len(near) == len(measures.parts) else set()
            matches = {m for m in matches if self.parts[m] == measures.parts}
        for other in matches:
            self.duplicates.union(other, item)

    def clusters(self) -> list[list[ItemId]]:
        """Duplicate clusters, members in reading order (the first is the one kept)."""
        return self.duplicates.clusters(self.order)


def _row(item: ItemId) -> dict[str, str]:
    return {"shard": item[0], "key": item[1]}


def dedup(urls: list[str], deduplicator: Deduplicator) -> tuple[dict[str, Any], set[ItemId]]:
    """Measure every sample of ``urls``; return the report and the items to remove."""
    errors, unmeasured = ReadErrors(), []
    for sample in read_samples(urls, description="dedup", errors=errors):
        item = (sample["__url__"], sample["__key__"])
        try:
            measures = measure(sample)
        except Exception as exn:  # noqa: BLE001 - a corrupt sample is counted, kept and reported
            unmeasured.append({**_row(item), "reason": f"{type(exn).__name__}: {exn}"[:500]})
            continue
        deduplicator.add(item, measures)
    clusters = deduplicator.clusters()
    exact = deduplicator.exact_of
    remove = {item for cluster in clusters for item in cluster[1:]}
    report = {
        "shards": urls,
        "samples": len(deduplicator.order) + len(unmeasured),
        "match": deduplicator.match,
        "exact_duplicates": sum(exact[i] == exact[c[0]] for c in clusters for i in c[1:]),
        "near_duplicates": sum(exact[i] != exact[c[0]] for c in clusters for i in c[1:]),
        "removed": len(remove),
        "clusters": [
            {"keep": _row(c[0]), "duplicates": [{**_row(i), "exact": exact[i] == exact[c[0]]} for i in c[1:]]}
            for c in clusters
        ],
        "by_measure": {
            kind: {
                "clusters": len(cs),
                "samples": sum(map(len, cs)),
                "members": [[_row(i) for i in c] for c in cs],
            }
            for kind, ds in sorted(deduplicator.by_measure.items())
            for cs in [ds.clusters(deduplicator.order)]
        },
        "unmeasured": unmeasured,
        "unreadable": errors.rows,
    }
    return report, remove


def run(args: argparse.Namespace) -> int:
    """Deduplicate, write ``dedup.json`` (and the filtered copy) in ``--out``, print the summary."""
    urls = resolve_shards(args.shards)
    deduplicator = Deduplicator(
        near_thresholds(args.max_hamming, args.max_rms), args.text_threshold, args.num_perm, args.match
    )
    report, remove = dedup(urls, deduplicator)
    report["thresholds"] = {"media": deduplicator.thresholds, "text_threshold": args.text_threshold,
                            "num_perm": args.num_perm}  # fmt: skip
    report["filtered"] = None
    if not args.no_copy:
        out = args.out / "filtered"
        counts = copy_shards(
            urls, out, lambda s: (s["__url__"], s["__key__"]) not in remove, description="copy"
        )
        shards = brace_url([str(out / os.path.basename(u)) for u in urls])
        report["filtered"] = {"shards": shards, **counts}
    path = write_json(args.out / "dedup.json", report)
    print_table(
        "mmfuse data dedup",
        ["samples", "exact duplicates", "near duplicates", "removed", "clusters", "unmeasured"],
        [[report["samples"], report["exact_duplicates"], report["near_duplicates"], report["removed"],
          len(report["clusters"]), len(report["unmeasured"])]],
    )  # fmt: skip
    print_table(
        "clusters of each single measure (for inspection; removal needs --match)",
        ["measure", "clusters", "samples in them"],
        [[kind, m["clusters"], m["samples"]] for kind, m in report["by_measure"].items()],
    )
    lines = [f"report: {path}"]
    if report["filtered"]:
        lines.append(f"filtered copy: {report['filtered']['shards']} ({report['filtered']['kept']} samples)")
    print_lines(lines)
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``dedup`` and its options."""
    parser = subcommand(subparsers, "dedup", __doc__)
    parser.add_argument("shards", nargs="+", help="shard URLs (brace notation)")
    parser.add_argument("--out", type=Path, default=Path("runs/data/dedup"), help="report + filtered copy")
    parser.add_argument(
        "--match", choices=("all", "any"), default="all", help="kinds of content that must match"
    )
    add_threshold_arguments(parser)
    parser.add_argument("--text_threshold", type=float, default=0.8, help="MinHash Jaccard of near texts")
    parser.add_argument("--num_perm", type=int, default=128, help="MinHash permutations")
    parser.add_argument("--no_copy", action="store_true", help="write no filtered copy")
    parser.set_defaults(run=run)
