"""Decode encoded audio bytes into a float waveform.

soundfile (whose wheel bundles libsndfile 1.2: WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, ...) reads
first; anything it rejects goes to torchcodec's ``AudioDecoder`` (FFmpeg: M4A/AAC, WebM, ...),
which needs the system FFmpeg libraries at run time.

Shape letters: c channels, n samples.
"""

from __future__ import annotations

import io

import soundfile
import torch
from torch import Tensor

#: Debian 12 / Ubuntu packages with the FFmpeg shared libraries torchcodec loads.
FFMPEG_DEBIAN_PACKAGES = (
    "libavutil57",
    "libavcodec59",
    "libavformat59",
    "libavdevice59",
    "libavfilter8",
    "libswscale6",
    "libswresample4",
)


class AudioDecodeError(ValueError):
    """Raised when bytes are empty, corrupt, or in a format no available decoder reads."""


def decode_audio(data: bytes) -> tuple[Tensor, int]:
    """Decode one encoded audio file.

    Args:
        data: the file's bytes (any container soundfile or FFmpeg reads; the format is sniffed
            from the content, not from a file name).

    Returns:
        ``(waveform, sample_rate)``: waveform ``[c, n]`` float32 in [-1, 1] (integer PCM scaled
        as soundfile and FFmpeg do), sample rate in Hz.

    Raises:
        AudioDecodeError: if ``data`` is empty, if neither decoder can read it (the message gives
            both decoders' errors), or if it decodes to zero samples. When torchcodec cannot load
            FFmpeg, the message names the Debian packages to install.
    """
    if not data:
        raise AudioDecodeError("empty audio file (0 bytes)")
    try:
        samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        waveform = torch.from_numpy(samples.T.copy())  # [n, c] -> [c, n]
    except soundfile.LibsndfileError as sf_error:
        waveform, sample_rate = _decode_with_torchcodec(data, soundfile_error=sf_error)
    if waveform.shape[-1] == 0:
        raise AudioDecodeError(f"audio decodes to 0 samples ({len(data)} bytes)")
    return waveform, int(sample_rate)


def _decode_with_torchcodec(data: bytes, *, soundfile_error: Exception) -> tuple[Tensor, int]:
    """Decode with torchcodec's FFmpeg-backed ``AudioDecoder`` (imported lazily).

    Raises:
        AudioDecodeError: if FFmpeg cannot be loaded (naming the packages to install) or cannot
            decode ``data``.
    """
    from torchcodec.decoders import AudioDecoder

    try:
        samples = AudioDecoder(data).get_all_samples()
    except RuntimeError as codec_error:
        # torchcodec 0.17 raises this RuntimeError when none of its FFmpeg 4-9 builds can load.
        if "Could not load libtorchcodec" in str(codec_error):
            raise AudioDecodeError(
                f"soundfile cannot decode these {len(data)} bytes ({soundfile_error}); other formats "
                "are decoded by torchcodec, which needs the system FFmpeg libraries: "
                f"`apt-get install {' '.join(FFMPEG_DEBIAN_PACKAGES)}`"
            ) from None
        raise AudioDecodeError(
            f"cannot decode {len(data)} bytes: soundfile: {soundfile_error}; torchcodec: {codec_error}"
        ) from codec_error
    return samples.data.to(torch.float32), samples.sample_rate


__all__ = ["FFMPEG_DEBIAN_PACKAGES", "AudioDecodeError", "decode_audio"]
