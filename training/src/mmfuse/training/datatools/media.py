"""Per-modality media measures: an exact hash, a perceptual hash and a description.

The one module of the tools that knows each modality; everything else looks functions up here by
modality key. Media are decoded by the training decoders (``mmfuse.vision.decode_image``,
``mmfuse.audio.decode_audio``, ``mmfuse.video.open_video``).

Every item is reduced to grey pictures: the image itself; for audio, its log-mel spectrogram; for
video, 4 frames. Each picture gives two perceptual measures:

* ``imagehash.phash``: the 64-bit DCT perceptual hash (grey 32 x 32, signs of the top-left 8 x 8
  DCT coefficients against their median; Zauner, 2010, "Implementation and Benchmarking of
  Perceptual Image Hash Functions"), compared by Hamming distance. Robust to re-encoding and
  resizing, but coarse: the embedded 8 x 8 digit scans of one class lie 4-10 bits apart;
* an 8 x 8 grey thumbnail (box filter, levels in [0, 1]), compared by root-mean-square
  difference: re-encoded and resized copies of the embedded images stay within 0.035 of the
  original, distinct digits are at least 0.064 apart.

A near duplicate is within both thresholds of its modality (:data:`NEAR`,
:class:`~mmfuse.training.datatools.near.NearIndex`). They were set on the planted faults of
``scripts/plant_faults.py`` (re-encoded, resized copies of the embedded data): every planted near
copy within them, and as few untouched pairs as that allows.
Per modality:

* image: ``decode_image`` (RGB, alpha on white), then the measures above;
* audio: decoded, mixed to mono and resampled to 8 kHz; the exact hash is SHA-256 of that waveform
  quantised to int16 (the same sound in another lossless container hashes the same); the picture
  is its Whisper-style log-mel spectrogram (32 mel bins, 8 ms hop) scaled to [0, 255];
* video: 4 frames picked as ``UniformSampler`` picks them (``floor(i (n - 1) / 3)``, repeating
  frames of shorter clips), hashes concatenated in frame order (256 bits), so a clip played
  backwards is not a duplicate of itself.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import imagehash
import numpy as np
import torch
from PIL import Image

from mmfuse.audio import LogMelSpectrogram, decode_audio
from mmfuse.audio.waveform import Resampler, to_mono
from mmfuse.video import open_video
from mmfuse.vision import decode_image

AUDIO_RATE = 8000  # Hz: telephone band, the lowest rate of the embedded speech
VIDEO_FRAMES = 4
VIDEO_SIDE = 64  # decoded frame side in pixels (decord needs a multiple of 32)


@dataclass(frozen=True)
class Fingerprint:
    """Hashes of one media item.

    Attributes:
        exact: SHA-256 digest of the encoded bytes (of the decoded waveform for audio).
        bits: ``[w] uint64``: the pHash of each picture, 64 bits a word, in picture order.
        thumb: ``[64 w] float32``: the 8 x 8 grey thumbnails, levels in [0, 1].
    """

    exact: bytes
    bits: np.ndarray
    thumb: np.ndarray


def _perceptual(exact: bytes, pictures: list[Image.Image]) -> Fingerprint:
    """The fingerprint of one item seen as ``pictures``."""
    bits = np.array([int(str(imagehash.phash(p)), 16) for p in pictures], dtype=np.uint64)
    thumbs = [np.asarray(p.convert("L").resize((8, 8), Image.BOX), dtype=np.float32) / 255 for p in pictures]
    return Fingerprint(exact, bits, np.concatenate([t.ravel() for t in thumbs]))


def image_fingerprint(data: bytes) -> Fingerprint:
    """Fingerprint of an encoded image; ``exact`` hashes its bytes."""
    return _perceptual(hashlib.sha256(data).digest(), [decode_image(data)])


_resample = Resampler(AUDIO_RATE)
_log_mel = LogMelSpectrogram(AUDIO_RATE, n_fft=256, hop_length=64, n_mels=32)


def audio_fingerprint(data: bytes) -> Fingerprint:
    """Hashes of the decoded waveform resampled to 8 kHz (see the module docstring)."""
    waveform, sample_rate = decode_audio(data)  # [c, n]
    mono = _resample(to_mono(waveform), sample_rate)  # [n'] at 8 kHz
    pcm = (mono.clamp(-1, 1) * 32767).round().to(torch.int16)
    padded = torch.nn.functional.pad(mono, (0, max(0, 2 * 256 - mono.numel())))  # >= 2 STFT windows
    with torch.no_grad():
        features = _log_mel(padded)  # [32, frames]
    scaled = (features - features.min()) / (features.max() - features.min()).clamp_min(1e-6)
    image = Image.fromarray((scaled.flip(0) * 255).round().to(torch.uint8).numpy())  # low bins at the bottom
    return _perceptual(hashlib.sha256(pcm.numpy().tobytes()).digest(), [image])


def video_fingerprint(data: bytes) -> Fingerprint:
    """Fingerprint of 4 uniformly spaced frames; ``exact`` hashes the clip's bytes."""
    reader = open_video(data, height=VIDEO_SIDE, width=VIDEO_SIDE)
    n = reader.num_frames
    frames = reader.get_frames([i * (n - 1) // (VIDEO_FRAMES - 1) for i in range(VIDEO_FRAMES)])
    return _perceptual(hashlib.sha256(data).digest(), [Image.fromarray(f) for f in frames.numpy()])


def describe_image(data: bytes) -> dict[str, float]:
    """``{"width", "height"}`` in pixels, from the image header (no full decode)."""
    width, height = Image.open(io.BytesIO(data)).size
    return {"width": width, "height": height}


def describe_audio(data: bytes) -> dict[str, float]:
    """``{"duration_s", "sample_rate", "channels"}`` of the decoded audio."""
    waveform, sample_rate = decode_audio(data)  # [c, n]
    return {"duration_s": waveform.shape[-1] / sample_rate, "sample_rate": sample_rate,
            "channels": waveform.shape[0]}  # fmt: skip


def describe_video(data: bytes) -> dict[str, float]:
    """``{"frames", "fps", "duration_s"}`` of the clip (frames / average fps)."""
    reader = open_video(data, height=32, width=32)
    fps = float(reader.average_fps)
    return {"frames": reader.num_frames, "fps": fps, "duration_s": reader.num_frames / fps if fps else 0.0}


#: modality -> fingerprint function.
FINGERPRINTS: dict[str, Callable[[bytes], Fingerprint]] = {
    "image": image_fingerprint,
    "audio": audio_fingerprint,
    "video": video_fingerprint,
}

#: modality -> (pHash bits per 64, thumbnail RMS difference) of a near duplicate. A re-encoded,
#: resized picture can move its pHash by 18 bits while its thumbnail stays within 0.01; a spectrogram
#: or a clip's frames keep their pHash closer, and two renderings of one word by two espeak voices
#: lie 0.015-0.04 apart; distinct digit clips (16 px sprites) come within 0.02.
NEAR: dict[str, tuple[int, float]] = {"image": (20, 0.03), "audio": (10, 0.03), "video": (10, 0.01)}

#: modality -> description function.
DESCRIPTIONS: dict[str, Callable[[bytes], dict[str, float]]] = {
    "image": describe_image,
    "audio": describe_audio,
    "video": describe_video,
}

__all__ = [
    "DESCRIPTIONS",
    "FINGERPRINTS",
    "NEAR",
    "Fingerprint",
    "describe_audio",
    "describe_image",
    "describe_video",
]
