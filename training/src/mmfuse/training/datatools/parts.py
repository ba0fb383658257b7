"""What a sample holds: its media by modality, its text and its metadata.

A media member's modality is the one whose training transform reads its extension
(``ImageTransform.extensions`` ...): the same member a data module would decode. A chat sample
(a json record with ``messages``) from a JSONL shard names its media by path; they are read as the
chat decoder reads them (:func:`mmfuse.training.data.chat.media_bytes`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from mmfuse.audio import AudioTransform
from mmfuse.core.data import MediaTransform, Sample
from mmfuse.core.text import content_text, media_parts, media_token
from mmfuse.training.data.chat import media_bytes
from mmfuse.video import VideoTransform
from mmfuse.vision import ImageTransform

#: modality -> the member extensions its training transform decodes.
MODALITY_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image": ImageTransform.extensions,
    "audio": AudioTransform.extensions,
    "video": VideoTransform.extensions,
}
_MODALITY_OF = {ext: m for m, exts in MODALITY_EXTENSIONS.items() for ext in exts}


def modality_of(extension: str) -> str | None:
    """The modality of a member extension (``"png"``, ``"image_0.png"`` -> ``"image"``), None for others."""
    return _MODALITY_OF.get(extension.rsplit(".", 1)[-1].lower())


def record(sample: Sample) -> dict[str, Any]:
    """The sample's json member as a dict (``{}`` without one).

    Raises:
        json.JSONDecodeError / UnicodeDecodeError: the member is not UTF-8 JSON.
        ValueError: the JSON is not an object.
    """
    if "json" not in sample:
        return {}
    value = json.loads(sample["json"])
    if not isinstance(value, dict):
        raise ValueError(f"json member is a {type(value).__name__}, not an object")
    return value


def media_of(sample: Sample) -> list[tuple[str, bytes]]:
    """``(modality, encoded bytes)`` of every media item of a sample, in member order.

    Members whose extension a media transform reads; for a chat record without such members, the
    files its media parts name.

    Raises:
        KeyError / OSError: a chat record's media part names no readable file.
    """
    found = [(m, v) for k, v in sample.items() if not k.startswith("_") and (m := modality_of(k))]
    messages = record(sample).get("messages") if not found else None
    if isinstance(messages, list):
        seen: dict[str, int] = defaultdict(int)
        for part in media_parts(messages):
            modality = part["type"]
            found.append((modality, media_bytes(sample, part, seen[modality], record(sample))))
            seen[modality] += 1
    return found


def text_of(sample: Sample) -> str | None:
    """The sample's text: its ``.txt`` member, else its chat messages, else a json ``text``/``caption``.

    Chat messages are joined by newlines with their media placeholders removed. None when the sample
    has no text.

    Raises:
        UnicodeDecodeError: the ``.txt`` member is not UTF-8.
    """
    if "txt" in sample:
        return sample["txt"].decode("utf-8").strip()
    meta = record(sample)
    if isinstance(meta.get("messages"), list):
        lines = [content_text(m["content"]) for m in meta["messages"]]
        for modality in MODALITY_EXTENSIONS:
            lines = [line.replace(media_token(modality), " ") for line in lines]
        return "\n".join(line.strip() for line in lines)
    value = meta.get("text", meta.get("caption"))
    return value.strip() if isinstance(value, str) else None


def default_transforms() -> dict[str, MediaTransform]:
    """Every modality's training transform with its default arguments."""
    return {"image": ImageTransform(), "audio": AudioTransform(), "video": VideoTransform()}
