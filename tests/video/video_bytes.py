"""Encoded clips written in tests with PyAV (its wheel bundles libx264)."""

from __future__ import annotations

import io

import av
import numpy as np

# Frame i of a numbered clip is solid grey at level LEVEL_STEP * i + LEVEL_OFFSET, so a decoded
# frame's mean level tells its index even after lossy coding and resizing (error << step / 2).
LEVEL_STEP = 8
LEVEL_OFFSET = 4


def encode_mp4(frames: np.ndarray, fps: int = 8, gop: int = 8) -> bytes:
    """H.264 MP4 bytes of ``[t, h, w, 3]`` uint8 RGB frames (h, w even).

    ``gop`` frames per keyframe with libx264's default B-frames, so reading frame k needs a seek
    to the keyframe before it and decoding forward: a real test of seek accuracy.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"g": str(gop), "crf": "10", "threads": "1"}
        )
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def numbered_frames(num_frames: int, height: int = 32, width: int = 64) -> np.ndarray:
    """``[t, h, w, 3]`` uint8 frames; frame i is grey level ``LEVEL_STEP * i + LEVEL_OFFSET``."""
    if LEVEL_STEP * (num_frames - 1) + LEVEL_OFFSET > 255:
        raise ValueError(f"{num_frames} frames do not fit in 8-bit grey levels")
    levels = LEVEL_STEP * np.arange(num_frames) + LEVEL_OFFSET
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8)


def numbered_clip(num_frames: int, height: int = 32, width: int = 64, fps: int = 8) -> bytes:
    """An MP4 whose frame i encodes the number i (see :func:`numbered_frames`)."""
    return encode_mp4(numbered_frames(num_frames, height, width), fps=fps)


def frame_numbers(frames: np.ndarray) -> list[int]:
    """Read back the numbers of decoded ``[t, h, w, 3]`` uint8 frames of a numbered clip."""
    means = frames.reshape(frames.shape[0], -1).astype(np.float64).mean(axis=1)
    return np.rint((means - LEVEL_OFFSET) / LEVEL_STEP).astype(int).tolist()
