import os

import pytest
from video_bytes import frame_numbers, numbered_clip

from mmfuse.video.decode import VideoDecodeError, decord_supports_width, open_video

torchcodec = pytest.importorskip("torchcodec")
BACKENDS = [
    "decord",
    pytest.param(
        "torchcodec",
        marks=pytest.mark.skipif(
            torchcodec.ffmpeg_major_version is None, reason="no system FFmpeg libraries"
        ),
    ),
]


@pytest.fixture(scope="module")
def clip():
    return numbered_clip(30, height=32, width=64, fps=10)  # keyframe every 8 frames, with B-frames


@pytest.mark.parametrize("backend", BACKENDS)
def test_metadata_and_resize_at_decode(clip, backend):
    reader = open_video(clip, height=16, width=32, backend=backend)
    assert (reader.num_frames, reader.average_fps) == (30, 10.0)
    frames = reader.get_frames([0, 1])
    assert frames.shape == (2, 16, 32, 3) and str(frames.dtype) == "torch.uint8"


@pytest.mark.parametrize("backend", BACKENDS)
def test_seek_returns_the_requested_frame(clip, backend):
    reader = open_video(clip, height=32, width=64, backend=backend)
    for k in [17, 3, 29, 0, 8, 9, 7, 16]:  # backwards, across and at keyframes (0, 8, 16, 24)
        assert frame_numbers(reader.get_frames([k]).numpy()) == [k]
    assert frame_numbers(reader.get_frames([29, 3, 17, 18]).numpy()) == [29, 3, 17, 18]


@pytest.mark.parametrize("backend", BACKENDS)
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
        reader = open_video(data, height=32, width=64, backend=backend)
        reader.get_frames(list(range(reader.num_frames)))


def test_decord_width_rule_matches_decord(clip):
    import io

    import decord

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
    with pytest.raises(ValueError, match="unknown video backend 'pyav'"):
        open_video(b"", height=8, width=8, backend="pyav")
