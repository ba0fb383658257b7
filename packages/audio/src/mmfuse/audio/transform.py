"""The audio media transform: encoded bytes -> fixed-shape log-mel features and a frame mask."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmfuse.audio.decode import decode_audio
from mmfuse.audio.features import LogMelSpectrogram, SpecAugment
from mmfuse.audio.waveform import Resampler, fit_length, to_mono


class AudioTransform:
    """Decode, mix down, resample, fit to the clip length, and compute Whisper-style log-mels.

    A media transform for ``mmfuse.core.data``: runs in dataloader workers, returns fixed-shape
    tensors so default collation stacks them, and raises on undecodable input (the pipeline
    skips and counts such samples).

    Args:
        sample_rate: model rate in Hz; every clip is resampled to it.
        clip_seconds: clip length; longer audio is cropped (random window in training, centre
            window otherwise), shorter audio zero-padded and masked.
        n_fft: STFT size in samples.
        hop_length: frame step in samples.
        n_mels: mel bins.
        f_min: lowest mel filter edge in Hz.
        f_max: highest mel filter edge in Hz; None = Nyquist.
        speed_factors: speed perturbation in training (Ko et al., 2015, "Audio Augmentation for
            Speech Recognition", section 2: 0.9, 1.0 and 1.1): each clip is played at a factor
            drawn uniformly from these, i.e. resampled as if recorded at ``factor`` times its
            rate, which scales its duration by ``1 / factor`` and its pitch and formants by
            ``factor``. Empty: no perturbation.
        spec_augment: masking applied in training only; None disables it.
    """

    #: tar member extensions decoded, in preference order.
    extensions: tuple[str, ...] = ("flac", "ogg", "opus", "wav", "mp3", "m4a")

    def __init__(
        self,
        sample_rate: int = 16000,
        clip_seconds: float = 1.5,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
        speed_factors: tuple[float, ...] = (),
        spec_augment: SpecAugment | None = None,
    ):
        self.num_samples = math.ceil(clip_seconds * sample_rate)
        self.resample = Resampler(sample_rate)
        self.log_mel = LogMelSpectrogram(sample_rate, n_fft, hop_length, n_mels, f_min=f_min, f_max=f_max)
        self.speed_factors = speed_factors
        self.spec_augment = spec_augment

    def __call__(self, data: bytes, *, train: bool) -> dict[str, Tensor]:
        """Turn one encoded audio file into model inputs.

        Args:
            data: encoded audio bytes (see :func:`mmfuse.audio.decode.decode_audio`).
            train: speed perturbation, random crop and SpecAugment when True; centre crop and
                no augmentation when False.

        Returns:
            ``input_features``: ``[n_mels, f]`` float32 with ``f = num_samples // hop_length``;
            ``feature_attention_mask``: ``[f]`` bool, True on frames of real (unpadded) audio.

        Raises:
            AudioDecodeError: on empty, corrupt or unsupported audio.
        """
        waveform, sample_rate = decode_audio(data)  # [c, n]
        if train and self.speed_factors:
            factor = self.speed_factors[int(torch.randint(len(self.speed_factors), ()))]
            sample_rate = round(sample_rate * factor)  # one kernel per (source rate, factor), cached
        waveform = self.resample(to_mono(waveform), sample_rate)  # [c, n] -> [n'] at the model rate
        clip, num_valid = fit_length(waveform, self.num_samples, random_crop=train)
        features = self.log_mel(clip)  # [num_samples] -> [n_mels, f]
        if train and self.spec_augment is not None:
            features = self.spec_augment(features)
        return {
            "input_features": features,
            "feature_attention_mask": self.log_mel.frame_mask(self.num_samples, num_valid),
        }


__all__ = ["AudioTransform"]
