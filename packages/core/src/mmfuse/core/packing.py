"""Index arithmetic between the padded ``[b, s]`` layout and the packed (varlen) ``[total]`` layout.

The packed layout is the one flash-attn's ``*_varlen_func`` and :func:`mmfuse.core.attention.attention`
read: the real tokens of ``n`` sequences laid end to end, delimited by ``cu_seqlens`` (int32,
``[n + 1]``, ``cu_seqlens[0] == 0``, ``cu_seqlens[-1] == total``) with ``max_seqlen`` the longest
sequence. Helpers here convert between the layouts (flash-attn's ``unpad_input`` / ``pad_input``
conventions), derive ``position_ids`` (Hugging Face conventions), plan the cross-attention segments
of the fusion module, and pack sequences into fixed-capacity rows (best-fit decreasing).

Shape letters: b batch, s sequence, n sequences (segments), total packed tokens.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def cu_seqlens_from_lengths(lengths: Tensor) -> Tensor:
    """Cumulative sequence boundaries: ``[n]`` integer lengths -> ``[n + 1]`` int32, starting at 0."""
    return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def segment_ids(cu_seqlens: Tensor, total: int) -> Tensor:
    """Index of the sequence each packed token belongs to: ``[n + 1]`` -> ``[total]`` int64.

    Args:
        cu_seqlens: ``[n + 1]`` int32 boundaries.
        total: ``cu_seqlens[-1]``, passed to avoid a device-to-host sync.
    """
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(
        torch.arange(len(lengths), device=cu_seqlens.device), lengths, output_size=total
    )


def position_ids_from_cu_seqlens(cu_seqlens: Tensor, total: int) -> Tensor:
    """Position of each packed token inside its own sequence: ``[n + 1]`` -> ``[total]`` int64 (0, 1, ..)."""
    starts = cu_seqlens[:-1].long()
    return torch.arange(total, device=cu_seqlens.device) - starts[segment_ids(cu_seqlens, total)]


def cu_seqlens_from_position_ids(position_ids: Tensor) -> tuple[Tensor, int]:
    """Sequence boundaries of one packed row, read where ``position_ids`` restarts at 0.

    This is the convention of Hugging Face's packed training (``DataCollatorWithFlattening``).

    Args:
        position_ids: ``[total]`` or ``[1, total]`` int64; ``position_ids[0]`` must be 0.

    Returns:
        ``cu_seqlens`` ``[n + 1]`` int32 and ``max_seqlen``.

    Raises:
        ValueError: if the row does not start a sequence at its first token.
    """
    position_ids = position_ids.reshape(-1)
    if position_ids.numel() == 0 or int(position_ids[0]) != 0:
        raise ValueError("a packed row must start a sequence: position_ids[0] must be 0")
    starts = torch.nonzero(position_ids == 0).flatten()
    ends = torch.cat([starts[1:], starts.new_tensor([position_ids.numel()])])
    lengths = ends - starts
    return cu_seqlens_from_lengths(lengths), int(lengths.max())


def position_ids_from_attention_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, for left- or right-padded rows.

    Matches transformers' generation utilities: ``cumsum(mask) - 1`` with padding set to 1.

    Args:
        attention_mask: ``[b, s]`` (1 / True = real token).

    Returns:
        ``[b, s]`` int64.
    """
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


@dataclass
class Unpadded:
    """Where the real tokens of a padded batch went in the packed layout.

    Attributes:
        indices: ``[total]`` int64, flat indices into ``[b * s]`` of the real tokens, row-major.
        cu_seqlens: ``[b + 1]`` int32.
        max_seqlen: longest row, in tokens.
    """

    indices: Tensor
    cu_seqlens: Tensor
    max_seqlen: int


def unpad(attention_mask: Tensor) -> Unpadded:
    """Packed-layout bookkeeping of a padded batch (flash-attn's ``unpad_input``).

    Rows may be left- or right-padded; each row's real tokens keep their order.

    Args:
        attention_mask: ``[b, s]`` (1 / True = real token).
    """
    lengths = attention_mask.sum(-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten()).flatten()
    return Unpadded(indices, cu_seqlens_from_lengths(lengths), int(lengths.max()) if lengths.numel() else 0)


def pack(padded: Tensor, layout: Unpadded) -> Tensor:
    """``[b, s, *f]`` -> ``[total, *f]``: the real tokens, row after row."""
    return padded.flatten(0, 1)[layout.indices]


def pad(packed: Tensor, layout: Unpadded, batch_size: int, seq_len: int) -> Tensor:
    """``[total, *f]`` -> ``[b, s, *f]`` with zeros at padding (the inverse of :func:`pack`)."""
    out = packed.new_zeros(batch_size * seq_len, *packed.shape[1:])
    return out.index_copy_(0, layout.indices, packed).unflatten(0, (batch_size, seq_len))


def concat_ranges(starts: Tensor, lengths: Tensor) -> Tensor:
    """``cat([arange(a, a + l) for a, l in zip(starts, lengths)])`` without a Python loop.

    Args:
        starts: ``[n]`` int64.
        lengths: ``[n]`` int64, non-negative.

    Returns:
        ``[lengths.sum()]`` int64.
    """
    offsets = lengths.cumsum(0) - lengths  # start of each range in the output
    total = int(lengths.sum())
    repeat = torch.repeat_interleave
    return repeat(starts - offsets, lengths, output_size=total) + torch.arange(total, device=starts.device)


