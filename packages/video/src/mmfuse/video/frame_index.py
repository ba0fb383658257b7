"""Where the frames of a clip are: presentation timestamps, keyframes, and whether a seek can be trusted.

:func:`demux` reads the clip's video stream with PyAV without decoding it (a few microseconds
per packet) and returns its packets and their :class:`FrameIndex`; :func:`probe` only the index.
Frame ``i`` of a clip is the ``i``-th frame in presentation order: the frame whose packet has the
``i``-th smallest presentation timestamp (pts), which is also the ``i``-th frame a decoder outputs
when it decodes the stream from the start.

A reader may seek to frame ``i`` by its pts only when the pts are the container's own: every
packet has one, and no two are equal. AVI stores decode order only; with B-frames FFmpeg guesses
the pts from the decode order, and a seek by those guesses lands off by a frame (torchcodec) or by
up to ten (decord, whose index of an AVI also has no timestamps at all; dmlc/decord#91), so the
readers of :mod:`mmfuse.video.decode` decode such a clip from its start instead. An open GOP (frames
decoded after a keyframe but shown before it: HEVC's CRA/RASL pictures, x264's ``open-gop``) is
recorded too: decord's seek lands up to four frames off there, and torchcodec fails about one
batch in ten of an H.264 one. The frame count is the number of packets, not the container
header's (which a bad remux or a cut file gets wrong).

Shape letters: n frames of the clip.
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass
from fractions import Fraction

import av
import torch
from torch import Tensor


class VideoDecodeError(ValueError):
    """The bytes are not a decodable video (corrupt, truncated, empty or without frames)."""


@dataclass(frozen=True)
class FrameIndex:
    """The frames of a clip's video stream, in presentation order.

    Attributes:
        pts: presentation timestamp of each frame (increasing, in ``time_base`` units); decode
            timestamps where the container has no pts, frame numbers where it has neither.
        keyframes: the frame numbers (indices into ``pts``) of the keyframes, increasing.
        time_base: seconds per ``pts`` unit.
        seek_error: why a seek by pts cannot be trusted on this clip; None when it can.
        open_gop: whether a packet after a keyframe (in file order) is shown before it.
    """

    pts: tuple[int, ...]
    keyframes: tuple[int, ...]
    time_base: Fraction
    seek_error: str | None = None
    open_gop: bool = False

    @property
    def num_frames(self) -> int:
        """Frames in the clip, ``n``."""
        return len(self.pts)

    @property
    def timestamps(self) -> Tensor:
        """``[n]`` float64: when each frame is shown, in seconds from the first frame."""
        return (torch.tensor(self.pts, dtype=torch.float64) - self.pts[0]) * float(self.time_base)

    @property
    def seekable(self) -> bool:
        """Whether a reader may seek to a frame by its pts."""
        return self.seek_error is None

    def keyframe_before(self, frame: int) -> int:
        """The last keyframe at or before ``frame`` (0 when none is: decode from the start)."""
        position = bisect.bisect_right(self.keyframes, frame)
        return self.keyframes[position - 1] if position else 0

    def frame_at_pts(self, pts: int | None) -> int | None:
        """The frame number whose pts is ``pts``, or None if no frame has it."""
        position = bisect.bisect_left(self.pts, pts) if pts is not None else len(self.pts)
        return position if position < len(self.pts) and self.pts[position] == pts else None


def index_packets(
    packets: list[tuple[int | None, int | None, bool]], time_base: Fraction, container: str
) -> FrameIndex:
    """The :class:`FrameIndex` of a stream's packets.

    Args:
        packets: ``(pts, dts, is_keyframe)`` of every packet with data, in file order.
        time_base: the stream's time base.
        container: FFmpeg's demuxer name (``"avi"``, ``"mov,mp4,m4a,3gp,3g2,mj2"``, ...).

    Raises:
        VideoDecodeError: if there are no packets.
    """
    if not packets:
        raise VideoDecodeError("the video stream has no packets")
    pts = [p[0] for p in packets]
    seek_error = None
    if None in pts:
        seek_error = "packets without presentation timestamps"
        dts = [p[1] for p in packets]
        pts = dts if None not in dts else list(range(len(packets)))
    elif len(set(pts)) < len(pts):
        seek_error = "duplicate presentation timestamps"
    elif container == "avi" and any(p[0] != p[1] for p in packets):
        seek_error = "AVI with B-frames: its presentation timestamps are FFmpeg's guesses from decode order"
    order = sorted(range(len(pts)), key=lambda i: pts[i])
    keyframes = tuple(rank for rank, i in enumerate(order) if packets[i][2])
    return FrameIndex(tuple(pts[i] for i in order), keyframes, time_base, seek_error, _has_open_gop(packets))


def _has_open_gop(packets: list[tuple[int | None, int | None, bool]]) -> bool:
    """Whether a packet shows before the keyframe that precedes it in file order (leading pictures)."""
    keyframe_pts = None
    for pts, _, is_keyframe in packets:
        if is_keyframe:
            keyframe_pts = pts
        elif pts is not None and keyframe_pts is not None and pts < keyframe_pts:
            return True
    return False


def demux(data: bytes) -> tuple[av.container.InputContainer, list[av.Packet], FrameIndex]:
    """Open ``data`` with PyAV and demux its first video stream (one thread; nothing decoded).

    Returns:
        The open container, the stream's packets with data (file order) and their index.

    Raises:
        VideoDecodeError: if the bytes do not open, have no video stream or no packets.
    """
    try:
        container = av.open(io.BytesIO(data))
    except av.FFmpegError as error:
        raise VideoDecodeError(f"PyAV cannot open the clip ({len(data)} bytes): {error}") from error
    try:
        if not container.streams.video:
            raise VideoDecodeError(f"the clip ({len(data)} bytes) has no video stream")
        stream = container.streams.video[0]
        stream.thread_count = 1
        packets = [p for p in container.demux(stream) if p.size]
        fields = [(p.pts, p.dts, p.is_keyframe) for p in packets]
        return container, packets, index_packets(fields, stream.time_base, container.format.name)
    except av.FFmpegError as error:
        container.close()
        raise VideoDecodeError(f"PyAV cannot demux the clip ({len(data)} bytes): {error}") from error
    except VideoDecodeError:
        container.close()
        raise


def probe(data: bytes) -> FrameIndex:
    """The :class:`FrameIndex` of the first video stream of ``data`` (demuxed, not decoded).

    Raises:
        VideoDecodeError: if the bytes do not open, have no video stream or no packets.
    """
    container, _, index = demux(data)
    container.close()
    return index


__all__ = ["FrameIndex", "VideoDecodeError", "demux", "index_packets", "probe"]
