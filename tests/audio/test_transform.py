import json
import math

import numpy as np
import open_clip
import pytest
import torch
from audio_bytes import encode, sine
from shards import write_shard

from mmfuse.audio import AudioDecodeError, AudioTransform, LogMelSpectrogram, SpecAugment
from mmfuse.core.data import MediaTextDecoder, ShardedStream


def test_short_stereo_8khz_clip_is_mixed_resampled_padded_and_masked():
    left, right = sine(300.0, 0.5, 8000), sine(300.0, 0.5, 8000, amplitude=0.1)
    data = encode(np.stack([left, right], axis=1), 8000, "FLAC", "PCM_16")
    out = AudioTransform(clip_seconds=1.5)(data, train=False)
    assert out["input_features"].shape == (80, 150) and out["input_features"].dtype == torch.float32
    # 0.5 s at 16 kHz = 8000 real samples -> frames centred on samples 0, 160, ..., 7840 are real
    assert out["feature_attention_mask"].tolist() == [True] * 50 + [False] * 100


def test_equals_the_step_by_step_path():
    from torchaudio.functional import resample

    samples = sine(440.0, 2.0, 22050)
    out = AudioTransform(clip_seconds=1.0)(encode(samples, 22050, "WAV", "FLOAT"), train=False)
    wave = resample(torch.from_numpy(samples), 22050, 16000)  # 32000 samples; the centre second:
    expected = LogMelSpectrogram()(wave[8000:24000])
    torch.testing.assert_close(out["input_features"], expected, rtol=0, atol=1e-3)
    assert bool(out["feature_attention_mask"].all())


def test_eval_is_deterministic_and_train_crops_and_masks_randomly():
    data = encode(sine(440.0, 3.0, 16000) * np.linspace(0, 1, 48000, dtype=np.float32), 16000, "FLAC")
    transform = AudioTransform(clip_seconds=1.0, spec_augment=SpecAugment())
    a, b = transform(data, train=False), transform(data, train=False)
    torch.testing.assert_close(a["input_features"], b["input_features"], rtol=0, atol=0)
    torch.manual_seed(0)
    c, d = transform(data, train=True), transform(data, train=True)
    assert c["input_features"].shape == a["input_features"].shape
    assert not torch.equal(c["input_features"], d["input_features"])
    assert bool((c["input_features"] == 0).all(dim=1).any())  # a zeroed time span


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_resamples_as_if_recorded_at_factor_times_the_rate(factor):
    from torchaudio.functional import resample

    samples = sine(400.0, 1.0, 16000)
    transform = AudioTransform(clip_seconds=2.0, speed_factors=(factor,))
    out = transform(encode(samples, 16000, "WAV", "FLOAT"), train=True)
    faster = resample(torch.from_numpy(samples), round(16000 * factor), 16000)  # 1 / factor seconds
    expected = LogMelSpectrogram()(torch.nn.functional.pad(faster, (0, 32000 - faster.shape[0])))
    torch.testing.assert_close(out["input_features"], expected, rtol=0, atol=1e-3)
    assert int(out["feature_attention_mask"].sum()) == math.ceil(faster.shape[0] / 160)


def test_corrupt_bytes_raise():
    with pytest.raises(AudioDecodeError):
        AudioTransform()(b"definitely not audio" * 10, train=False)


def test_corrupt_sample_in_a_shard_is_skipped_and_counted(tmp_path):
    good = encode(sine(440.0, 0.5, 16000), 16000, "FLAC")
    samples = [
        {"__key__": f"k{i}", "flac": b"fLaC corrupt" if i == 2 else good, "txt": b"the word one",
         "json": json.dumps({"label": "one"}).encode()}
        for i in range(5)
    ]  # fmt: skip
    write_shard(tmp_path / "audio-000000.tar", samples)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=8)
    decode = MediaTextDecoder(AudioTransform(clip_seconds=1.0), tokenizer)
    stream = ShardedStream(
        [str(tmp_path / "audio-000000.tar")], decode, batch_size=8, train=False, shuffle_buffer=0
    )
    (batch,) = list(stream)
    assert batch["__key__"] == ["k0", "k1", "k3", "k4"]
    assert batch["num_skipped"] == 1
    assert batch["input_features"].shape == (4, 80, 100)
    assert batch["feature_attention_mask"].sum(dim=1).tolist() == [50] * 4
