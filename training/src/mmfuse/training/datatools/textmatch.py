"""Text overlap: normalisation, n-gram contamination and MinHash-LSH near duplicates.

Text is compared after :func:`normalize` (Unicode NFKC, lower case, every run of characters that
are not letters or digits replaced by one space), so case and punctuation edits do not hide a
match; lm-evaluation-harness's decontamination janitor, following GPT-3, does the same ("n-grams
ignore case and punctuation and are split on whitespace").
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Hashable

from datasketch import MinHash, MinHashLSH

_NOT_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """NFKC, lower case, non-alphanumeric runs -> one space, stripped: ``"A Cat!"`` -> ``"a cat"``."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


class NgramIndex:
    """Evaluation texts indexed by their word n-grams, for contamination checks.

    An evaluation item is contaminated by a training text that contains one of its ``n``-grams
    (normalised words), or, for an item shorter than ``n`` words, the whole item as a contiguous
    word sequence. This is GPT-3's definition (Brown et al., 2020, "Language Models are Few-Shot
    Learners", appendix C: 13-gram overlap, or overlap with the whole example when it is shorter).

    Args:
        n: n-gram length in words (13 as in GPT-3).
    """

    def __init__(self, n: int = 13) -> None:
        self.n = n
        self._grams: dict[tuple[str, ...], list[Hashable]] = defaultdict(list)
        self._lengths: set[int] = set()

    def add(self, item_id: Hashable, text: str) -> None:
        """Index one evaluation text (nothing for a text without words)."""
        words = normalize(text).split()
        if not words:
            return
        size = min(self.n, len(words))
        self._lengths.add(size)
        for gram in {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}:
            self._grams[gram].append(item_id)

    def query(self, text: str) -> dict[Hashable, str]:
        """Evaluation items contaminated by ``text``: ``{item_id: the first shared n-gram}``."""
        words = normalize(text).split()
        hits: dict[Hashable, str] = {}
        for size in sorted(self._lengths):
            for i in range(len(words) - size + 1):
                for item_id in self._grams.get(tuple(words[i : i + size]), ()):
                    hits.setdefault(item_id, " ".join(words[i : i + size]))
        return hits


def shingles(text: str, k: int = 5) -> set[str]:
    """Character ``k``-grams of the normalised text (the whole text when shorter; empty for none)."""
    norm = normalize(text)
    if len(norm) <= k:
        return {norm} if norm else set()
    return {norm[i : i + k] for i in range(len(norm) - k + 1)}


class TextNearIndex:
    """Near-duplicate texts by MinHash-LSH over character 5-gram shingles (datasketch).

    LSH proposes candidates whose estimated Jaccard similarity is likely above ``threshold``
    (Broder, 1997, "On the resemblance and containment of documents"; banding as in Leskovec et al.,
    "Mining of Massive Datasets", ch. 3); each candidate is then checked against the MinHash
    estimate itself. Holds ``num_perm`` 8-byte hash values per text.

    Args:
        threshold: smallest estimated Jaccard similarity of a near duplicate.
        num_perm: MinHash permutations.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128) -> None:
        self.threshold, self.num_perm = threshold, num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._hashes: dict[Hashable, MinHash] = {}

    def minhash(self, text: str) -> MinHash | None:
        """The MinHash of a text's shingles; None for a text without letters or digits."""
        grams = shingles(text)
        if not grams:
            return None
        sketch = MinHash(num_perm=self.num_perm, seed=1)
        sketch.update_batch([g.encode() for g in sorted(grams)])
        return sketch

    def query(self, sketch: MinHash) -> list[tuple[Hashable, float]]:
        """``(item_id, estimated Jaccard)`` of indexed texts at least ``threshold`` similar, best first."""
        found = [(i, self._hashes[i].jaccard(sketch)) for i in self.lsh.query(sketch)]
        return sorted(((i, j) for i, j in found if j >= self.threshold), key=lambda p: -p[1])

    def add(self, item_id: Hashable, sketch: MinHash) -> None:
        """Index one text's MinHash under a new ``item_id``."""
        self.lsh.insert(item_id, sketch)
        self._hashes[item_id] = sketch