@dataclass
class CrossAttentionSegments:
    """Packed cross-attention from text tokens to media tokens, one segment per run of text.

    A run is a maximal stretch of text tokens that see the same media items; only tokens that see at
    least one item are listed, so the score matrices are ``[len_q_i, len_k_i]`` per run instead of one
    ``[s_text, s_media_total]`` matrix.

    Attributes:
        query_index: ``[total_q]`` int64, flat indices into the ``[b * s]`` text tokens, in run order.
        cu_seqlens_q: ``[n + 1]`` int32 run boundaries over ``query_index``.
        max_seqlen_q: longest run.
        key_index: ``[total_k]`` int64 indices into the media token buffer (items in order, real tokens
            only); a token appears once per run that sees it.
        cu_seqlens_k: ``[n + 1]`` int32.
        max_seqlen_k: most media tokens seen by one run.
    """

    query_index: Tensor
    cu_seqlens_q: Tensor
    max_seqlen_q: int
    key_index: Tensor
    cu_seqlens_k: Tensor
    max_seqlen_k: int


def media_item_ranges(
    is_media: Tensor, document_ids: Tensor | None = None, *, only_latest: bool
) -> tuple[Tensor, Tensor]:
    """The media items each text token sees (OpenFlamingo's ``text_time = cumsum(media_locations)``).

    Items are numbered by the row-major order of their placeholder tokens. A token sees the items whose
    placeholder is at or before it in the same document: the latest one (``only_latest``) or all of
    them. A document is a row, or a stretch of equal ``document_ids`` in a row (one sequence of a
    packed row).

    Args:
        is_media: ``[b, s]`` bool, True at media placeholder tokens.
        document_ids: ``[b, s]`` int64 document of each token; None for one document per row.
        only_latest: see only the latest item instead of all previous ones.

    Returns:
        ``first``, ``last``: ``[b, s]`` int64 item numbers; the token sees items ``first..last``
        (inclusive), and none where ``last < first``.
    """
    doc_start = torch.zeros_like(is_media)
    doc_start[:, 0] = True
    if document_ids is not None:
        doc_start[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    media = is_media.flatten().long()
    seen = media.cumsum(0)  # [b * s] items with a placeholder at or before each token
    last = seen - 1
    # Items opened before each document started, carried forward to the document's tokens.
    first_of_doc = torch.cummax(torch.where(doc_start.flatten(), seen - media, 0), dim=0).values
    sees_any = last >= first_of_doc
    first = last if only_latest else first_of_doc
    last = torch.where(sees_any, last, first - 1)
    return first.view_as(is_media), last.view_as(is_media)


def cross_attention_segments(first: Tensor, last: Tensor, cu_item_tokens: Tensor) -> CrossAttentionSegments:
    """Plan the packed cross-attention of text tokens to the media items they see.

    Args:
        first: ``[b, s]`` int64 first item each text token sees (from :func:`media_item_ranges`).
        last: ``[b, s]`` int64 last item; ``last < first`` where the token sees nothing.
        cu_item_tokens: ``[n_items + 1]`` int64 boundaries of each item's tokens in the media buffer.

    Returns:
        The segments; runs are the maximal stretches of consecutive (row-major) text tokens with equal
        ``(first, last)``.
    """
    first, last = first.flatten(), last.flatten()
    query_index = torch.nonzero(last >= first).flatten()
    first, last = first[query_index], last[query_index]
    new_run = torch.ones_like(query_index, dtype=torch.bool)
    # Items belong to one document and a document's tokens see ever later items, so equal (first, last)
    # pairs are contiguous: a run starts wherever the pair changes.
    new_run[1:] = (first[1:] != first[:-1]) | (last[1:] != last[:-1])
    run_starts = torch.nonzero(new_run).flatten()
    run_lengths = torch.diff(run_starts, append=run_starts.new_tensor([len(query_index)]))
    key_starts = cu_item_tokens[first[run_starts]]
    key_lengths = cu_item_tokens[last[run_starts] + 1] - key_starts
    return CrossAttentionSegments(
        query_index=query_index,
        cu_seqlens_q=cu_seqlens_from_lengths(run_lengths),
        max_seqlen_q=int(run_lengths.max()) if len(run_lengths) else 0,
        key_index=concat_ranges(key_starts, key_lengths),
        cu_seqlens_k=cu_seqlens_from_lengths(key_lengths),
        max_seqlen_k=int(key_lengths.max()) if len(key_lengths) else 0,
    )


def pack_best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sequences into rows of at most ``capacity`` tokens, best fit decreasing.

    Sequences are placed longest first, each into the open row whose free space it fills most tightly
    (a new row when none fits); TRL's ``pack_dataset(strategy="bfd")`` does the same.

    Args:
        lengths: token count of each sequence.
        capacity: tokens per row.

    Returns:
        Rows as lists of sequence indices, each row's total length ``<= capacity``.

    Raises:
        ValueError: if a sequence is longer than ``capacity`` (truncate it first) or empty.
    """
    bad = [i for i, n in enumerate(lengths) if not 0 < n <= capacity]
    if bad:
        raise ValueError(
            f"sequences {bad[:5]} have lengths outside 1..{capacity}: truncate or drop them first"
        )
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, row index)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = bisect.bisect_left(free, (lengths[i], -1))
        if slot == len(free):
            rows.append([])
            space, row = capacity, len(rows) - 1
        else:
            space, row = free.pop(slot)
        rows[row].append(i)
        if space - lengths[i] > 0:
            bisect.insort(free, (space - lengths[i], row))
    return rows


__all__ = [
    "CrossAttentionSegments",
    "Unpadded",
    "concat_ranges",
    "cross_attention_segments",
    "cu_seqlens_from_lengths",
    "cu_seqlens_from_position_ids",
    "media_item_ranges",
    "pack",
    "pack_best_fit_decreasing",
    "pad",
    "position_ids_from_attention_mask",
    "position_ids_from_cu_seqlens",
    "segment_ids",
    "unpad",
]
