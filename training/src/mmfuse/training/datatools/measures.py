"""The measures of one sample that deduplication and decontamination compare."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mmfuse.core.data import Sample
from mmfuse.training.datatools.media import FINGERPRINTS, Fingerprint
from mmfuse.training.datatools.parts import media_of, text_of


@dataclass
class Measures:
    """Fingerprints of a sample's media and its text.

    Attributes:
        media: ``(modality, fingerprint)`` per media item, in member order.
        text: the sample's text (:func:`~mmfuse.training.datatools.parts.text_of`), None without.
        exact: SHA-256 over the media items' exact hashes and the raw text: equal for two samples
            with the same media content and the same text.
    """

    media: list[tuple[str, Fingerprint]]
    text: str | None
    exact: bytes

    @property
    def parts(self) -> frozenset[str]:
        """The sample's kinds of content: its modalities, plus ``"text"`` when it has text."""
        return frozenset([m for m, _ in self.media] + (["text"] if self.text else []))


def measure(sample: Sample) -> Measures:
    """Decode and fingerprint every media item of ``sample`` and read its text.

    Raises:
        Exception: whatever the media decoders raise for corrupt data (the callers count it).
    """
    media = [(modality, FINGERPRINTS[modality](data)) for modality, data in media_of(sample)]
    text = text_of(sample)
    digest = hashlib.sha256()
    for modality, fingerprint in media:
        digest.update(modality.encode() + b"\0" + fingerprint.exact)
    digest.update(b"\0text\0" + (text or "").encode())
    return Measures(media, text, digest.digest())
