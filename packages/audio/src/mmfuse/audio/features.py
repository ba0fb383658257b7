"""Log-mel features (Whisper's recipe) and SpecAugment masking.

Shape letters: n samples, m mel bins (``n_mels``), f frames.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchaudio.transforms import FrequencyMasking, MelSpectrogram, TimeMasking


class LogMelSpectrogram(nn.Module):
    """Whisper's normalised log-mel spectrogram, computed with ``torchaudio.transforms``.

    Power STFT (periodic Hann window, centred frames with reflect padding) -> Slaney-scale,
    Slaney-normalised mel filter bank from ``f_min`` to ``f_max`` (Whisper: 0 Hz to Nyquist)
    -> ``log10(max(mel, 1e-10))``, floored at the clip's maximum minus 8 (80 dB of dynamic range)
    -> ``(x + 4) / 4``. The last STFT frame
    is dropped, so a clip of n samples gives ``n // hop_length`` frames. This matches
    ``transformers.WhisperFeatureExtractor`` (Radford et al., 2022, "Robust Speech Recognition via
    Large-Scale Weak Supervision", section 2.2) on the same samples.

    Args:
        sample_rate: input rate in Hz.
        n_fft: STFT window and FFT size in samples (400 = 25 ms at 16 kHz).
        hop_length: frame step in samples (160 = 10 ms at 16 kHz).
        n_mels: mel bins.
        f_min: lowest filter edge in Hz.
        f_max: highest filter edge in Hz; None = Nyquist (``sample_rate / 2``).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        n_mels: int = 80,
        f_min: float = 0.0,
        f_max: float | None = None,
    ):
        super().__init__()
        self.hop_length = hop_length
        self.mel = MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
            power=2.0,
            norm="slaney",
            mel_scale="slaney",
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames for a clip of ``num_samples`` samples."""
        return num_samples // self.hop_length

    def frame_mask(self, num_samples: int, num_valid: int) -> Tensor:
        """Which frames of a ``num_samples`` clip are centred on one of its ``num_valid`` real samples.

        Frame ``i`` is centred on sample ``i * hop_length`` (Whisper's ``attention_mask[::hop_length]``).

        Returns:
            ``[f]`` bool, True for the first ``ceil(num_valid / hop_length)`` frames.
        """
        frames = torch.arange(self.num_frames(num_samples))
        return frames < math.ceil(num_valid / self.hop_length)

    def forward(self, waveform: Tensor) -> Tensor:
        """``[..., n]`` float32 -> ``[..., m, n // hop_length]`` float32, each clip scaled by its own max."""
        log_spec = self.mel(waveform)[..., :-1].clamp_min(1e-10).log10()  # [..., m, f + 1] -> [..., m, f]
        clip_max = log_spec.amax(dim=(-2, -1), keepdim=True)  # [..., 1, 1]
        return (torch.maximum(log_spec, clip_max - 8.0) + 4.0) / 4.0


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al., 2019, "SpecAugment", section 2; no time warping).

    Applies ``num_freq_masks`` masks of up to ``freq_mask_param`` consecutive mel bins and
    ``num_time_masks`` masks of up to ``time_mask_param`` consecutive frames (at most
    ``max_time_fraction`` of the frames each), each width drawn uniformly from torch's global
    generator; masked values are set to 0 (the normalised features' mid-level). Use it in training
    only.

    Args:
        freq_mask_param: widest frequency mask, in mel bins (``F`` in the paper).
        time_mask_param: widest time mask, in frames (``T`` in the paper).
        num_freq_masks: frequency masks per clip (``m_F``).
        num_time_masks: time masks per clip (``m_T``).
        max_time_fraction: upper bound on one time mask's width as a fraction of the frames (``p``).
    """

    def __init__(
        self,
        freq_mask_param: int = 10,
        time_mask_param: int = 10,
        num_freq_masks: int = 2,
        num_time_masks: int = 2,
        max_time_fraction: float = 0.2,
    ):
        super().__init__()
        self.masks = nn.Sequential(
            *[FrequencyMasking(freq_mask_param) for _ in range(num_freq_masks)],
            *[TimeMasking(time_mask_param, p=max_time_fraction) for _ in range(num_time_masks)],
        )

    def forward(self, features: Tensor) -> Tensor:
        """``[..., m, f]`` -> ``[..., m, f]`` with the masked bins/frames set to 0."""
        return self.masks(features)


__all__ = ["LogMelSpectrogram", "SpecAugment"]
