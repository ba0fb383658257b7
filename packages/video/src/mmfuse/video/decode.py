"""Clip readers: bytes from a shard -> chosen frames, resized at decode, as uint8 tensors.

Two backends share one small interface (:class:`ClipReader`): decord (default; its wheel
bundles FFmpeg 4.1) and torchcodec (needs the system FFmpeg libraries). Both decode with one
thread, as each dataloader worker is already one process, and both resize inside FFmpeg's
scale filter (``scale=w:h``, aspect ratio not kept: open_clip's ``resize_mode="squash"``).

Shape letters: t frames, h height, w width.
"""

from __future__ import annotations

import io
from typing import Literal, Protocol

import decord
import torch
from torch import Tensor

Backend = Literal["decord", "torchcodec"]

# Debian 12 names of the FFmpeg 5.1 shared libraries torchcodec loads.
FFMPEG_DEBIAN_PACKAGES = (
    "libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4"
)


class VideoDecodeError(ValueError):
    """The bytes are not a decodable video (corrupt, truncated, empty or without frames)."""


class ClipReader(Protocol):
    """An opened clip.

    Attributes:
        num_frames: frames in the clip (from the container or the decoder's index).
        average_fps: average frame rate in frames per second.
    """

    num_frames: int
    average_fps: float

    def get_frames(self, indices: list[int]) -> Tensor:
        """Frames ``indices`` (each in ``[0, num_frames)``) as ``[t, h, w, 3]`` uint8 RGB."""
        ...


def _rgb24_linesize(width: int, align: int = 32) -> int:
    """Row stride in bytes FFmpeg gives an RGB24 frame of ``width`` pixels.

    libavutil's ``get_video_buffer`` (``av_frame_get_buffer`` with ``align=0``, i.e. 32) pads
    the width to 1, 2, 4, ... 32 pixels until the stride is a multiple of ``align`` bytes.
    """
    pad = 1
    while pad <= align:
        linesize = 3 * (-(-width // pad) * pad)
        if linesize % align == 0:
            return linesize
        pad *= 2
    return linesize


def decord_supports_width(width: int) -> bool:
    """Whether decord 0.6 returns correct frames at output ``width``.

    decord's ``FFMPEGThreadedDecoder::AsNDArray`` takes a frame as compact when its stride is a
    multiple of the width, and then reads ``stride / width`` channels: a padded RGB24 stride
    that happens to be a multiple of the width (widths 1-4, 6, 8, 12, 16, 24, 48, 72) makes
    ``get_batch`` fail with "DECORDArrayCopyFromTo: The size must exactly match".
    """
    linesize = _rgb24_linesize(width)
    return linesize == 3 * width or linesize % width != 0


class DecordReader:
    """A clip opened with decord's ``VideoReader`` over the bytes.

    Args:
        data: the encoded container (mp4, webm, mkv, avi ...).
        height: output frame height in pixels.
        width: output frame width in pixels; see :func:`decord_supports_width`.
        seek_after_read: call ``seek(0)`` after each ``get_batch``, the workaround reported for
            decord's native memory growth (dmlc/decord#208, #323); ``benchmarks/video_decode.py``
            measures RSS with and without it.

    Raises:
        ValueError: if decord cannot resize to ``width``.
        VideoDecodeError: if the bytes do not open as a video with frames.
    """

    def __init__(self, data: bytes, *, height: int, width: int, seek_after_read: bool = True) -> None:
        if not decord_supports_width(width):
            raise ValueError(
                f"decord 0.6 cannot output frames {width} pixels wide (a stride bug); choose another width"
            )
        try:
            self._reader = decord.VideoReader(io.BytesIO(data), width=width, height=height, num_threads=1)
        except (decord.DECORDError, RuntimeError) as error:  # decord re-raises open errors as RuntimeError
            raise VideoDecodeError(f"decord cannot open the clip ({len(data)} bytes): {error}") from error
        self.num_frames = len(self._reader)
        if self.num_frames == 0:
            raise VideoDecodeError(f"decord found no frames in the clip ({len(data)} bytes)")
        self.average_fps = float(self._reader.get_avg_fps())
        self._seek_after_read = seek_after_read

    def get_frames(self, indices: list[int]) -> Tensor:
        """Frames ``indices`` as ``[t, h, w, 3]`` uint8 RGB.

        Raises:
            VideoDecodeError: if decoding fails part-way (e.g. a truncated stream).
        """
        try:
            frames = self._reader.get_batch(indices).asnumpy()
            if self._seek_after_read:
                self._reader.seek(0)
        except decord.DECORDError as error:
            raise VideoDecodeError(f"decord failed on frames {indices}: {error}") from error
        return torch.from_numpy(frames)


class TorchCodecReader:
    """A clip opened with torchcodec's ``VideoDecoder`` (exact seek mode) over the bytes.

    Args:
        data: the encoded container.
        height: output frame height in pixels.
        width: output frame width in pixels.

    Raises:
        ImportError: if torchcodec is not installed.
        RuntimeError: if the system FFmpeg libraries are missing; names the Debian packages.
        VideoDecodeError: if the bytes do not open as a video with frames.
    """

    def __init__(self, data: bytes, *, height: int, width: int) -> None:
        import torchcodec  # optional backend: imported only when chosen

        if torchcodec.ffmpeg_major_version is None:
            raise RuntimeError(
                "torchcodec found no FFmpeg shared libraries; on Debian 12 install them with "
                f"`apt-get install {FFMPEG_DEBIAN_PACKAGES}`, or use backend='decord'"
            )
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        try:
            self._decoder = VideoDecoder(
                data, dimension_order="NHWC", num_ffmpeg_threads=1, transforms=[Resize(size=(height, width))]
            )
        except (RuntimeError, ValueError) as error:
            raise VideoDecodeError(f"torchcodec cannot open the clip ({len(data)} bytes): {error}") from error
        metadata = self._decoder.metadata
        self.num_frames = len(self._decoder)
        if self.num_frames == 0 or metadata.average_fps is None:
            raise VideoDecodeError(f"torchcodec found no frames in the clip ({len(data)} bytes)")
        self.average_fps = float(metadata.average_fps)

    def get_frames(self, indices: list[int]) -> Tensor:
        """Frames ``indices`` as ``[t, h, w, 3]`` uint8 RGB.

        Raises:
            VideoDecodeError: if decoding fails part-way.
        """
        try:
            return self._decoder.get_frames_at(indices).data
        except RuntimeError as error:
            raise VideoDecodeError(f"torchcodec failed on frames {indices}: {error}") from error


def open_video(data: bytes, *, height: int, width: int, backend: Backend = "decord") -> ClipReader:
    """Open ``data`` with the named backend's reader.

    Raises:
        ValueError: for an unknown backend, or a width decord cannot output.
        VideoDecodeError: if the bytes are not a decodable video.
        RuntimeError: for torchcodec without the system FFmpeg libraries.
    """
    if backend == "decord":
        return DecordReader(data, height=height, width=width)
    if backend == "torchcodec":
        return TorchCodecReader(data, height=height, width=width)
    raise ValueError(f"unknown video backend {backend!r}; expected 'decord' or 'torchcodec'")


__all__ = [
    "FFMPEG_DEBIAN_PACKAGES",
    "Backend",
    "ClipReader",
    "DecordReader",
    "TorchCodecReader",
    "VideoDecodeError",
    "decord_supports_width",
    "open_video",
]
