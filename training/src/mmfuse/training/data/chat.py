"""Multimodal chat samples for instruction tuning: decoding, packing and the DataModule.

A shard sample is ``{key}.json`` -> ``{"messages": [...], "kinds": [...], "source": ...}`` (TRL
conversational messages; ``kinds`` names the question kind of each assistant turn, for evaluation)
plus one member per media part, ``{key}.{modality}_{i}.{ext}`` for the i-th part of that modality
(``scripts/build_instructions.py`` writes them). A JSONL shard holds the same record per line, its
media parts naming files instead: ``{"type": "image", "path": "images/cat.png"}`` (relative to
the JSONL file), or TRL's layout, bare ``{"type": "image"}`` parts and a top-level ``"images"`` list
of paths (see :func:`media_bytes`). :class:`ChatDecoder` tokenizes with assistant-only
labels (:func:`mmfuse.core.text.tokenize_chat`) and runs the media transforms; a sample that is
too long to keep its media is skipped and counted by the pipeline.

Micro-batches (:func:`pack_examples`, :func:`pad_examples`) hold ``input_ids`` ``[r, s]``,
``shift_labels`` ``[r, s]`` (each sequence shifted on its own, so a packed row never scores the
first token of the next sequence), and ``media``: modality -> the transform's tensors stacked over
that modality's items in row-major placeholder order (the order ``FusedCausalLM`` reads). Packed
micro-batches add ``position_ids`` and the flash-attention keywords ``cu_seq_lens_q``/``_k``,
``max_length_q``/``_k`` over the flattened ``r * s`` tokens; padded ones add ``attention_mask``.

Shape letters: r rows, s tokens per row, n sequences.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmfuse.core.data import MediaTransform
from mmfuse.core.functional import IGNORE_INDEX, shift_labels
from mmfuse.core.packing import (
    cu_seqlens_from_lengths,
    pack_best_fit_decreasing,
    position_ids_from_cu_seqlens,
)
from mmfuse.core.text import content_text, media_order, media_parts, tokenize_chat
from mmfuse.training.data.base import ShardedDataModule


@dataclass
class ChatExample:
    """One decoded conversation.

    Attributes:
        input_ids: ``[s]`` int64.
        shift_labels: ``[s]`` int64 target of each position (``IGNORE_INDEX`` where none).
        media: ``(modality, tensors)`` per media part, in placeholder order.
        messages: the TRL messages (for prompting in evaluation).
        kinds: question kind of each assistant turn.
        key: the sample key.
    """

    input_ids: Tensor
    shift_labels: Tensor
    media: list[tuple[str, dict[str, Tensor]]]
    messages: list[dict[str, Any]]
    kinds: list[str] = field(default_factory=list)
    key: str = ""


class ChatDecoder:
    """Raw webdataset sample -> ``{"chat": ChatExample}``.

    Args:
        tokenizer: a fast tokenizer with a chat template (:func:`mmfuse.core.text.load_tokenizer`).
        transforms: modality -> media transform.
        max_length: tokens kept per conversation.

    Raises (per sample; the pipeline skips and counts it):
        MediaTruncatedError: the conversation is too long to keep its media.
        KeyError: a media part without its member, or a modality without a transform.
    """

    def __init__(self, tokenizer: Any, transforms: Mapping[str, MediaTransform], max_length: int) -> None:
        self.tokenizer, self.transforms, self.max_length = tokenizer, dict(transforms), max_length

    def __call__(self, sample: dict[str, Any], *, train: bool) -> dict[str, ChatExample]:
        record = json.loads(sample["json"])
        chat = tokenize_chat(self.tokenizer, record["messages"], max_length=self.max_length)
        media, seen = [], defaultdict(int)
        for part in media_parts(record["messages"]):
            modality = part["type"]
            data = media_bytes(sample, part, seen[modality], record)
            seen[modality] += 1
            media.append((modality, self.transforms[modality](data, train=train)))
        example = ChatExample(
            chat.input_ids, shift_labels(chat.labels), media, record["messages"],
            record.get("kinds", []), sample["__key__"],
        )  # fmt: skip
        return {"chat": example}


@dataclass
class AnswerPrompt:
    """One assistant turn of a conversation as a generation prompt.

    Attributes:
        input_ids: ``[s]`` int64, the conversation before the turn with the generation prompt.
        media: the media parts of those messages, ``(modality, tensors)`` in placeholder order.
        kind: the turn's question kind (``"chat"`` when the conversation names none).
        reference: the turn's text, stripped.
        question: the text of the user turn before it, stripped.
        key: the conversation's key and the turn, ``"<key>#<turn>"``.
    """

    input_ids: Tensor
    media: list[tuple[str, dict[str, Tensor]]]
    kind: str
    reference: str
    question: str
    key: str = ""


def answer_prompts(example: ChatExample, tokenizer: Any) -> list[AnswerPrompt]:
    """One :class:`AnswerPrompt` per assistant turn of ``example``, for evaluation and RL rollouts."""
    prompts = []
    turns = [i for i, m in enumerate(example.messages) if m["role"] == "assistant"]
    for turn, kind in zip(turns, example.kinds or ["chat"] * len(turns), strict=True):
        before = example.messages[:turn]
        ids = tokenize_chat(tokenizer, before, add_generation_prompt=True).input_ids
        reference = content_text(example.messages[turn]["content"]).strip()
        media = example.media[: len(media_order(before))]
        question = content_text(before[-1]["content"]).strip()
        prompts.append(AnswerPrompt(ids, media, kind, reference, question, f"{example.key}#{turn}"))
    return prompts


def media_bytes(
    sample: Mapping[str, Any], part: Mapping[str, Any], index: int, record: Mapping[str, Any] | None = None
) -> bytes:
    """The encoded bytes of the ``index``-th media part of its modality in a sample.

    Looked up in this order: the tar member ``{modality}_{index}.{ext}``; a path in the part
    (``"path"``, or ``"image"``/``"audio"``/``"video"``); the ``index``-th entry of the record's
    top-level ``"images"``/``"audios"``/``"videos"`` list (TRL's vision datasets: bare
    ``{"type": "image"}`` parts and ``"images": [...]``). A path is absolute or relative to the
    directory of a local JSONL file (use absolute paths with ``pipe:`` shards).

    Raises:
        KeyError: no member, no path in the part and no list entry for it.
        OSError: the named file cannot be read.
    """
    modality = part["type"]
    prefix = f"{modality}_{index}."
    member = next((k for k in sample if k.startswith(prefix)), None)
    if member is not None:
        return sample[member]
    path = part.get("path", part.get(modality))
    listed = (record or {}).get(f"{modality}s")
    if path is None and isinstance(listed, list) and index < len(listed):
        path = listed[index]
    if not isinstance(path, str):
        raise KeyError(
            f"{modality} part {index} has no member {prefix}*, no path in the part and no entry"
            f" {index} in a top-level {modality + 's'!r} list: {dict(part)}"
        )
    return (Path(sample.get("__url__", "")).parent / path).read_bytes()


def collate_media(media: Sequence[list[tuple[str, dict[str, Tensor]]]]) -> dict[str, dict[str, Tensor]]:
    """Stack each modality's items, conversation after conversation (``[n_m, ...]`` per tensor name)."""
    items: dict[str, list[dict[str, Tensor]]] = defaultdict(list)
    for parts in media:
        for modality, tensors in parts:
            items[modality].append(tensors)
    return {m: {k: torch.stack([t[k] for t in ts]) for k in ts[0]} for m, ts in items.items()}


