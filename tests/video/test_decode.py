import dataclasses
import gc
import io
import os

import av  # noqa: F401 - before decord (see mmfuse.video.conformance.encode_clip)
import decord
import pytest
import torch
import torchcodec

from mmfuse.video.conformance import encode_clip, index_frames, read_indices
from mmfuse.video.decode import PyAVReader, VideoDecodeError, decord_supports_width, open_video


@pytest.fixture(scope="module")
def clip():
    return encode_clip(index_frames(30), "h264-bframes-mp4", fps=10)  # keyframe every 12 frames, B-frames


def test_metadata_and_resize_at_decode(clip, backend):
    reader = open_video(clip, height=40, width=50, backend=backend)
    assert reader.num_frames == 30
    torch.testing.assert_close(reader.timestamps, torch.arange(30, dtype=torch.float64) / 10)
    frames = reader.get_frames([0, 1])
    assert frames.shape == (2, 40, 50, 3) and frames.dtype == torch.uint8


def test_pyav_seek_and_decode_from_the_start_give_the_same_pixels(clip):
    indices = [29, 3, 17, 17, 12, 11, 0]
    seeking = PyAVReader(clip, height=64, width=96).get_frames(indices)
    from_start = PyAVReader(clip, height=64, width=96, seek=False).get_frames(indices)
    torch.testing.assert_close(seeking, from_start, rtol=0, atol=0)
    assert read_indices(seeking.numpy()) == indices


def test_pyav_falls_back_to_counting_when_a_timestamp_is_not_the_index(clip):
    reader = PyAVReader(clip, height=64, width=96)
    reader.index = dataclasses.replace(
        reader.index, pts=tuple(p + 1 for p in reader.index.pts)
    )  # all off by one
    assert read_indices(reader.get_frames([29, 13, 2]).numpy()) == [29, 13, 2]


def test_a_dropped_pyav_reader_closes_its_container_at_once(clip):
    # PyAV's container and streams form reference cycles; left to the cyclic garbage collector, the
    # FFmpeg contexts of 2,000 dropped readers grew RSS by 25 MiB (benchmarks/video_decode.py).
    gc.disable()
    try:
        reader = PyAVReader(clip, height=64, width=96)
        reader.get_frames([3])
        container = reader._container
        del reader
        assert not container.streams.video  # a closed container has no streams left
    finally:
        gc.enable()


def test_indices_outside_the_clip_raise(clip, backend):
    reader = open_video(clip, height=64, width=96, backend=backend)
    for indices in ([30], [-1, 3], []):
        with pytest.raises(IndexError, match="asked of a clip of 30 frames"):
            reader.get_frames(indices)


@pytest.mark.parametrize("corruption", ["empty", "noise", "first_half", "cut_index", "zeroed_middle"])
def test_corrupt_clip_raises_decode_error(clip, backend, corruption):
    data = {
        "empty": b"",
        "noise": os.urandom(len(clip)),
        "first_half": clip[: len(clip) // 2],
        "cut_index": clip[: clip.index(b"moov") + 100],  # the mp4 index (moov) comes last, cut inside it
        "zeroed_middle": clip[:600] + bytes(len(clip) - 1200) + clip[-600:],
    }[corruption]
    with pytest.raises(VideoDecodeError):
        reader = open_video(data, height=64, width=96, backend=backend)
        reader.get_frames(list(range(reader.num_frames)))


def test_decord_width_rule_matches_decord(clip):
    def works(width):
        try:
            decord.VideoReader(io.BytesIO(clip), width=width, height=8, num_threads=1).get_batch([0])
        except decord.DECORDError:
            return False
        return True

    assert [w for w in range(1, 100) if not decord_supports_width(w)] == [
        1,
        2,
        3,
        4,
        6,
        8,
        12,
        16,
        24,
        48,
        72,
    ]
    assert all(works(w) == decord_supports_width(w) for w in range(1, 100))
    with pytest.raises(ValueError, match="48 pixels wide"):
        open_video(clip, height=32, width=48, backend="decord")


def test_torchcodec_without_ffmpeg_names_the_debian_packages(clip, monkeypatch):
    monkeypatch.setattr(torchcodec, "ffmpeg_major_version", None)
    with pytest.raises(RuntimeError, match="apt-get install libavutil57 libavcodec59"):
        open_video(clip, height=32, width=64, backend="torchcodec")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown video backend 'opencv'"):
        open_video(b"", height=8, width=8, backend="opencv")
