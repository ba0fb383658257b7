import math

import pytest
import torch
from audio_bytes import sine

from mmfuse.audio.waveform import Resampler, fit_length, to_mono


def test_to_mono_averages_channels():
    stereo = torch.tensor([[1.0, 0.5, -1.0], [0.0, 0.5, 1.0]])
    torch.testing.assert_close(to_mono(stereo), torch.tensor([0.5, 0.5, 0.0]))


def peak_hz(waveform: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(waveform).abs()
    return float(spectrum.argmax()) * sample_rate / waveform.shape[-1]


@pytest.mark.parametrize("orig,target", [(8000, 16000), (44100, 16000), (22050, 16000)])
def test_resample_keeps_the_frequency_and_gives_the_expected_length(orig, target):
    wave = torch.from_numpy(sine(500.0, 1.0, orig))
    out = Resampler(target)(wave, orig)
    assert out.shape == (target,)  # one second at the target rate
    assert peak_hz(wave, orig) == 500.0
    assert peak_hz(out, target) == 500.0  # 1 s of signal: 1 Hz bins


@pytest.mark.parametrize("orig,n,expected", [(8000, 1001, 2002), (44100, 1001, 364), (48000, 7, 3)])
def test_resampled_length_is_the_ceiling_of_the_rate_ratio(orig, n, expected):
    assert expected == math.ceil(n * 16000 / orig)
    assert Resampler(16000)(torch.randn(n), orig).shape == (expected,)


def test_resample_at_the_target_rate_is_the_identity():
    wave = torch.randn(100)
    assert Resampler(16000)(wave, 16000) is wave


def test_resample_matches_torchaudio_functional():
    from torchaudio.functional import resample

    wave = torch.randn(2, 4410, generator=torch.Generator().manual_seed(0))
    # the cached kernel is built once in float64 by torchaudio.transforms.Resample: ~1e-5 apart
    torch.testing.assert_close(Resampler(16000)(wave, 44100), resample(wave, 44100, 16000), rtol=0, atol=1e-4)


def test_short_clip_is_zero_padded_with_its_valid_length():
    clip, num_valid = fit_length(torch.arange(1.0, 4.0), 5, random_crop=True)
    torch.testing.assert_close(clip, torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0]))
    assert num_valid == 3


def test_long_clip_eval_crop_is_the_centre():
    clip, num_valid = fit_length(torch.arange(10.0), 4, random_crop=False)
    torch.testing.assert_close(clip, torch.tensor([3.0, 4.0, 5.0, 6.0]))
    assert num_valid == 4


def test_long_clip_train_crop_is_a_random_contiguous_window():
    torch.manual_seed(0)
    starts = set()
    for _ in range(50):
        clip, num_valid = fit_length(torch.arange(10.0), 4, random_crop=True)
        start = int(clip[0])
        torch.testing.assert_close(clip, torch.arange(start, start + 4.0))
        assert num_valid == 4
        starts.add(start)
    assert starts == set(range(7))  # every offset 0..6 is drawn
