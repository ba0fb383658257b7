"""Clips whose frames carry their own index, in the container / codec pairs real datasets use.

A reader is exact when the frame it returns for index ``i`` is frame ``i`` of the clip in
presentation order. To check that, :func:`index_frames` draws each frame's index as a binary code of
big black and white cells (12 bits and their complements, so a decoded frame reads back as its
index or, if it is a blend, a wrong resize or a repeat of another frame, as the other index or
``-1``); the code survives lossy coding and resizing to a third of the side (96x64 -> 32x32),
where flat grey levels do not (encoders repeat near-identical frames). :func:`encode_clip` writes
the frames with PyAV (its wheel bundles libx264, libx265, libvpx, SVT-AV1 and FFmpeg's MPEG-4
Part 2 and MJPEG encoders) in one of :data:`FORMATS`, optionally at variable frame rate;
:func:`read_indices` reads the codes back.

Shape letters: t frames, h height, w width.
"""

from __future__ import annotations

import io
import struct
import sys
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

ROWS, COLS = 4, 6  # cells of the code; the top half carries the index bits, the bottom half their complement
BITS = ROWS * COLS // 2


@dataclass(frozen=True)
class ClipFormat:
    """A container / codec pair and the encoder options that make it what datasets hold.

    Attributes:
        container: FFmpeg muxer name (``mp4``, ``matroska``, ``webm``, ``avi``).
        codec: PyAV encoder name.
        options: encoder options (e.g. ``{"bf": "0"}`` for no B-frames).
        pix_fmt: the encoder's pixel format.
    """

    container: str
    codec: str
    options: dict[str, str] = field(default_factory=dict)
    pix_fmt: str = "yuv420p"


# gop 12 everywhere, so reading a frame means seeking to a keyframe and decoding forward.
_X264 = {"g": "12", "crf": "12", "threads": "1"}
_MPEG4 = {"g": "12", "qscale": "2", "threads": "1"}
FORMATS: dict[str, ClipFormat] = {
    "h264-mp4": ClipFormat("mp4", "libx264", _X264 | {"bf": "0"}),
    "h264-bframes-mp4": ClipFormat("mp4", "libx264", _X264 | {"bf": "3"}),
    "h264-mkv": ClipFormat("matroska", "libx264", _X264 | {"bf": "0"}),
    "h264-bframes-mkv": ClipFormat("matroska", "libx264", _X264 | {"bf": "3"}),
    "h264-open-gop-mp4": ClipFormat("mp4", "libx264", _X264 | {"bf": "3", "x264-params": "open-gop=1"}),
    "hevc-mp4": ClipFormat(
        "mp4", "libx265", {"g": "12", "crf": "12", "x265-params": "log-level=none:pools=1"}
    ),
    "vp8-webm": ClipFormat("webm", "libvpx", {"g": "12", "crf": "4", "b": "2M", "threads": "1"}),
    "vp9-webm": ClipFormat("webm", "libvpx-vp9", {"g": "12", "crf": "10", "b": "0", "threads": "1"}),
    "av1-mp4": ClipFormat(
        "mp4", "libsvtav1", {"g": "12", "crf": "4", "preset": "8", "svtav1-params": "lp=1"}
    ),
    "mpeg4-avi": ClipFormat("avi", "mpeg4", _MPEG4 | {"bf": "0"}),
    "mpeg4-bframes-avi": ClipFormat("avi", "mpeg4", _MPEG4 | {"bf": "2"}),
    "mjpeg-avi": ClipFormat("avi", "mjpeg", {"qscale": "2"}, pix_fmt="yuvj420p"),
}


def index_frames(num_frames: int, height: int = 64, width: int = 96) -> np.ndarray:
    """``[t, h, w, 3]`` uint8 RGB frames; frame ``i`` shows ``i`` as a black/white cell code.

    Raises:
        ValueError: if ``num_frames`` needs more than 12 bits, or a cell would be under 8 pixels.
    """
    if num_frames > 2**BITS:
        raise ValueError(f"num_frames {num_frames} exceeds the {2**BITS} indices a {BITS}-bit code holds")
    if height < 8 * ROWS or width < 8 * COLS:
        raise ValueError(
            f"frames of {height}x{width} make cells under 8 px; use at least {8 * ROWS}x{8 * COLS}"
        )
    bits = (np.arange(num_frames)[:, None] >> np.arange(BITS)) & 1  # [t, BITS]
    cells = np.concatenate([bits, 1 - bits], axis=1).reshape(num_frames, ROWS, COLS)  # [t, ROWS, COLS]
    rows = np.arange(height) * ROWS // height
    cols = np.arange(width) * COLS // width
    image = cells[:, rows][:, :, cols] * 255  # [t, h, w]
    return np.repeat(image[..., None], 3, axis=-1).astype(np.uint8)


