import json

import numpy as np
import open_clip
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from shards import write_shard
from video_bytes import frame_numbers, numbered_clip

from mmfuse.core.data import PairDecoder, ShardedStream, expand_urls
from mmfuse.video.decode import VideoDecodeError
from mmfuse.video.sampling import SegmentSampler, UniformSampler
from mmfuse.video.transform import VideoTransform


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
    assert set(out) == {"pixel_values_videos", "frame_mask"}
    assert (
        out["pixel_values_videos"].shape == (8, 3, 32, 64)
        and out["pixel_values_videos"].dtype == torch.float32
    )
    assert out["frame_mask"].tolist() == [True] * 5 + [False] * 3
    assert frame_numbers(to_uint8(out["pixel_values_videos"][:5])) == [0, 1, 2, 3, 4]
    assert not out["pixel_values_videos"][5:].any()


def test_frames_follow_the_sampler_and_are_normalised():
    transform = VideoTransform(SegmentSampler(4), size=32)
    out = transform(numbered_clip(10, height=32, width=64), train=False)
    assert out["pixel_values_videos"].shape == (4, 3, 32, 32) and out["frame_mask"].all()
    assert frame_numbers(to_uint8(out["pixel_values_videos"])) == [1, 3, 6, 8]
    # Frame 1 is grey 12/255: each channel is (12/255 - mean_c) / std_c, up to coding error.
    expected = (12 / 255 - torch.tensor(OPENAI_DATASET_MEAN)) / torch.tensor(OPENAI_DATASET_STD)
    torch.testing.assert_close(out["pixel_values_videos"][0].mean(dim=(1, 2)), expected, atol=0.05, rtol=0)


def test_corrupt_clip_raises():
    with pytest.raises(VideoDecodeError, match="cannot open the clip"):
        VideoTransform(size=32)(b"\x00\x00\x00 ftypisom" + bytes(500), train=False)


def test_width_decord_cannot_output_is_refused_up_front():
    with pytest.raises(ValueError, match="48 pixels wide"):
        VideoTransform(size=48)
    VideoTransform(size=48, backend="torchcodec")  # torchcodec has no such limit


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
    decode = PairDecoder(VideoTransform(UniformSampler(8), size=32), tokenizer)
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
