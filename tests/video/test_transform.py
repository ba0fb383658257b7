import json
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from shards import write_shard

from mmfuse.core.data import MediaTextDecoder, ShardedStream, expand_urls
from mmfuse.training.data.chat import collate_media
from mmfuse.video.conformance import encode_clip, index_frames, read_indices
from mmfuse.video.decode import VideoDecodeError
from mmfuse.video.sampling import SegmentSampler, UniformSampler
from mmfuse.video.transform import VideoTransform


def numbered_clip(num_frames: int, fps: int = 8) -> bytes:
    """An H.264 MP4 (B-frames, 64x96) whose frame i shows the code of i."""
    return encode_clip(index_frames(num_frames), "h264-bframes-mp4", fps=fps)


def to_uint8(pixel_values_videos: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: ``[t, 3, h, w]`` float32 -> ``[t, h, w, 3]`` uint8."""
    mean, std = (
        torch.tensor(OPENAI_DATASET_MEAN)[:, None, None],
        torch.tensor(OPENAI_DATASET_STD)[:, None, None],
    )
    return (
        (pixel_values_videos * std + mean).mul(255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    )


def test_short_clip_is_padded_and_masked():
    out = VideoTransform(UniformSampler(8), size=(32, 64))(numbered_clip(5), train=True)
    assert set(out) == {"pixel_values_videos", "frame_mask", "video_timestamps"}
    assert (
        out["pixel_values_videos"].shape == (8, 3, 32, 64)
        and out["pixel_values_videos"].dtype == torch.float32
    )
    assert out["frame_mask"].tolist() == [True] * 5 + [False] * 3
    assert read_indices(to_uint8(out["pixel_values_videos"][:5])) == [0, 1, 2, 3, 4]
    assert not out["pixel_values_videos"][5:].any()
    assert out["video_timestamps"].dtype == torch.float32
    assert out["video_timestamps"].tolist() == [0.0, 0.125, 0.25, 0.375, 0.5, 0.0, 0.0, 0.0]  # 8 fps


def test_frames_follow_the_sampler_and_are_normalised():
    transform = VideoTransform(SegmentSampler(4), size=32)
    out = transform(numbered_clip(10), train=False)
    assert out["pixel_values_videos"].shape == (4, 3, 32, 32) and out["frame_mask"].all()
    assert read_indices(to_uint8(out["pixel_values_videos"])) == [1, 3, 6, 8]
    # Frame 1's code: bit 0 (the top-left cell) white, its complement (the first cell of row 2) black.
    # Each channel of a pixel at level v is (v - mean_c) / std_c, up to coding and resizing error.
    mean, std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
    white, black = out["pixel_values_videos"][0, :, 2:6, 1:4], out["pixel_values_videos"][0, :, 18:22, 1:4]
    torch.testing.assert_close(white.mean(dim=(1, 2)), (1 - mean) / std, atol=0.1, rtol=0)
    torch.testing.assert_close(black.mean(dim=(1, 2)), (0 - mean) / std, atol=0.1, rtol=0)


def test_corrupt_clip_raises():
    with pytest.raises(VideoDecodeError, match="cannot open the clip"):
        VideoTransform(size=32)(b"\x00\x00\x00 ftypisom" + bytes(500), train=False)


def test_width_decord_cannot_output_is_refused_up_front():
    with pytest.raises(ValueError, match="48 pixels wide"):
        VideoTransform(size=48, backend="decord")
    VideoTransform(size=48)  # PyAV and torchcodec have no such limit
    VideoTransform(size=48, backend="torchcodec")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_memory_stays_bounded_over_hundreds_of_decodes():
    transform, clip = VideoTransform(UniformSampler(8), size=32), numbered_clip(16)
    for _ in range(50):  # warm up allocator pools
        transform(clip, train=True)
    before = rss_mib()
    for _ in range(400):
        transform(clip, train=True)
    assert rss_mib() - before < 8.0


def test_corrupt_sample_in_a_shard_is_skipped_and_counted(tmp_path):
    samples = []
    for i in range(5):
        clip = b"corrupt" * 100 if i == 2 else numbered_clip(6 + i)
        meta = {"object": "a grey square", "direction": "left"}
        samples.append(
            {
                "__key__": f"clip{i}",
                "mp4": clip,
                "txt": b"a grey square moving left",
                "json": json.dumps(meta).encode(),
            }
        )
    write_shard(tmp_path / "val-000000.tar", samples)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    decode = MediaTextDecoder(VideoTransform(UniformSampler(8), size=32), tokenizer)
    batches = list(
        ShardedStream(
            expand_urls(str(tmp_path / "val-000000.tar")), decode, batch_size=2, train=False, shuffle_buffer=0
        )
    )
    assert [b["__key__"] for b in batches] == [["clip0", "clip1"], ["clip3", "clip4"]]
    assert sum(b["num_skipped"] for b in batches) == 1
    assert batches[1]["pixel_values_videos"].shape == (2, 8, 3, 32, 32)
    assert batches[1]["frame_mask"].sum(dim=1).tolist() == [8, 8]  # 9 and 10 frames, 8 sampled
    assert batches[0]["frame_mask"].sum(dim=1).tolist() == [6, 7]
    # The transform's timestamps reach the batch: clip1 (7 frames at 8 fps) has all its frames.
    assert batches[0]["video_timestamps"].shape == (2, 8)
    assert batches[0]["video_timestamps"][1].tolist() == [i / 8 for i in range(7)] + [0.0]


def test_timestamps_reach_the_chat_media_batch():
    transform = VideoTransform(UniformSampler(4), size=32)
    media = [
        [("video", transform(numbered_clip(9, fps=4), train=False))],
        [("video", transform(numbered_clip(3), train=False))],
    ]
    batch = collate_media(media)["video"]
    assert set(batch) == {"pixel_values_videos", "frame_mask", "video_timestamps"}
    # 9 frames at 4 fps, uniform 4: frames 0, 2, 5, 8; 3 frames at 8 fps: all three, then padding.
    assert batch["video_timestamps"].tolist() == [[0.0, 0.5, 1.25, 2.0], [0.0, 0.125, 0.25, 0.0]]


def test_every_backend_gives_the_embedded_clips_the_same_tensors(backend):
    """The embedded clips (H.264 MP4 at the trained frame size) decode to equal tensors whatever the
    backend, so the choice of default cannot change what the video alignment trains on."""
    shard = Path(__file__).parents[2] / "data/video_text/val-000000.tar.gz"
    with tarfile.open(shard) as tar:
        clips = [tar.extractfile(m).read() for m in tar if m.name.endswith(".mp4")][:24]
    reference = VideoTransform(UniformSampler(8), size=32)
    other = VideoTransform(UniformSampler(8), size=32, backend=backend)
    for clip in clips:
        want, got = reference(clip, train=False), other(clip, train=False)
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want)
