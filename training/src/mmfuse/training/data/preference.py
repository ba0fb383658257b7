"""Preference pairs: the record format, prompt + completion tokenisation, collation, the DataModule.

Everything the pairwise stages (reward modelling, DPO) and the flywheel share about a pair lives
here once: how a record is read, how prompt and completion are tokenised, how pairs are laid out
in a micro-batch, and how a stage reads that layout back (media encoded once, the last real token).

**Format** (TRL's explicit-prompt conversational preference format, with media parts): a shard
sample is ``{key}.json`` ->
``{"prompt": [messages], "chosen": [messages], "rejected": [messages], "kind": ..., ...}`` plus one
member per media part of the prompt, ``{key}.{modality}_{i}.{ext}``; in a JSONL shard the parts name
files instead, or a top-level ``"images"``/``"audios"``/``"videos"`` list does (TRL's layout, see
:func:`~mmfuse.training.data.chat.media_bytes`). ``chosen`` and ``rejected`` are assistant turns
without media: the media belong to the prompt, which both answers share. Extra fields (``kind``,
``source``, ``negative``, ``scores``) are metadata; ``kind`` names the question kind for per-kind
figures (``"chat"`` when absent).

**Layout** (:func:`collate_completions`): a prompt's ``g`` completions (``g = 2`` for a pair:
chosen, rejected) are rows ``j * b + i`` (completion ``j`` of prompt ``i``), padded on the right
(or left), with the prompts' media once: ``media`` holds each prompt's items once, and
:func:`encode_once` runs the towers on them once and repeats the encodings for the ``g`` rows of
each prompt, so one concatenated forward scores chosen and rejected with one media encoding.

Shape letters: b prompts (pairs), g completions per prompt, r = g * b rows, s tokens.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import webdataset as wds
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from mmfuse.core.data import MediaTransform, expand_urls
from mmfuse.core.encoders import EncoderOutput
from mmfuse.core.functional import IGNORE_INDEX
from mmfuse.core.model import MultimodalLM, expand_items
from mmfuse.core.packing import position_ids_from_attention_mask
from mmfuse.core.text import media_parts, tokenize_chat
from mmfuse.training.data.chat import ChatDataModule, collate_media, media_bytes

#: the fields every preference record has.
PAIR_FIELDS = ("prompt", "chosen", "rejected")


def fingerprint(named_tensors: Iterable[tuple[str, Tensor]]) -> str:
    """SHA-256 (hex) of named tensors: each name, dtype, shape and bytes, in the order given."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_record(record: Any) -> None:
    """Refuse a record that is not an explicit-prompt preference pair.

    Raises:
        KeyError: ``prompt``, ``chosen`` or ``rejected`` missing.
        ValueError: one of them is not a non-empty list of messages, a completion message is not the
            assistant's, or a completion has a media part.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"a preference record is a JSON object, got {type(record).__name__}")
    for name in PAIR_FIELDS:
        if name not in record:
            raise KeyError(f"preference record has no {name!r} (fields: {sorted(record)})")
        messages = record[name]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, Mapping) for m in messages)
        ):
            raise ValueError(f"{name!r} must be a non-empty list of messages, got {messages!r:.80}")
    for name in PAIR_FIELDS[1:]:
        if any(m.get("role") != "assistant" for m in record[name]):
            raise ValueError(f"{name!r} must hold assistant messages only")
        if media_parts(record[name]):
            raise ValueError(
                f"{name!r} has a media part; media belong to the prompt, which both answers share"
            )


def tokenize_completion(
    tokenizer: Any,
    prompt: Sequence[Mapping[str, Any]],
    completion: Sequence[Mapping[str, Any]],
    max_length: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Token ids of ``prompt + completion`` and the mask of the completion's tokens.

    The prompt is the conversation up to the generation prompt (what ``generate`` continues); the
    completion tokens are the assistant tokens after it (:func:`~mmfuse.core.text.tokenize_chat`'s
    labels: the answer and the template's end-of-turn token), so earlier assistant turns of a
    multi-turn prompt are not scored. TRL tokenises prompt and prompt + completion the same way.

    Returns:
        ``input_ids`` ``[s]`` int64 and ``completion_mask`` ``[s]`` bool.

    Raises:
        ValueError: the prompt's tokens are not a prefix of the whole (the template or the tokenizer
            merges across the boundary), or no completion token fits in ``max_length``.
        MediaTruncatedError: ``max_length`` would cut a media placeholder.
    """
    prompt_ids = tokenize_chat(tokenizer, prompt, add_generation_prompt=True).input_ids
    full = tokenize_chat(tokenizer, [*prompt, *completion], max_length=max_length)
    n = len(prompt_ids)
    if not torch.equal(full.input_ids[:n], prompt_ids[: len(full.input_ids)]):
        raise ValueError("the prompt's tokens are not a prefix of prompt + completion's tokens")
    completion_mask = (torch.arange(len(full.input_ids)) >= n) & (full.labels != IGNORE_INDEX)
    if not completion_mask.any():
        raise ValueError(f"no completion token within max_length={max_length} (the prompt has {n} tokens)")
    return full.input_ids, completion_mask


