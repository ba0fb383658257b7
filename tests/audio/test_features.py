import numpy as np
import pytest
import torch
from audio_bytes import sine
from transformers import WhisperFeatureExtractor

from mmfuse.audio import LogMelSpectrogram, SpecAugment


def test_shape_is_mels_by_samples_over_hop():
    mel = LogMelSpectrogram()
    assert mel(torch.zeros(24000)).shape == (80, 150)
    assert mel(torch.zeros(3, 1000)).shape == (3, 80, 6)  # 1000 // 160
    assert LogMelSpectrogram(n_mels=64, hop_length=320)(torch.zeros(16000)).shape == (64, 50)


def test_silence_is_the_floor_value():
    # log10 floor 1e-10 -> -10 everywhere; clip max - 8 = -18 changes nothing; (-10 + 4) / 4 = -1.5
    features = LogMelSpectrogram()(torch.zeros(1600))
    torch.testing.assert_close(features, torch.full((80, 10), -1.5))


def test_matches_whisper_feature_extractor_on_a_fixed_input():
    rng = np.random.default_rng(0)
    samples = sine(440.0, 1.0, 16000) + 0.05 * rng.standard_normal(16000).astype(np.float32)
    reference = WhisperFeatureExtractor()._np_extract_fbank_features(samples[None], "cpu")[0]
    ours = LogMelSpectrogram()(torch.from_numpy(samples))
    assert ours.shape == reference.shape == (80, 100)
    torch.testing.assert_close(ours, torch.from_numpy(reference).float(), rtol=0, atol=1e-4)


def test_each_clip_in_a_batch_is_normalised_by_its_own_max():
    loud, quiet = torch.from_numpy(sine(440.0, 0.2, 16000)), torch.from_numpy(sine(440.0, 0.2, 16000, 0.01))
    mel = LogMelSpectrogram()
    batch = mel(torch.stack([loud, quiet]))
    torch.testing.assert_close(batch[0], mel(loud))
    torch.testing.assert_close(batch[1], mel(quiet))


@pytest.mark.parametrize("num_valid,expected", [(0, 0), (1, 1), (160, 1), (161, 2), (1000, 7), (2400, 15)])
def test_frame_mask_marks_frames_centred_on_real_samples(num_valid, expected):
    mask = LogMelSpectrogram().frame_mask(num_samples=2400, num_valid=num_valid)
    assert mask.dtype == torch.bool and mask.shape == (15,)
    assert mask.tolist() == [True] * expected + [False] * (15 - expected)


def contiguous_width(flags: torch.Tensor) -> int:
    """Number of True flags, asserting they form one run."""
    idx = flags.nonzero().flatten().tolist()
    if idx:
        assert idx == list(range(idx[0], idx[0] + len(idx)))
    return len(idx)


def test_spec_augment_zeroes_one_band_and_one_frame_span_of_random_width():
    torch.manual_seed(0)
    augment = SpecAugment(freq_mask_param=10, time_mask_param=10, num_freq_masks=1, num_time_masks=1)
    features = torch.rand(80, 100) + 1.0  # no zero before masking
    widths = set()
    for _ in range(20):
        masked = augment(features)
        zero = masked == 0
        zero_bands, zero_frames = zero.all(dim=1), zero.all(dim=0)
        # every zero lies in a fully zeroed band or frame; the rest is unchanged
        assert torch.equal(zero, zero_bands[:, None] | zero_frames[None, :])
        torch.testing.assert_close(masked[~zero], features[~zero])
        widths.add((contiguous_width(zero_bands), contiguous_width(zero_frames)))
    assert all(f < 10 and t < 10 for f, t in widths)  # torchaudio draws widths in [0, param)
    assert len({f for f, _ in widths}) > 3 and len({t for _, t in widths}) > 3
