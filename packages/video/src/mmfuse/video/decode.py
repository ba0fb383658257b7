"""Clip readers: bytes from a shard -> exactly the frames asked for, resized at decode, as uint8.

Three backends share one interface (:class:`ClipReader`): PyAV (the default; its wheel bundles
FFmpeg 8), decord (its wheel bundles FFmpeg 4.1, without AV1) and torchcodec (needs the system
FFmpeg libraries). Every reader holds the clip's :class:`~mmfuse.video.frame_index.FrameIndex`, so
the frame count and timestamps are the same whatever the backend.

:class:`PyAVReader` is exact on every clip: it reaches a frame by decoding from the keyframe before
it (where the index trusts the timestamps) or from the start (elsewhere), and returns the frame
whose timestamp the index gives. decord and torchcodec read frames by their own seek, which
misreads AVI with B-frames and clips with open GOPs (measured in ``benchmarks/video_decode.py``);
their readers refuse such clips (:class:`UntrustedSeek`), and :func:`open_video` hands those, and
clips the backend cannot open, to :class:`PyAVReader`.

All decode on one thread, as each dataloader worker is already one process, and resize in FFmpeg
(``scale=w:h``, aspect ratio not kept: open_clip's ``resize_mode="squash"``).

Shape letters: t frames asked for, h height, w width, n frames of the clip.
"""

from __future__ import annotations

import io
import weakref
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol

import av
import decord
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch import Tensor

from mmfuse.video.frame_index import FrameIndex, VideoDecodeError, demux, probe

Backend = Literal["pyav", "decord", "torchcodec"]

# Debian 12 names of the FFmpeg 5.1 shared libraries torchcodec loads.
FFMPEG_DEBIAN_PACKAGES = (
    "libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4"
)


class ClipReader(Protocol):
    """An opened clip.

    Attributes:
        index: the clip's frame index.
        num_frames: frames in the clip, ``n`` (counted from its packets, not its header).
        timestamps: ``[n]`` float64, when each frame is shown, in seconds from the first frame.
    """

    index: FrameIndex
    num_frames: int
    timestamps: Tensor

    def get_frames(self, indices: Sequence[int]) -> Tensor:
        """Frames ``indices`` (any order, repeats allowed, each in ``[0, n)``) as ``[t, h, w, 3]`` uint8 RGB.

        Raises:
            IndexError: for an index outside ``[0, n)``.
            VideoDecodeError: if decoding fails part-way (e.g. a truncated stream).
        """
        ...


class UntrustedSeek(ValueError):
    """A seeking reader (decord, torchcodec) was given a clip its seek would misread; says why."""


class _IndexedReader:
    """What the readers share: the index, its attributes, and the checks on ``indices``."""

    def __init__(self, index: FrameIndex) -> None:
        self.index = index
        self.num_frames = self.index.num_frames
        self.timestamps = self.index.timestamps

    def _check_seekable(self, backend: str, backend_num_frames: int) -> None:
        """Raise :class:`UntrustedSeek` unless a seek by ``backend`` reads this clip right."""
        if not self.index.seekable:
            raise UntrustedSeek(f"{backend} cannot seek in this clip: {self.index.seek_error}")
        if self.index.open_gop:
            raise UntrustedSeek(f"{backend} cannot seek in this clip: it has open GOPs")
        if backend_num_frames != self.num_frames:
            raise UntrustedSeek(
                f"{backend} counts {backend_num_frames} frames where the clip has {self.num_frames} packets"
            )

    def _wanted(self, indices: Sequence[int]) -> list[int]:
        """The distinct ``indices``, increasing.

        Raises:
            IndexError: if ``indices`` is empty or has one outside ``[0, n)``.
        """
        outside = [i for i in indices if not 0 <= i < self.num_frames]
        if outside or not indices:
            raise IndexError(f"frame indices {list(indices)} asked of a clip of {self.num_frames} frames")
        return sorted(set(indices))


class _LostFrame(Exception):
    """A decoded frame's pts is not where the index puts it: fall back to decoding from the start."""