@dataclass
class PreferenceExample:
    """One decoded preference pair.

    Attributes:
        chosen_ids: ``[s_c]`` int64, prompt + chosen answer.
        chosen_mask: ``[s_c]`` bool, the chosen answer's tokens.
        rejected_ids: ``[s_r]`` int64, prompt + rejected answer.
        rejected_mask: ``[s_r]`` bool.
        media: the prompt's ``(modality, tensors)`` parts in placeholder order.
        prompt: the prompt messages.
        kind: the question kind (``"chat"`` when the record names none).
        key: the sample key.
        fingerprint: SHA-256 of the ids and media tensors (what a reference-log-prob cache checks).
    """

    chosen_ids: Tensor
    chosen_mask: Tensor
    rejected_ids: Tensor
    rejected_mask: Tensor
    media: list[tuple[str, dict[str, Tensor]]]
    prompt: list[dict[str, Any]] = field(default_factory=list)
    kind: str = "chat"
    key: str = ""
    fingerprint: str = ""


class PreferenceDecoder:
    """Raw shard sample -> ``{"chat": PreferenceExample}`` (the field ``ChatDataModule`` batches).

    Media transforms run in eval mode also in training: both answers are compared on the same,
    fixed input, and precomputed reference log-probs stay valid.

    Args:
        tokenizer: a fast tokenizer with a chat template.
        transforms: modality -> media transform.
        max_length: tokens kept per prompt + answer.

    Raises (per sample; the pipeline skips and counts it): see :func:`check_record`,
    :func:`tokenize_completion` and :func:`~mmfuse.training.data.chat.media_bytes`; ``KeyError`` for a
    modality without a transform; ``json.JSONDecodeError`` for a line that is not JSON.
    """

    def __init__(self, tokenizer: Any, transforms: Mapping[str, MediaTransform], max_length: int) -> None:
        self.tokenizer, self.transforms, self.max_length = tokenizer, dict(transforms), max_length

    def __call__(self, sample: dict[str, Any], *, train: bool) -> dict[str, PreferenceExample]:
        record = json.loads(sample["json"])
        check_record(record)
        prompt = record["prompt"]
        chosen = tokenize_completion(self.tokenizer, prompt, record["chosen"], self.max_length)
        rejected = tokenize_completion(self.tokenizer, prompt, record["rejected"], self.max_length)
        media, seen = [], {}
        for part in media_parts(prompt):
            modality = part["type"]
            if modality not in self.transforms:
                raise KeyError(f"a {modality!r} part but transforms only for {sorted(self.transforms)}")
            data = media_bytes(sample, part, seen.get(modality, 0), record)
            seen[modality] = seen.get(modality, 0) + 1
            media.append((modality, self.transforms[modality](data, train=False)))
        named = [("chosen", chosen[0]), ("rejected", rejected[0])]
        named += [(f"{m}_{i}.{k}", v) for i, (m, ts) in enumerate(media) for k, v in sorted(ts.items())]
        example = PreferenceExample(
            *chosen,
            *rejected,
            media,
            prompt,
            record.get("kind", "chat"),
            sample["__key__"],
            fingerprint(named),
        )
        return {"chat": example}


