"""mmfuse.audio: audio decoding, log-mel features and the audio tower.

``AudioTransform`` turns encoded audio bytes into ``input_features`` ``[n_mels, frames]`` and
``feature_attention_mask`` ``[frames]``; ``AudioEncoder`` maps them to token states and a pooled
embedding.
"""

from mmfuse.audio.decode import FFMPEG_DEBIAN_PACKAGES, AudioDecodeError, decode_audio
from mmfuse.audio.encoder import AudioEncoder
from mmfuse.audio.features import LogMelSpectrogram, SpecAugment
from mmfuse.audio.transform import AudioTransform

__all__ = [
    "FFMPEG_DEBIAN_PACKAGES",
    "AudioDecodeError",
    "AudioEncoder",
    "AudioTransform",
    "LogMelSpectrogram",
    "SpecAugment",
    "decode_audio",
]
