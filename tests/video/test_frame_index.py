from fractions import Fraction

import pytest
import torch

from mmfuse.video.conformance import encode_clip, index_frames, set_avi_frame_count
from mmfuse.video.frame_index import VideoDecodeError, index_packets, probe

MP4 = "mov,mp4,m4a,3gp,3g2,mj2"


def test_frames_are_in_presentation_order_with_their_keyframes():
    # I P B B in decode order (pts 0 3 1 2): presentation order I B B P.
    packets = [(0, -1, True), (3, 0, False), (1, 1, False), (2, 2, False), (4, 3, True), (5, 4, False)]
    index = index_packets(packets, Fraction(1, 25), MP4)
    assert index.pts == (0, 1, 2, 3, 4, 5) and index.keyframes == (0, 4) and index.seekable
    torch.testing.assert_close(index.timestamps, torch.arange(6, dtype=torch.float64) / 25)
    assert [index.keyframe_before(i) for i in range(6)] == [0, 0, 0, 0, 4, 4]
    assert (index.frame_at_pts(3), index.frame_at_pts(7), index.frame_at_pts(None)) == (3, None, None)


def test_timestamps_start_at_the_first_frame():
    index = index_packets(
        [(1001, 1001, True), (3003, 2002, False), (2002, 3003, False)], Fraction(1, 30000), MP4
    )
    torch.testing.assert_close(
        index.timestamps, torch.tensor([0.0, 1001 / 30000, 2002 / 30000], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    "packets,container,reason",
    [
        ([(1, 0, True), (3, 1, False), (2, 2, False)], "avi", "AVI with B-frames"),
        ([(0, 0, True), (None, 1, False), (2, 2, False)], MP4, "without presentation timestamps"),
        ([(0, 0, True), (1, 1, False), (1, 2, False)], "matroska,webm", "duplicate presentation timestamps"),
    ],
)
def test_untrusted_timestamps_are_not_seekable(packets, container, reason):
    index = index_packets(packets, Fraction(1, 24), container)
    assert not index.seekable and reason in index.seek_error
    assert index.num_frames == 3


def test_avi_without_b_frames_is_seekable():
    assert index_packets([(0, 0, True), (1, 1, False), (2, 2, False)], Fraction(1, 24), "avi").seekable


def test_missing_pts_fall_back_to_dts_then_frame_numbers():
    index = index_packets([(None, 0, True), (None, 1, False)], Fraction(1, 10), MP4)
    torch.testing.assert_close(index.timestamps, torch.tensor([0.0, 0.1], dtype=torch.float64))
    index = index_packets([(None, None, True), (None, None, False)], Fraction(1, 10), MP4)
    assert index.pts == (0, 1)


def test_probe_counts_packets_not_the_header():
    clip = encode_clip(index_frames(20), "mpeg4-avi", fps=10)
    for claimed in (7, 40):
        index = probe(set_avi_frame_count(clip, claimed))
        assert index.num_frames == 20 and index.seekable
    assert not probe(encode_clip(index_frames(20), "mpeg4-bframes-avi")).seekable


@pytest.mark.parametrize("data", [b"", b"\x00" * 1000])
def test_probe_of_non_video_raises(data):
    with pytest.raises(VideoDecodeError, match="PyAV cannot open the clip"):
        probe(data)


def test_no_packets_raises():
    with pytest.raises(VideoDecodeError, match="no packets"):
        index_packets([], Fraction(1, 25), MP4)
