"""Frame samplers: which frame indices of a clip to decode.

A sampler maps a clip's length (and frame rate) to at most ``num_frames`` frame indices in
increasing order. A clip with fewer frames than a sampler asks for gives fewer indices; the
transform pads the rest and marks them in ``frame_mask`` (see :mod:`mmfuse.video.transform`).

All index arithmetic is integer (or one float product for the frame rate), so the indices for
a given length are exact and the tests can pin them.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch


class FrameSampler(Protocol):
    """What :class:`~mmfuse.video.transform.VideoTransform` needs of a sampler.

    Attributes:
        num_frames: the most indices a call returns; the transform's ``t``.
    """

    num_frames: int

    def __call__(
        self, num_total: int, average_fps: float, *, train: bool, generator: torch.Generator | None = None
    ) -> list[int]:
        """Indices (increasing, each in ``[0, num_total)``, at most ``num_frames`` of them)."""
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
        self, num_total: int, average_fps: float, *, train: bool, generator: torch.Generator | None = None
    ) -> list[int]:
        t = self.num_frames
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
        self, num_total: int, average_fps: float, *, train: bool, generator: torch.Generator | None = None
    ) -> list[int]:
        t, n = self.num_frames, num_total
        if n <= t:
            return list(range(n))
        if not train:
            return [(2 * k + 1) * n // (2 * t) for k in range(t)]
        starts = torch.tensor([k * n // t for k in range(t)])
        lengths = torch.tensor([(k + 1) * n // t for k in range(t)]) - starts  # each >= 1 since n > t
        offsets = (torch.rand(t, generator=generator) * lengths).long()  # [t], offsets[k] in [0, lengths[k])
        return (starts + offsets).tolist()


class FpsSampler:
    """Frames at a fixed rate ``fps``, at most ``max_frames`` of them.

    The candidate frames are those shown at times ``j / fps`` seconds, ``j = 0, 1, ...``: index
    ``floor(j * average_fps / fps)`` while it is below ``n``. When there are more than
    ``max_frames`` candidates, a window of ``max_frames`` consecutive candidates is kept: a
    random one in training, the centred one in evaluation (so the rate never changes, the clip is
    cut instead).

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
        self, num_total: int, average_fps: float, *, train: bool, generator: torch.Generator | None = None
    ) -> list[int]:
        _check_positive("average_fps", average_fps)
        step = average_fps / self.fps  # native frames per sampled frame
        # +1e-9 keeps exact products (e.g. 25 fps -> 5 fps: j * 5.0) from flooring one frame short.
        candidates = sorted({math.floor(j * step + 1e-9) for j in range(math.ceil(num_total / step))})
        candidates = [i for i in candidates if i < num_total]
        extra = len(candidates) - self.num_frames
        if extra <= 0:
            return candidates
        start = int(torch.randint(extra + 1, (), generator=generator)) if train else extra // 2
        return candidates[start : start + self.num_frames]


__all__ = ["FpsSampler", "FrameSampler", "SegmentSampler", "UniformSampler"]