def collate_completions(
    rows: Sequence[tuple[Tensor, Tensor]],
    media: Sequence[list[tuple[str, dict[str, Tensor]]]],
    pad_token_id: int,
    padding_side: Literal["right", "left"] = "right",
) -> dict[str, Any]:
    """``g`` completions of each of ``b`` prompts as one micro-batch (module docstring: the layout).

    Args:
        rows: ``g * b`` ``(input_ids [s_i], completion_mask [s_i])``, completion-major: row ``j * b + i``
            is completion ``j`` of prompt ``i``.
        media: the ``b`` prompts' media parts, once per prompt.
        pad_token_id: the padding id (only ever read through ``attention_mask``).
        padding_side: ``"right"`` for training; ``"left"`` as generation pads.

    Returns:
        ``input_ids`` ``[r, s]`` int64, ``attention_mask`` ``[r, s]`` int64, ``completion_mask``
        ``[r, s]`` bool and ``media`` (modality -> tensors stacked over the b prompts' items).

    Raises:
        ValueError: ``len(rows)`` is not a multiple of ``len(media)``.
    """
    if not media or len(rows) % len(media):
        raise ValueError(f"{len(rows)} rows for {len(media)} prompts: need g completions per prompt")
    ids, masks = zip(*rows, strict=True)
    pad = dict(batch_first=True, padding_side=padding_side)
    return {
        "input_ids": pad_sequence(ids, padding_value=pad_token_id, **pad),
        "attention_mask": pad_sequence([torch.ones_like(i) for i in ids], padding_value=0, **pad),
        "completion_mask": pad_sequence(masks, padding_value=False, **pad),
        "media": collate_media(media),
    }


def collate_pairs(
    examples: Sequence[PreferenceExample], pad_token_id: int, padding_side: Literal["right", "left"] = "right"
) -> dict[str, Any]:
    """Pairs as one micro-batch: rows ``0..b-1`` chosen, ``b..2b-1`` rejected (:func:`collate_completions`).

    Adds ``keys``, ``kinds`` and ``fingerprints`` (lists of b strings).
    """
    rows = [(e.chosen_ids, e.chosen_mask) for e in examples] + [
        (e.rejected_ids, e.rejected_mask) for e in examples
    ]
    batch = collate_completions(rows, [e.media for e in examples], pad_token_id, padding_side)
    batch.update(keys=[e.key for e in examples], kinds=[e.kind for e in examples],
                 fingerprints=[e.fingerprint for e in examples])  # fmt: skip
    return batch


def last_token_index(attention_mask: Tensor) -> Tensor:
    """``[r]`` int64: the position of each row's last real token, under left or right padding.

    Read from ``attention_mask`` ``[r, s]`` (1 = real token), never from ``input_ids == pad_token_id``,
    which breaks when the pad id is the EOS id that also ends turns inside the prompt.

    Raises:
        ValueError: a row without any real token.
    """
    if not attention_mask.bool().any(-1).all():
        raise ValueError("a row of attention_mask has no real token")
    s = attention_mask.shape[-1]
    return s - 1 - attention_mask.long().flip(-1).argmax(-1)


def encode_once(
    model: MultimodalLM, media: Mapping[str, Mapping[str, Tensor]], group_size: int
) -> dict[str, EncoderOutput]:
    """Each prompt's media encoded once, repeated for its ``group_size`` completion rows.

    Row-major placeholder order over rows ``j * b + i`` is the b prompts' n items, ``group_size``
    times over, so the repetition is ``arange(n).repeat(group_size)``.
    """
    encoded = model.encode_media(media)
    return {
        m: expand_items(
            out, torch.arange(len(out.hidden_states), device=out.hidden_states.device).repeat(group_size)
        )
        for m, out in encoded.items()
    }


