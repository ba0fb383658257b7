import numpy as np
import pytest
import torch
from audio_bytes import encode, encode_m4a, sine

from mmfuse.audio import FFMPEG_DEBIAN_PACKAGES, AudioDecodeError, decode_audio


def test_float_wav_round_trip_is_exact():
    samples = sine(440.0, 0.25, 16000)
    waveform, sample_rate = decode_audio(encode(samples, 16000, "WAV", "FLOAT"))
    assert sample_rate == 16000
    assert waveform.dtype == torch.float32
    assert waveform.shape == (1, 4000)
    torch.testing.assert_close(waveform[0], torch.from_numpy(samples), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_16_bit_round_trip_is_within_one_quantisation_step(fmt):
    samples = sine(1000.0, 0.1, 8000)
    waveform, sample_rate = decode_audio(encode(samples, 8000, fmt, "PCM_16"))
    assert sample_rate == 8000
    assert np.abs(waveform[0].numpy() - samples).max() <= 1 / 32768


def test_ogg_vorbis_decodes_the_same_sine():
    samples = sine(440.0, 0.5, 16000)
    waveform, _ = decode_audio(encode(samples, 16000, "OGG", "VORBIS"))
    assert waveform.shape == (1, 8000)
    assert np.corrcoef(waveform[0].numpy(), samples)[0, 1] > 0.99  # lossy, but the same tone


def test_stereo_keeps_channels_first():
    left, right = sine(440.0, 0.1, 16000), sine(880.0, 0.1, 16000, amplitude=0.25)
    waveform, _ = decode_audio(encode(np.stack([left, right], axis=1), 16000, "WAV", "FLOAT"))
    assert waveform.shape == (2, 1600)
    torch.testing.assert_close(waveform, torch.from_numpy(np.stack([left, right])), rtol=0, atol=0)


@pytest.mark.parametrize(
    "data",
    [b"", b"RIFF\x00\x00\x00\x00WAVEfmt garbage", b"fLaC" + bytes(200), b"not audio at all" * 20],
    ids=["empty", "corrupt-wav", "corrupt-flac", "garbage"],
)
def test_corrupt_audio_raises_decode_error(data):
    with pytest.raises(AudioDecodeError):
        decode_audio(data)


def test_truncated_flac_raises_decode_error():
    data = encode(sine(440.0, 1.0, 16000), 16000, "FLAC", "PCM_16")
    with pytest.raises(AudioDecodeError):
        decode_audio(data[:40])


def test_zero_sample_file_raises_decode_error():
    with pytest.raises(AudioDecodeError, match="0 samples"):
        decode_audio(encode(np.zeros(0, np.float32), 16000, "WAV", "FLOAT"))


def test_m4a_goes_to_torchcodec_when_ffmpeg_is_installed():
    data = encode_m4a(sine(440.0, 1.0, 16000), 16000)
    try:
        waveform, sample_rate = decode_audio(data)
    except AudioDecodeError as error:
        if "apt-get install" in str(error):
            pytest.skip("system FFmpeg libraries not installed")
        raise
    assert sample_rate == 16000 and waveform.shape[0] == 1
    assert abs(waveform.shape[1] - 16000) <= 2048  # AAC priming / frame padding
    spectrum = torch.fft.rfft(waveform[0, :16000]).abs()
    assert int(spectrum.argmax()) == 440  # 1 Hz bins over one second


def test_missing_ffmpeg_names_the_debian_packages(monkeypatch):
    import torchcodec.decoders

    def no_ffmpeg(data):
        raise RuntimeError("Could not load libtorchcodec. Likely causes: ...")

    monkeypatch.setattr(torchcodec.decoders, "AudioDecoder", no_ffmpeg)
    with pytest.raises(AudioDecodeError, match="apt-get install libavutil57 libavcodec59") as info:
        decode_audio(b"\x00\x00\x00\x20ftypM4A " + bytes(100))  # an M4A header libsndfile rejects
    assert all(package in str(info.value) for package in FFMPEG_DEBIAN_PACKAGES)
