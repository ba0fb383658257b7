"""Encoded audio written in tests with soundfile (libsndfile): sines in WAV, FLAC and Ogg."""

from __future__ import annotations

import io

import numpy as np
import soundfile


def sine(freq_hz: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    """``[n]`` float32 ``amplitude * sin(2 pi f t)`` with ``n = round(seconds * sample_rate)``."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def encode(samples: np.ndarray, sample_rate: int, fmt: str, subtype: str | None = None) -> bytes:
    """Encode ``[n]`` or ``[n, c]`` samples with soundfile into bytes of container ``fmt``."""
    buf = io.BytesIO()
    soundfile.write(buf, samples, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def encode_m4a(samples: np.ndarray, sample_rate: int) -> bytes:
    """AAC in an MP4 (M4A) container via PyAV's bundled FFmpeg: a format libsndfile cannot read."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()
