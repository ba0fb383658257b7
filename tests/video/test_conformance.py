"""Every container / codec pair FFmpeg writes here, through every backend: exactly the frames asked for.

Each clip's frame ``i`` shows ``i`` as a black/white cell code (:mod:`mmfuse.video.conformance`),
a keyframe every 12 frames, decoded with a resize (96x64 -> 80x48). A wrong, blended or repeated
frame reads as another index or -1, so any of them fails the test.
"""

from __future__ import annotations

import io

import av  # noqa: F401 - before decord, whose libvpx would shadow PyAV's (conformance.encode_clip)
import decord
import numpy as np
import pytest
import torch
import torchcodec

from mmfuse.video import FpsSampler, VideoTransform, open_video
from mmfuse.video.conformance import FORMATS, encode_clip, index_frames, read_indices, set_avi_frame_count
from mmfuse.video.decode import DecordReader, PyAVReader, TorchCodecReader, UntrustedSeek
from mmfuse.video.frame_index import probe

N = 64
# A phone-style variable frame rate: each frame shown 20, 33, 50 or 100 ms.
DURATIONS_MS = np.random.default_rng(0).choice([20, 33, 50, 100], size=N).tolist()
ASKS = {
    "sorted": [0, 5, 17, 33, 40, 41, 62, 63],
    "random order with repeats": [63, 0, 40, 5, 41, 17, 17, 62, 33, 0, 63],
    "first": [0],
    "last": [N - 1],
    "every frame, backwards": list(range(N - 1, -1, -1)),
}


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    frames = index_frames(N)
    out = {name: encode_clip(frames, name) for name in FORMATS}
    out["vfr-h264-bframes-mp4"] = encode_clip(frames, "h264-bframes-mp4", fps=30, durations=DURATIONS_MS)
    out["avi-header-claims-2x-frames"] = set_avi_frame_count(out["mpeg4-avi"], 2 * N)
    out["avi-bframes-header-claims-half"] = set_avi_frame_count(out["mpeg4-bframes-avi"], N // 2)
    return out


CLIPS = [*FORMATS, "vfr-h264-bframes-mp4", "avi-header-claims-2x-frames", "avi-bframes-header-claims-half"]


@pytest.mark.parametrize("clip", CLIPS)
def test_exact_frames(clips, clip, backend):
    reader = open_video(clips[clip], height=48, width=80, backend=backend)
    assert reader.num_frames == N
    for ask, indices in ASKS.items():
        frames = reader.get_frames(indices)
        assert frames.shape == (len(indices), 48, 80, 3) and frames.dtype == torch.uint8
        assert read_indices(frames.numpy()) == indices, ask
    # One frame per call: a seek each time, to every frame next to every keyframe.
    assert [read_indices(reader.get_frames([i]).numpy())[0] for i in range(N)] == list(range(N))


def test_variable_frame_rate_clip_is_sampled_by_time(clips, backend):
    starts = np.cumsum([0, *DURATIONS_MS[:-1]]) / 1000  # when each frame is shown, s
    reader = open_video(clips["vfr-h264-bframes-mp4"], height=48, width=80, backend=backend)
    torch.testing.assert_close(reader.timestamps, torch.from_numpy(starts), atol=1e-4, rtol=0)
    sampler = FpsSampler(fps=5, max_frames=N)
    indices = sampler(reader.timestamps, train=False)
    assert read_indices(reader.get_frames(indices).numpy()) == indices
    ends = [*starts[1:], np.inf]
    slots = [j / 5 for j in range(int(starts[-1] * 5) + 1)]  # 0, 0.2, 0.4 ... s
    on_screen = [next(k for k in range(N) if starts[k] <= t < ends[k]) for t in slots]
    assert indices == sorted(set(on_screen))
    out = VideoTransform(sampler, size=(48, 80), backend=backend)(clips["vfr-h264-bframes-mp4"], train=False)
    assert out["frame_mask"].sum() == len(indices)
    torch.testing.assert_close(out["video_timestamps"][: len(indices)], torch.tensor(starts[indices]).float())


def test_the_check_fails_on_a_wrong_frame():
    frames = index_frames(8)
    assert read_indices(frames) == list(range(8))
    blend = ((frames[5].astype(np.uint16) + frames[6]) // 2).astype(np.uint8)  # a frame half-way
    grey = np.full_like(frames[0], 128)
    assert read_indices(np.stack([frames[3], blend, grey, frames[7]])) == [3, -1, -1, 7]


def test_backend_seeks_are_wrong_where_the_readers_refuse_them(clips):
    """The evidence behind the routing: decord's and torchcodec's own seeks misread these clips."""
    avi = clips["mpeg4-bframes-avi"]
    decord_frames = decord.VideoReader(io.BytesIO(avi), num_threads=1).get_batch(ASKS["sorted"]).asnumpy()
    assert read_indices(decord_frames) != ASKS["sorted"]
    backwards = ASKS["every frame, backwards"]
    hevc = decord.VideoReader(io.BytesIO(clips["hevc-mp4"]), num_threads=1).get_batch(backwards).asnumpy()
    assert read_indices(hevc) != backwards
    readers = {"decord": DecordReader}
    if torchcodec.ffmpeg_major_version is not None:
        readers["torchcodec"] = TorchCodecReader
    for backend, reader in readers.items():
        with pytest.raises(UntrustedSeek, match="AVI with B-frames"):
            reader(avi, height=48, width=80)
        assert isinstance(open_video(avi, height=48, width=80, backend=backend), PyAVReader)
    with pytest.raises(UntrustedSeek, match="open GOP"):
        DecordReader(clips["hevc-mp4"], height=48, width=80)
    assert probe(clips["hevc-mp4"]).open_gop and not probe(clips["h264-bframes-mp4"]).open_gop