def lm_inputs(micro_batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``attention_mask`` and the ``position_ids`` counted over real tokens (left or right padding)."""
    mask = micro_batch["attention_mask"]
    return {"attention_mask": mask, "position_ids": position_ids_from_attention_mask(mask)}


def completion_logps(model: MultimodalLM, micro_batch: Mapping[str, Any], group_size: int = 2) -> Tensor:
    """``[r]`` float32 summed completion log-probs of every row: one forward, media encoded once."""
    encoded = encode_once(model, micro_batch["media"], group_size)
    return model.sequence_logps(
        micro_batch["input_ids"], micro_batch["completion_mask"], encoded=encoded, **lm_inputs(micro_batch)
    )


def write_preference_shard(path: str | Path, samples: Iterable[Mapping[str, Any]]) -> int:
    """Write ``{"__key__", "json": record, "<modality>_<i>.<ext>": bytes}`` samples as a gzip tar.

    Reproducible bytes (mtime 0, no user names, keys in the order given); records are checked with
    :func:`check_record` first. Returns the number of samples written.

    Raises:
        KeyError, ValueError: a record that is not a preference pair (:func:`check_record`).
    """
    count = 0
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        wds.TarWriter(gz, user="", group="", mtime=0, encoder=False) as writer,
    ):
        for sample in samples:
            check_record(sample["json"])
            writer.write(
                {**sample, "json": json.dumps(sample["json"], sort_keys=True, ensure_ascii=False).encode()}
            )
            count += 1
    return count


class PreferenceDataModule(ChatDataModule):
    """Preference shards -> ``{"micro_batches": [...], "examples": [...], "num_skipped": int}``.

    One training batch is one optimizer step of ``batch_size * accumulate`` pairs in ``accumulate``
    micro-batches (:func:`collate_pairs`); validation batches hold ``val_batch_size`` pairs in one.
    A record that fails to decode is skipped and counted (``data/skipped``). The tokenizer is the
    model's, taken at ``setup``.

    Args:
        train_shards: brace-notation shard URLs, ``::``-joined: webdataset tars or JSONL files.
        val_shards: the same for held-out pairs; None disables validation.
        transforms: modality -> media transform, one per modality of the prompts' media parts.
        max_length: tokens per prompt + answer.
        batch_size: pairs per micro-batch.
        accumulate: micro-batches per optimizer step.
        val_batch_size: pairs per validation batch.
        tokenizer, num_workers, shuffle_buffer, num_samples, resampled, seed: see
            :class:`~mmfuse.training.data.chat.ChatDataModule`.
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        transforms: dict[str, MediaTransform] | None = None,
        max_length: int = 256,
        batch_size: int = 16,
        accumulate: int = 1,
        val_batch_size: int = 64,
        tokenizer: Any = None,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        num_samples: int | None = None,
        resampled: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            train_shards, val_shards, transforms=transforms, max_length=max_length, batch_size=batch_size,
            accumulate=accumulate, packing=False, val_batch_size=val_batch_size, tokenizer=tokenizer,
            num_workers=num_workers, shuffle_buffer=shuffle_buffer, num_samples=num_samples,
            resampled=resampled, seed=seed,
        )  # fmt: skip

    def decoder(self) -> PreferenceDecoder:
        return PreferenceDecoder(self.tokenizer, self.transforms, self.max_length)

    def micro_batch(self, examples: Sequence[PreferenceExample]) -> dict[str, Any]:
        return collate_pairs(examples, self.tokenizer.pad_token_id)

    def fingerprint(self) -> str:
        """SHA-256 of what the pairs are made of: the shards' bytes (a ``pipe:`` URL: its text), the
        tokenizer and ``max_length``. (Transforms are checked per sample, by each example's
        ``fingerprint``.)"""
        digest = hashlib.sha256(f"max_length={self.max_length}|".encode())
        digest.update(self.tokenizer.backend_tokenizer.to_str().encode())
        digest.update(str(self.tokenizer.chat_template).encode())
        for split, shards in (("train", self.train_shards), ("val", self.val_shards)):
            for url in expand_urls(shards) if shards else []:
                digest.update(f"|{split}|".encode())
                if Path(url).is_file():
                    with open(url, "rb") as f:
                        digest.update(hashlib.file_digest(f, "sha256").digest())
                else:
                    digest.update(url.encode())
        return digest.hexdigest()

    def reference_dataloaders(self) -> dict[str, Any]:
        """Split -> a loader over every pair of that split once (eval order, split over ranks)."""
        shards = {"train": self.train_shards, "val": self.val_shards}
        return {split: self.pass_dataloader(urls) for split, urls in shards.items() if urls}


__all__ = [
    "PAIR_FIELDS",
    "PreferenceDataModule",
    "PreferenceDecoder",
    "PreferenceExample",
    "check_record",
    "collate_completions",
    "collate_pairs",
    "completion_logps",
    "encode_once",
    "fingerprint",
    "last_token_index",
    "lm_inputs",
    "tokenize_completion",
    "write_preference_shard",
]
