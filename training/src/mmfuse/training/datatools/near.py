"""Near-duplicate search over media fingerprints, and clusters of duplicates.

:class:`NearIndex` holds the fingerprints of one modality in two growing arrays (8 bytes of hash and
256 bytes of thumbnail per picture) and answers a query with one vectorised pass over all of them
(``numpy.bitwise_count`` for the Hamming distances). Deduplicating n items is n^2 / 2 comparisons in
C: about a second for 10^4 items, minutes for 10^6; a decontamination pass costs
``train x eval`` comparisons.
"""

from __future__ import annotations

import argparse
from collections.abc import Hashable, Iterable

import numpy as np

from mmfuse.training.datatools.media import NEAR, Fingerprint

Thresholds = dict[str, tuple[int, float]]  # modality -> (pHash bits per 64, thumbnail RMS)


def near_thresholds(max_hamming: int | None = None, max_rms: float | None = None) -> Thresholds:
    """Every modality's thresholds (:data:`~mmfuse.training.datatools.media.NEAR`), each one replaced
    by ``max_hamming`` / ``max_rms`` when given."""
    return {
        modality: (hamming if max_hamming is None else max_hamming, rms if max_rms is None else max_rms)
        for modality, (hamming, rms) in NEAR.items()
    }


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max_hamming`` and ``--max_rms``: one value for every modality instead of its default."""
    defaults = ", ".join(f"{m} {h}" for m, (h, _) in NEAR.items())
    parser.add_argument("--max_hamming", type=int, default=None, help=f"pHash bits per 64 ({defaults})")
    defaults = ", ".join(f"{m} {r}" for m, (_, r) in NEAR.items())
    parser.add_argument("--max_rms", type=float, default=None, help=f"thumbnail RMS difference ({defaults})")


class NearIndex:
    """Fingerprints of one modality; finds those within both thresholds of a query.

    A pair is near when its pHash Hamming distance is at most ``max_hamming`` per 64 bits (summed
    over the pictures of a clip) and the root-mean-square difference of its thumbnails is at most
    ``max_rms``.

    Args:
        max_hamming: largest pHash distance per 64-bit word.
        max_rms: largest thumbnail RMS difference.
    """

    def __init__(self, max_hamming: int, max_rms: float) -> None:
        self.max_hamming, self.max_rms = max_hamming, max_rms
        self.ids: list[Hashable] = []
        self._bits = np.zeros((0, 0), dtype=np.uint64)
        self._thumbs = np.zeros((0, 0), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, item_id: Hashable, fingerprint: Fingerprint) -> None:
        """Store one fingerprint under ``item_id``.

        Raises:
            ValueError: its size differs from the fingerprints already stored.
        """
        n = len(self.ids)
        if n == 0:
            self._bits = np.zeros((16, fingerprint.bits.size), dtype=np.uint64)
            self._thumbs = np.zeros((16, fingerprint.thumb.size), dtype=np.float32)
        if fingerprint.bits.size != self._bits.shape[1] or fingerprint.thumb.size != self._thumbs.shape[1]:
            raise ValueError(
                f"fingerprint of {item_id!r} has {fingerprint.bits.size} hash words and "
                f"{fingerprint.thumb.size} thumbnail values; the index holds {self._bits.shape[1]} and "
                f"{self._thumbs.shape[1]}"
            )
        if n == len(self._bits):  # grow by doubling: amortised O(1) per item
            self._bits = np.concatenate([self._bits, np.zeros_like(self._bits)])
            self._thumbs = np.concatenate([self._thumbs, np.zeros_like(self._thumbs)])
        self._bits[n], self._thumbs[n] = fingerprint.bits, fingerprint.thumb
        self.ids.append(item_id)

    def query(self, fingerprint: Fingerprint) -> list[tuple[Hashable, int, float]]:
        """``(item_id, hamming, rms)`` of every stored fingerprint near ``fingerprint``, closest first."""
        n = len(self.ids)
        if n == 0 or fingerprint.bits.size != self._bits.shape[1]:
            return []
        words = fingerprint.bits.size
        hamming = np.bitwise_count(self._bits[:n] ^ fingerprint.bits).sum(axis=1)  # [n, w] -> [n]
        candidates = np.flatnonzero(hamming <= self.max_hamming * words)
        rms = np.sqrt(((self._thumbs[candidates] - fingerprint.thumb) ** 2).mean(axis=1))  # [c]
        keep = rms <= self.max_rms
        near, near_rms = candidates[keep], rms[keep]
        order = np.lexsort((hamming[near], near_rms))  # closest thumbnail first, then fewest bits
        return [
            (self.ids[i], int(hamming[i]), float(r))
            for i, r in zip(near[order], near_rms[order], strict=True)
        ]


class DisjointSet:
    """Union-find over hashable items (path halving, union by size): duplicate clusters."""

    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}
        self.size: dict[Hashable, int] = {}

    def find(self, item: Hashable) -> Hashable:
        """The representative of ``item``'s cluster (``item`` itself when new)."""
        self.parent.setdefault(item, item)
        self.size.setdefault(item, 1)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: Hashable, b: Hashable) -> None:
        """Merge the clusters of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def clusters(self, order: Iterable[Hashable]) -> list[list[Hashable]]:
        """Clusters of two or more items, members listed in ``order`` (e.g. reading order)."""
        groups: dict[Hashable, list[Hashable]] = {}
        for item in order:
            if item in self.parent:
                groups.setdefault(self.find(item), []).append(item)
        return [g for g in groups.values() if len(g) > 1]