class PyAVReader(_IndexedReader):
    """A clip demuxed once with PyAV, its packets decoded from a keyframe or from the start.

    ``get_frames`` visits the frames asked for in increasing order. Where the index is seekable, a
    frame past the next keyframe is reached by flushing the decoder and feeding it the packets from
    the keyframe before that frame (a seek without the demuxer, whose own seek in MP4 or AVI goes
    by decode timestamps), and the frame returned is the one whose pts the index gives it; a frame
    with a pts the index does not have makes it decode again from the start, counting frames.
    Elsewhere it counts frames from the start. Frames are converted to RGB at the output size
    (swscale bilinear, one reused context) only when asked for.

    Args:
        data: the encoded container (mp4, mkv, webm, avi, mov ...).
        height: output frame height in pixels.
        width: output frame width in pixels.
        seek: False: always decode from the start (exact on any clip, slower on long ones).

    Raises:
        VideoDecodeError: if the bytes do not open as a video with frames.
    """

    def __init__(self, data: bytes, *, height: int, width: int, seek: bool = True) -> None:
        self._container, self._packets, index = demux(data)
        # PyAV's container and streams form reference cycles, freed only by the cyclic collector:
        # close the container with the reader (else RSS grew 25 MiB over 2,000 clips).
        weakref.finalize(self, self._container.close)
        super().__init__(index)
        self.height, self.width = height, width
        self._codec = self._container.streams.video[0].codec_context
        self._seek = seek and index.seekable
        self._keyframe_packet = {
            index.frame_at_pts(p.pts): n for n, p in enumerate(self._packets) if p.is_keyframe
        }
        self._reformatter = VideoReformatter()

    def get_frames(self, indices: Sequence[int]) -> Tensor:
        """See :meth:`ClipReader.get_frames`."""
        wanted = self._wanted(indices)
        try:
            try:
                frames = self._decode(wanted, seek=self._seek)
            except _LostFrame:
                frames = self._decode(wanted, seek=False)
        except av.FFmpegError as error:
            raise VideoDecodeError(f"PyAV failed on frames {list(indices)}: {error}") from error
        return torch.from_numpy(np.stack([frames[i] for i in indices]))

    def _decoded(self, start: int) -> Iterator[av.VideoFrame]:
        """The frames of a fresh decode from packet ``start`` (file order) to the end."""
        self._codec.flush_buffers()
        for packet in self._packets[start:]:
            yield from self._codec.decode(packet)
        yield from self._codec.decode(None)

    def _decode(self, wanted: list[int], *, seek: bool) -> dict[int, np.ndarray]:
        """Frames ``wanted`` (increasing) as ``{i: [h, w, 3] uint8}``."""
        out, position, frames = {}, -1, self._decoded(0)  # position: the last frame decoded
        for i in wanted:
            keyframe = self.index.keyframe_before(i)
            if seek and keyframe > position + 1:
                frames = self._decoded(self._keyframe_packet[keyframe])
            for frame in frames:
                position = self.index.frame_at_pts(frame.pts) if seek else position + 1
                if position is None or position > i:
                    raise _LostFrame
                if position == i:
                    rgb = self._reformatter.reformat(
                        frame, width=self.width, height=self.height, format="rgb24"
                    )
                    out[i] = rgb.to_ndarray()
                    break
            else:
                raise VideoDecodeError(f"the clip ended before frame {i} of the {self.num_frames} indexed")
        return out


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


class DecordReader(_IndexedReader):
    """A clip opened with decord's ``VideoReader`` over the bytes.

    Frames are read with ``get_batch`` (decord's seek), so only a seekable clip without open GOPs
    is accepted: in an AVI with B-frames ``get_batch`` and ``skip_frames`` land up to ten frames off,
    and next to an open GOP's keyframe (HEVC CRA, x264 ``open-gop``) up to four.

    Args:
        data: the encoded container (mp4, webm, mkv, avi ...; not AV1, which decord's FFmpeg 4.1
            cannot decode).
        height: output frame height in pixels.
        width: output frame width in pixels; see :func:`decord_supports_width`.
        index: the clip's :class:`FrameIndex`; None: :func:`probe` it.
        seek_after_read: call ``seek(0)`` after each ``get_batch``, the workaround reported for
            decord's native memory growth (dmlc/decord#208, #323); ``benchmarks/video_decode.py``
            measures RSS with and without it.

    Raises:
        ValueError: if decord cannot resize to ``width``.
        VideoDecodeError: if the bytes do not open as a video with frames.
        UntrustedSeek: if the index is not seekable, has open GOPs, or decord counts other frames.
    """

    def __init__(
        self,
        data: bytes,
        *,
        height: int,
        width: int,
        index: FrameIndex | None = None,
        seek_after_read: bool = True,
    ) -> None:
        if not decord_supports_width(width):
            raise ValueError(
                f"decord 0.6 cannot output frames {width} pixels wide (a stride bug); choose another width"
            )
        super().__init__(index if index is not None else probe(data))
        try:
            self._reader = decord.VideoReader(io.BytesIO(data), width=width, height=height, num_threads=1)
        except (decord.DECORDError, RuntimeError) as error:  # decord re-raises open errors as RuntimeError
            raise VideoDecodeError(f"decord cannot open the clip ({len(data)} bytes): {error}") from error
        self._check_seekable("decord", len(self._reader))
        self._seek_after_read = seek_after_read

    def get_frames(self, indices: Sequence[int]) -> Tensor:
        """See :meth:`ClipReader.get_frames`."""
        self._wanted(indices)
        try:
            frames = self._reader.get_batch(list(indices)).asnumpy()
            if self._seek_after_read:
                self._reader.seek(0)
        except decord.DECORDError as error:
            raise VideoDecodeError(f"decord failed on frames {list(indices)}: {error}") from error
        return torch.from_numpy(frames)