def pad_examples(examples: Sequence[ChatExample], pad_token_id: int) -> dict[str, Any]:
    """One right-padded row per conversation: ``[n, max_len]`` with ``attention_mask``."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.int64)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = (
            example.input_ids,
            example.shift_labels,
            1,
        )
    return {"input_ids": input_ids, "shift_labels": labels, "attention_mask": attention_mask,
            "media": collate_media([e.media for e in examples])}  # fmt: skip


def pack_examples(examples: Sequence[ChatExample], max_length: int, pad_token_id: int) -> dict[str, Any]:
    """Best-fit-decreasing packing into rows of ``max_length`` tokens (``[r, max_length]``).

    Each row holds whole conversations back to back; its unused tail is one more segment of pad
    tokens (positions from 0, no targets) that attends only to itself. ``position_ids`` restart at 0
    at every segment, and ``cu_seq_lens_q``/``_k`` (int32 ``[n + 1]``) delimit the segments over the
    flattened ``r * max_length`` tokens, so attention never crosses a conversation boundary.
    """
    rows = pack_best_fit_decreasing([len(e.input_ids) for e in examples], max_length)
    ordered = [examples[i] for row in rows for i in row]  # row-major: the order placeholders are read
    ids, labels, lengths = [], [], []
    for row in rows:
        row_lengths = [len(examples[i].input_ids) for i in row]
        tail = max_length - sum(row_lengths)
        ids += [examples[i].input_ids for i in row] + [torch.full((tail,), pad_token_id, dtype=torch.int64)]
        labels += [examples[i].shift_labels for i in row] + [
            torch.full((tail,), IGNORE_INDEX, dtype=torch.int64)
        ]
        lengths += row_lengths + ([tail] if tail else [])
    cu_seqlens = cu_seqlens_from_lengths(torch.tensor(lengths))
    total, shape = len(rows) * max_length, (len(rows), max_length)
    max_len = max(lengths)
    return {
        "input_ids": torch.cat(ids).view(shape),
        "shift_labels": torch.cat(labels).view(shape),
        "position_ids": position_ids_from_cu_seqlens(cu_seqlens, total).view(shape),
        "cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens,
        "max_length_q": max_len, "max_length_k": max_len,
        "media": collate_media([e.media for e in ordered]),
    }  # fmt: skip


class ChatDataModule(ShardedDataModule):
    """Chat shards -> batches of ``{"micro_batches": [...], "examples": [...], "num_skipped": int}``.

    One training batch is one optimizer step: ``batch_size * accumulate`` conversations, split into
    ``accumulate`` micro-batches of ``batch_size`` conversations, each packed (or padded) as in the
    module docstring. An epoch is ``num_samples // (world_size * batch_size * accumulate)`` steps.
    Validation batches hold ``val_batch_size`` conversations in one micro-batch, and the examples
    themselves (for generation). Shards, workers and resampling:
    :class:`~mmfuse.training.data.base.ShardedDataModule`.

    The tokenizer is the model's (``trainer.lightning_module.tokenizer``, taken at ``setup``), so the
    data and the model cannot disagree on it; pass one only to use the module without a trainer.

    Args:
        train_shards: brace-notation shard URLs, ``::``-joined: webdataset tars or JSONL files.
        val_shards: the same for validation; None disables validation.
        transforms: modality -> media transform, one per modality of the data (its media parts'
            ``type``), e.g. ``{"image": ImageTransform(...), "audio": AudioTransform(...)}``.
        max_length: tokens per conversation and per packed row.
        accumulate: micro-batches per optimizer step.
        packing: best-fit-decreasing packed rows; False pads one row per conversation.
        tokenizer: a loaded tokenizer; None takes the model's at ``setup``.
        kwargs: :class:`~mmfuse.training.data.base.ShardedDataModule`'s ``batch_size`` (conversations
            per micro-batch), ``val_batch_size`` (per validation batch), ``num_workers``,
            ``shuffle_buffer``, ``num_samples``, ``resampled``, ``seed``.
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        transforms: dict[str, MediaTransform] | None = None,
        max_length: int = 256,
        accumulate: int = 1,
        packing: bool = True,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(train_shards, val_shards, **kwargs)
        self.transforms = dict(transforms or {})
        self.tokenizer = tokenizer
        self.max_length, self.packing, self.accumulate = max_length, packing, accumulate

    @property
    def step_size(self) -> int:
        return self.batch_size * self.accumulate

    def setup(self, stage: str) -> None:
        """Take the model's tokenizer when none was given.

        Raises:
            ValueError: no tokenizer given and the model has none.
        """
        if self.tokenizer is None:
            self.tokenizer = getattr(self.trainer.lightning_module, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError("ChatDataModule needs a tokenizer: the model has none and none was given")

    def decoder(self) -> ChatDecoder:
        return ChatDecoder(self.tokenizer, self.transforms, self.max_length)

    def micro_batch(self, examples: Sequence[ChatExample]) -> dict[str, Any]:
        """Pack (or pad) conversations into one micro-batch."""
        pad_id = self.tokenizer.pad_token_id
        return (
            pack_examples(examples, self.max_length, pad_id)
            if self.packing
            else pad_examples(examples, pad_id)
        )

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        examples: list[ChatExample] = batch["chat"]
        size = self.batch_size if self.trainer is None or self.trainer.training else len(examples)
        micro_batches = [self.micro_batch(examples[i : i + size]) for i in range(0, len(examples), size)]
        return {"micro_batches": micro_batches, "examples": examples, "num_skipped": batch["num_skipped"],
                "mix": batch.get("mix")}  # fmt: skip


__all__ = [
    "AnswerPrompt",
    "ChatDataModule",
    "ChatDecoder",
    "ChatExample",
    "answer_prompts",
    "collate_media",
    "media_bytes",
    "pack_examples",
    "pad_examples",
]
