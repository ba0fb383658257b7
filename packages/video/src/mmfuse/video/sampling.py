"""Frame samplers: which frames of a clip to decode.

A sampler maps a clip's frame timestamps (``[n]`` float64 seconds from the first frame, in
presentation order; :attr:`mmfuse.video.decode.ClipReader.timestamps`) to at most ``num_frames``
frame indices in increasing order. :class:`UniformSampler` and :class:`SegmentSampler` spread the
indices over the frames; :class:`FpsSampler` picks frames by presentation time, so a
variable-frame-rate clip (phone video) is sampled evenly in seconds. A clip with fewer frames
than a sampler asks for gives fewer indices; the transform pads the rest and marks them in
``frame_mask`` (see :mod:`mmfuse.video.transform`).

All index arithmetic is integer (or one float product for a time), so the indices for a given
clip are exact and the tests can pin them.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor


class FrameSampler(Protocol):
    """What :class:`~mmfuse.video.transform.VideoTransform` needs of a sampler.

    Attributes:
        num_frames: the most indices a call returns; the transform's ``t``.
    """

    num_frames: int

    def __call__(
        self, timestamps: Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> list[int]:
        """Indices (increasing, each in ``[0, n)``, at most ``num_frames``) of a clip whose frame ``i``
        is shown at ``timestamps[i]`` seconds (``[n]`` float64, increasing, ``timestamps[0] == 0``)."""
        ...


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


class UniformSampler:
    """``num_frames`` evenly spaced frames from the first to the last.

    Index ``i`` is ``floor(i * (n - 1) / (t - 1))`` for a clip of ``n >= t`` frames (the integer
    form of ``np.linspace(0, n - 1, t).astype(int)``, the sampling of most video-LLM loaders);
    ``t == 1`` takes the middle frame ``(n - 1) // 2``. A clip of ``n < t`` frames gives all
    ``n`` frames. Deterministic: ``train`` is ignored.

    Args:
        num_frames: frames per clip, ``t``.

    Raises:
        ValueError: if ``num_frames`` is not positive.
    """

    def __init__(self, num_frames: int) -> None:
        _check_positive("num_frames", num_frames)
        self.num_frames = num_frames

    def __call__(
        self, timestamps: Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> list[int]:
        t, num_total = self.num_frames, len(timestamps)
        if num_total <= t:
            return list(range(num_total))
        if t == 1:
            return [(num_total - 1) // 2]
        return [i * (num_total - 1) // (t - 1) for i in range(t)]


class SegmentSampler:
    """TSN segment sampling: one frame from each of ``num_frames`` equal segments.

    Segment ``k`` of a clip of ``n >= t`` frames covers ``[floor(k n / t), floor((k + 1) n / t))``.
    Training takes a uniformly random frame of each segment; evaluation takes its middle frame
    ``floor((k + 1/2) n / t)``. Source: Wang et al., "Temporal Segment Networks", ECCV 2016,
    Sec. 3.2 (sparse sampling), with MMAction2's ``SampleFrames(test_mode=True)`` centre rule.
    A clip of ``n < t`` frames gives all ``n`` frames.

    Args:
        num_frames: segments (= frames) per clip, ``t``.

    Raises:
        ValueError: if ``num_frames`` is not positive.
    """

    def __init__(self, num_frames: int) -> None:
        _check_positive("num_frames", num_frames)
        self.num_frames = num_frames

    def __call__(
        self, timestamps: Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> list[int]:
        t, n = self.num_frames, len(timestamps)
        if n <= t:
            return list(range(n))
        if not train:
            return [(2 * k + 1) * n // (2 * t) for k in range(t)]
        starts = torch.tensor([k * n // t for k in range(t)])
        lengths = torch.tensor([(k + 1) * n // t for k in range(t)]) - starts  # each >= 1 since n > t
        offsets = (torch.rand(t, generator=generator) * lengths).long()  # [t], offsets[k] in [0, lengths[k])
        return (starts + offsets).tolist()


class FpsSampler:
    """Frames at a fixed rate ``fps`` by presentation time, at most ``max_frames`` of them.

    The candidate frames are those on screen at times ``j / fps`` seconds, ``j = 0, 1, ...``, up
    to the last frame's timestamp: for each time, the last frame shown at or before it
    (``searchsorted(timestamps, j / fps, side="right") - 1``), each frame once (sampling above the
    clip's rate repeats no frame). So a variable-frame-rate clip is sampled evenly in seconds, and
    a constant-rate clip at ``r`` fps gives index ``floor(j * r / fps)``. When there are more than
    ``max_frames`` candidates, a window of ``max_frames`` consecutive candidates is kept: a random
    one in training, the centred one in evaluation (so the rate never changes, the clip is cut
    instead).

    Args:
        fps: sampling rate in frames per second.
        max_frames: the most frames per clip, ``t``.

    Raises:
        ValueError: if ``fps`` or ``max_frames`` is not positive.
    """

    def __init__(self, fps: float, max_frames: int) -> None:
        _check_positive("fps", fps)
        _check_positive("max_frames", max_frames)
        self.fps = fps
        self.num_frames = max_frames

    def __call__(
        self, timestamps: Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> list[int]:
        duration = float(timestamps[-1])
        # +1e-9 s: a time that is a frame's timestamp up to float error (j / 5 vs 5 j / 25) picks that frame.
        times = torch.arange(math.floor(duration * self.fps + 1e-6) + 1, dtype=torch.float64) / self.fps
        shown = (
            torch.searchsorted(timestamps.double(), times + 1e-9, side="right") - 1
        )  # [j], frame on screen
        candidates = torch.unique_consecutive(shown).tolist()
        extra = len(candidates) - self.num_frames
        if extra <= 0:
            return candidates
        start = int(torch.randint(extra + 1, (), generator=generator)) if train else extra // 2
        return candidates[start : start + self.num_frames]


__all__ = ["FpsSampler", "FrameSampler", "SegmentSampler", "UniformSampler"]
