"""Padded <-> packed bookkeeping, media segments and best-fit-decreasing packing, on hand-worked values."""

import math

import pytest
import torch

from mmfuse.core.packing import (
    concat_ranges,
    cross_attention_segments,
    cu_seqlens_from_lengths,
    cu_seqlens_from_position_ids,
    media_item_ranges,
    pack,
    pack_best_fit_decreasing,
    pad,
    position_ids_from_attention_mask,
    position_ids_from_cu_seqlens,
    segment_ids,
    unpad,
)


def test_unpad_pack_pad_round_trip_with_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    layout = unpad(mask)
    assert layout.indices.tolist() == [0, 1, 2, 6, 7, 8, 9, 10, 11]
    assert layout.cu_seqlens.tolist() == [0, 3, 5, 9]
    assert layout.cu_seqlens.dtype == torch.int32
    assert layout.max_seqlen == 4
    hidden = torch.arange(24.0).view(3, 4, 2)
    packed = pack(hidden, layout)
    assert packed[:, 0].tolist() == [0, 2, 4, 12, 14, 16, 18, 20, 22]
    assert torch.equal(pad(packed, layout, 3, 4), hidden * mask.unsqueeze(-1))


def test_position_ids():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids_from_attention_mask(mask).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 1]]
    cu = cu_seqlens_from_lengths(torch.tensor([3, 1, 2]))
    assert cu.tolist() == [0, 3, 4, 6]
    assert segment_ids(cu, 6).tolist() == [0, 0, 0, 1, 2, 2]
    assert position_ids_from_cu_seqlens(cu, 6).tolist() == [0, 1, 2, 0, 0, 1]
    cu_back, max_seqlen = cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0, 0, 1]]))
    assert cu_back.tolist() == [0, 3, 4, 6] and max_seqlen == 3
    with pytest.raises(ValueError, match="position_ids\\[0\\] must be 0"):
        cu_seqlens_from_position_ids(torch.tensor([1, 2, 0]))


def test_concat_ranges():
    starts, lengths = torch.tensor([5, 0, 9, 2]), torch.tensor([2, 0, 3, 1])
    assert concat_ranges(starts, lengths).tolist() == [5, 6, 9, 10, 11, 2]


IDS = torch.tensor([[0, 9, 1, 1, 9, 1, 9], [1, 1, 9, 1, 1, 1, 0]])  # 9 = placeholder: items 0, 1, 2 | 3


def test_media_item_ranges_latest_and_all():
    first, last = media_item_ranges(IDS == 9, only_latest=True)
    assert last.tolist() == [[-2, 0, 0, 0, 1, 1, 2], [1, 1, 3, 3, 3, 3, 3]]
    assert (last >= first).tolist() == [[False] + [True] * 6, [False, False] + [True] * 5]
    assert torch.equal(first[last >= first], last[last >= first])
    first, last = media_item_ranges(IDS == 9, only_latest=False)
    assert first.tolist() == [[0] * 7, [3] * 7]
    assert last.tolist() == [[-1, 0, 0, 0, 1, 1, 2], [2, 2, 3, 3, 3, 3, 3]]


def test_media_item_ranges_restart_at_each_document_of_a_packed_row():
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]])
    first, last = media_item_ranges(IDS == 9, docs, only_latest=False)
    sees = (last >= first).tolist()
    assert sees == [
        [False, True, True, False, True, True, True],
        [False, False, True, True, False, False, False],
    ]
    assert first[0, 4:].tolist() == [1, 1, 1] and last[0, 4:].tolist() == [1, 1, 2]


def test_cross_attention_segments():
    cu_item_tokens = torch.tensor([0, 2, 5, 6, 10])  # items of 2, 3, 1, 4 tokens
    latest = cross_attention_segments(*media_item_ranges(IDS == 9, only_latest=True), cu_item_tokens)
    assert latest.query_index.tolist() == [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13]
    assert latest.cu_seqlens_q.tolist() == [0, 3, 5, 6, 11] and latest.max_seqlen_q == 5
    assert latest.key_index.tolist() == list(range(10))
    assert latest.cu_seqlens_k.tolist() == [0, 2, 5, 6, 10] and latest.max_seqlen_k == 4
    every = cross_attention_segments(*media_item_ranges(IDS == 9, only_latest=False), cu_item_tokens)
    assert every.cu_seqlens_q.tolist() == [0, 3, 5, 6, 11]
    assert every.key_index.tolist() == [0, 1] + [0, 1, 2, 3, 4] + [0, 1, 2, 3, 4, 5] + [6, 7, 8, 9]
    assert every.cu_seqlens_k.tolist() == [0, 2, 7, 13, 17] and every.max_seqlen_k == 6
    assert every.cu_seqlens_q.dtype == every.cu_seqlens_k.dtype == torch.int32


def test_best_fit_decreasing_hand_example():
    # 8 -> row0 (2 free), 7 -> row1 (3 free), 5 -> row2 (5 free), 3 -> row1 (tightest), 2 -> row0, 1 -> row2
    assert pack_best_fit_decreasing([5, 3, 8, 2, 7, 1], 10) == [[2, 3], [4, 1], [0, 5]]


def test_best_fit_decreasing_respects_capacity_and_places_everything():
    lengths = torch.randint(1, 100, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    rows = pack_best_fit_decreasing(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert max(sum(lengths[i] for i in row) for row in rows) <= 128
    assert len(rows) == math.ceil(sum(lengths) / 128)  # this draw packs without a spare row


def test_best_fit_decreasing_rejects_too_long():
    with pytest.raises(ValueError, match="outside 1..4"):
        pack_best_fit_decreasing([3, 5], 4)
