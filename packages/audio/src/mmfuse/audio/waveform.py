"""Waveform preparation: mono mix-down, resampling, and fitting to a fixed clip length.

Shape letters: c channels, n samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchaudio.transforms import Resample


def to_mono(waveform: Tensor) -> Tensor:
    """Average the channels: ``[c, n]`` -> ``[n]`` (same dtype)."""
    return waveform.mean(dim=0)


class Resampler:
    """Resample to one target rate, caching one windowed-sinc kernel per source rate.

    ``torchaudio.transforms.Resample`` is ``torchaudio.functional.resample`` with the kernel
    computed once (Hann-windowed sinc, ``lowpass_filter_width=6``, ``rolloff=0.99``).

    Args:
        sample_rate: target rate in Hz.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._kernels: dict[int, Resample] = {}

    def __call__(self, waveform: Tensor, orig_sample_rate: int) -> Tensor:
        """Resample ``[..., n]`` at ``orig_sample_rate`` Hz to ``[..., ceil(n * sample_rate / orig)]``.

        Returns the input unchanged when the rates already match.
        """
        if orig_sample_rate == self.sample_rate:
            return waveform
        if orig_sample_rate not in self._kernels:
            self._kernels[orig_sample_rate] = Resample(orig_sample_rate, self.sample_rate)
        return self._kernels[orig_sample_rate](waveform)


def fit_length(waveform: Tensor, num_samples: int, *, random_crop: bool) -> tuple[Tensor, int]:
    """Crop or zero-pad a mono waveform to exactly ``num_samples``.

    A longer clip is cropped: a uniformly random window when ``random_crop`` (training), else the
    centre window (deterministic evaluation). A shorter clip is zero-padded on the right.

    Args:
        waveform: ``[n]`` float.
        num_samples: target length.
        random_crop: draw the crop offset from torch's global generator (seeded per dataloader
            worker by PyTorch).

    Returns:
        ``(clip, num_valid)``: clip ``[num_samples]`` (same dtype) and how many leading samples of
        it are real audio (``min(n, num_samples)``).
    """
    length = waveform.shape[-1]
    if length >= num_samples:
        excess = length - num_samples
        start = int(torch.randint(excess + 1, ())) if random_crop else excess // 2
        return waveform[start : start + num_samples], num_samples
    return F.pad(waveform, (0, num_samples - length)), length


__all__ = ["Resampler", "fit_length", "to_mono"]