def read_indices(frames: np.ndarray) -> list[int]:
    """The index each decoded ``[t, h, w, 3]`` uint8 frame of :func:`index_frames` shows, or -1.

    Each cell is read at its central half; a cell whose mean is between 64 and 192, or whose bit
    is not the complement of its partner's, makes the frame unreadable (-1).
    """
    t, h, w = frames.shape[:3]
    grey = frames.astype(np.float64).mean(axis=-1)  # [t, h, w]
    means = np.empty((t, ROWS, COLS))
    for r in range(ROWS):
        for c in range(COLS):
            top, bottom = (4 * r + 1) * h // (4 * ROWS), (4 * r + 3) * h // (4 * ROWS)
            left, right = (4 * c + 1) * w // (4 * COLS), (4 * c + 3) * w // (4 * COLS)
            means[:, r, c] = grey[:, top:bottom, left:right].mean(axis=(1, 2))
    cells = means.reshape(t, 2, BITS)  # [t, index bits | complement bits, BITS]
    bits = cells[:, 0] > 128
    readable = (np.abs(means - 128) > 64).reshape(t, -1).all(axis=1) & ((cells[:, 1] > 128) == ~bits).all(
        axis=1
    )
    values = (bits * (1 << np.arange(BITS))).sum(axis=1)
    return np.where(readable, values, -1).tolist()


def encode_clip(
    frames: np.ndarray, clip_format: ClipFormat | str, fps: int = 24, durations: list[int] | None = None
) -> bytes:
    """Encode ``[t, h, w, 3]`` uint8 RGB frames (h, w even) as a clip in ``clip_format``.

    Args:
        frames: the frames, in presentation order.
        clip_format: a :class:`ClipFormat` or a key of :data:`FORMATS`.
        fps: the nominal frame rate (the stream's ``average_rate`` for a constant rate).
        durations: variable frame rate: frame ``i`` is shown for ``durations[i]`` ms (a time base of
            1/1000 s); None: every frame ``1 / fps`` s.

    Raises:
        ValueError: if ``durations`` does not have one entry per frame.
        RuntimeError: for libvpx when decord was imported before PyAV: decord loads its FFmpeg 4.1
            libraries globally (``RTLD_GLOBAL``) and their libvpx 6 then shadows PyAV's, which
            fails to open (decoding is unaffected). Import ``av`` first.
    """
    fmt = FORMATS[clip_format] if isinstance(clip_format, str) else clip_format
    if durations is not None and len(durations) != len(frames):
        raise ValueError(f"durations has {len(durations)} entries for {len(frames)} frames")
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt.container) as container:
        stream = container.add_stream(fmt.codec, rate=fps, options=dict(fmt.options))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = fmt.pix_fmt
        if durations is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        starts = np.cumsum([0, *durations[:-1]]) if durations is not None else range(len(frames))
        for image, pts in zip(frames, starts, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = int(pts)
            if durations is not None:
                frame.time_base = stream.codec_context.time_base
            try:
                container.mux(stream.encode(frame))
            except av.ArgumentError as error:
                if fmt.codec.startswith("libvpx") and "decord" in sys.modules:
                    raise RuntimeError(
                        "libvpx cannot open: import av before decord (see the docstring)"
                    ) from error
                raise
        container.mux(stream.encode(None))
    return buf.getvalue()


def set_avi_frame_count(data: bytes, num_frames: int) -> bytes:
    """An AVI whose headers claim ``num_frames`` frames (``avih.dwTotalFrames``, the video
    ``strh.dwLength``), as a truncated or badly remuxed file does.

    Raises:
        ValueError: if ``data`` is not an AVI with an ``avih`` and a video ``strh``.
    """
    out = bytearray(data)
    avih, vids = out.find(b"avih"), out.find(b"vids")
    if data[:4] != b"RIFF" or avih < 0 or vids < 8 or out[vids - 8 : vids - 4] != b"strh":
        raise ValueError("not an AVI with avih and a video strh header")
    struct.pack_into("<I", out, avih + 8 + 16, num_frames)  # MainAVIHeader.dwTotalFrames
    struct.pack_into("<I", out, vids + 32, num_frames)  # AVIStreamHeader.dwLength
    return bytes(out)


__all__ = ["FORMATS", "ClipFormat", "encode_clip", "index_frames", "read_indices", "set_avi_frame_count"]