class TorchCodecReader(_IndexedReader):
    """A clip opened with torchcodec's ``VideoDecoder`` (exact seek mode) over the bytes.

    Frames are read with ``get_frames_at`` (torchcodec's seek), so only a seekable clip without
    open GOPs is accepted: in an AVI with B-frames it returns each frame's predecessor and cannot
    decode the last frame at all, even from the start; in an H.264 clip with open GOPs about one
    batch in ten fails ("no more frames left to decode").

    Args:
        data: the encoded container.
        height: output frame height in pixels.
        width: output frame width in pixels.
        index: the clip's :class:`FrameIndex`; None: :func:`probe` it.

    Raises:
        ImportError: if torchcodec is not installed.
        RuntimeError: if the system FFmpeg libraries are missing; names the Debian packages.
        VideoDecodeError: if the bytes do not open as a video with frames.
        UntrustedSeek: if the index is not seekable, has open GOPs, or torchcodec counts other frames.
    """

    def __init__(self, data: bytes, *, height: int, width: int, index: FrameIndex | None = None) -> None:
        import torchcodec  # optional backend: imported only when chosen

        if torchcodec.ffmpeg_major_version is None:
            raise RuntimeError(
                "torchcodec found no FFmpeg shared libraries; on Debian 12 install them with "
                f"`apt-get install {FFMPEG_DEBIAN_PACKAGES}`, or use backend='pyav'"
            )
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        super().__init__(index if index is not None else probe(data))
        try:
            self._decoder = VideoDecoder(
                data, dimension_order="NHWC", num_ffmpeg_threads=1, transforms=[Resize(size=(height, width))]
            )
        except (RuntimeError, ValueError) as error:
            raise VideoDecodeError(f"torchcodec cannot open the clip ({len(data)} bytes): {error}") from error
        self._check_seekable("torchcodec", len(self._decoder))

    def get_frames(self, indices: Sequence[int]) -> Tensor:
        """See :meth:`ClipReader.get_frames`."""
        self._wanted(indices)
        try:
            return self._decoder.get_frames_at(list(indices)).data
        except RuntimeError as error:
            raise VideoDecodeError(f"torchcodec failed on frames {list(indices)}: {error}") from error


READERS = {"pyav": PyAVReader, "decord": DecordReader, "torchcodec": TorchCodecReader}


def open_video(data: bytes, *, height: int, width: int, backend: Backend = "pyav") -> ClipReader:
    """Open ``data`` with the named backend's reader, or with PyAV's where that one refuses the clip
    (:class:`UntrustedSeek`) or cannot open it (a codec it lacks; a corrupt clip then fails in PyAV).

    Raises:
        ValueError: for an unknown backend, or a width decord cannot output.
        VideoDecodeError: if the bytes are not a decodable video.
        RuntimeError: for torchcodec without the system FFmpeg libraries.
    """
    if backend == "pyav":
        return PyAVReader(data, height=height, width=width)
    if backend not in READERS:
        raise ValueError(f"unknown video backend {backend!r}; expected one of {sorted(READERS)}")
    try:
        return READERS[backend](data, height=height, width=width, index=probe(data))
    except (UntrustedSeek, VideoDecodeError):
        return PyAVReader(data, height=height, width=width)


__all__ = [
    "FFMPEG_DEBIAN_PACKAGES",
    "READERS",
    "Backend",
    "ClipReader",
    "DecordReader",
    "PyAVReader",
    "TorchCodecReader",
    "UntrustedSeek",
    "VideoDecodeError",
    "decord_supports_width",
    "open_video",
]
