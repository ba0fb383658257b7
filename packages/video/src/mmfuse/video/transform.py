"""The video media transform: clip bytes -> ``pixel_values_videos``, ``frame_mask``, ``video_timestamps``.

Shape letters: t frames (the sampler's ``num_frames``), c channels, h height, w width.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmfuse.video.decode import Backend, decord_supports_width, open_video
from mmfuse.video.sampling import FrameSampler, UniformSampler
from mmfuse.vision import normalize


class VideoTransform:
    """Media transform for clips (:class:`mmfuse.core.data.MediaTransform`).

    ``__call__(data, train=...)`` returns

    * ``pixel_values_videos``: ``[t, 3, h, w]`` float32, frames resized at decode to
      ``(h, w)`` (aspect ratio not kept) and normalised as :class:`mmfuse.vision.ImageTransform`
      normalises images (open_clip's OpenAI mean/std), so an image tower sees familiar inputs;
    * ``frame_mask``: ``[t]`` bool, True for real frames. A clip with fewer frames than the
      sampler asks for is padded at the end with zero frames and False;
    * ``video_timestamps``: ``[t]`` float32, when each sampled frame is shown, in seconds from the
      clip's first frame (0 on padded frames), for a temporal model or a time-aware prompt. The
      towers read only their ``input_names``, so the key rides along in the batch.

    There is no spatial augmentation: a horizontal flip would turn "moving left" into "moving
    right"; temporal jitter comes from the sampler (e.g. :class:`SegmentSampler` in training).

    Args:
        sampler: picks the frame indices; default ``UniformSampler(8)``.
        size: output frame side, or ``(height, width)``, in pixels.
        backend: ``"pyav"`` (default), ``"decord"`` or ``"torchcodec"`` (needs the system FFmpeg
            libraries); all three return the frames asked for (:mod:`mmfuse.video.decode`).

    Raises:
        ValueError: if ``backend == "decord"`` and decord cannot output frames ``width`` wide.
    """

    extensions = ("mp4", "webm", "mkv", "avi", "mov")

    def __init__(
        self,
        sampler: FrameSampler | None = None,
        size: int | tuple[int, int] = 224,
        backend: Backend = "pyav",
    ) -> None:
        self.sampler = sampler or UniformSampler(8)
        self.height, self.width = (size, size) if isinstance(size, int) else size
        if backend == "decord" and not decord_supports_width(self.width):
            raise ValueError(f"decord cannot output frames {self.width} pixels wide; pick another size")
        self.backend = backend
        self.normalize = normalize()

    def __call__(self, data: bytes, *, train: bool) -> dict[str, Tensor]:
        """Decode, sample, normalise and pad one clip.

        Raises:
            mmfuse.video.decode.VideoDecodeError: for corrupt, truncated or empty clips.
        """
        reader = open_video(data, height=self.height, width=self.width, backend=self.backend)
        indices = self.sampler(reader.timestamps, train=train)
        frames = reader.get_frames(indices)  # [n, h, w, 3] uint8, n <= t
        frames = self.normalize(frames.permute(0, 3, 1, 2).float().div_(255))  # -> [n, 3, h, w]
        t, n = self.sampler.num_frames, frames.shape[0]
        pixel_values_videos = torch.zeros(t, 3, self.height, self.width)
        pixel_values_videos[:n] = frames
        video_timestamps = torch.zeros(t)
        video_timestamps[:n] = reader.timestamps[indices].float()
        frame_mask = torch.arange(t) < n
        return {
            "pixel_values_videos": pixel_values_videos,
            "frame_mask": frame_mask,
            "video_timestamps": video_timestamps,
        }


__all__ = ["VideoTransform"]
