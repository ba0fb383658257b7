"""Clips/s of mmfuse's audio path vs the naive ``torchaudio.load`` + ``MelSpectrogram`` path.

Both paths turn the same encoded clips (read from webdataset shards) into fixed-length log-mels
of the same shape, in one process on one thread: the budget of one dataloader worker.

* ours: :class:`mmfuse.audio.AudioTransform` (eval mode): soundfile decode at the stored rate,
  mono mix-down, resampling with a cached kernel, centre crop / pad, Whisper log-mel.
* naive: ``torchaudio.load`` (torchaudio 2.11 delegates to torchcodec/FFmpeg, which decodes Opus
  at 48 kHz), ``torchaudio.functional.resample`` (kernel rebuilt per call), the same crop / pad,
  one ``MelSpectrogram`` built once, ``log10``.

The naive path needs the system FFmpeg libraries (Debian 12:
``apt-get install libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6
libswresample4``).

Run: ``uv run python benchmarks/audio_pipeline.py`` (defaults to the embedded audio shards).
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchaudio
from torchaudio.transforms import MelSpectrogram

from mmfuse.audio import AudioTransform
from mmfuse.core.data import expand_urls

SAMPLE_RATE, N_FFT, HOP, N_MELS = 16000, 400, 160, 80


def read_clips(shards: str, extensions: tuple[str, ...], limit: int) -> list[bytes]:
    """The bytes of up to ``limit`` tar members whose extension is in ``extensions``."""
    clips = []
    for url in expand_urls(shards):
        with tarfile.open(url) as tar:
            for member in tar:
                if member.isfile() and member.name.rpartition(".")[2] in extensions:
                    clips.append(tar.extractfile(member).read())
                    if len(clips) == limit:
                        return clips
    return clips


def naive_path(clip_seconds: float) -> Callable[[bytes], torch.Tensor]:
    """``bytes -> [n_mels, frames]`` log-mel the way a first script writes it."""
    mel = MelSpectrogram(SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
    num_samples = round(clip_seconds * SAMPLE_RATE)

    def run(data: bytes) -> torch.Tensor:
        waveform, sample_rate = torchaudio.load(io.BytesIO(data))
        waveform = torchaudio.functional.resample(waveform.mean(dim=0), sample_rate, SAMPLE_RATE)
        excess = waveform.shape[-1] - num_samples
        waveform = (
            waveform[excess // 2 : excess // 2 + num_samples] if excess > 0 else F.pad(waveform, (0, -excess))
        )
        return mel(waveform)[:, :-1].clamp_min(1e-10).log10()

    return run


def ours_path(clip_seconds: float) -> Callable[[bytes], torch.Tensor]:
    """``bytes -> [n_mels, frames]`` through :class:`mmfuse.audio.AudioTransform`."""
    transform = AudioTransform(SAMPLE_RATE, clip_seconds, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
    return lambda data: transform(data, train=False)["input_features"]


def seconds_per_pass(run: Callable[[bytes], torch.Tensor], clips: list[bytes]) -> float:
    """Wall-clock seconds of one pass of ``run`` over ``clips``."""
    start = time.perf_counter()
    for data in clips:
        run(data)
    return time.perf_counter() - start


def best_clips_per_second(paths: dict[str, Callable], clips: list[bytes], repeats: int) -> dict[str, float]:
    """Best of ``repeats`` passes per path, the paths' passes interleaved so that load from other
    processes on a shared machine slows both alike; one untimed warm-up clip per path first."""
    best = dict.fromkeys(paths, float("inf"))
    for run in paths.values():
        run(clips[0])
    for _ in range(repeats):
        for name, run in paths.items():
            best[name] = min(best[name], seconds_per_pass(run, clips))
    return {name: len(clips) / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="data/audio_text/val-{000000..000001}.tar.gz")
    parser.add_argument("--clips", type=int, default=300, help="clips per pass")
    parser.add_argument("--clip-seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one dataloader worker

    clips = read_clips(args.shards, AudioTransform.extensions, args.clips)
    ours, naive = ours_path(args.clip_seconds), naive_path(args.clip_seconds)
    assert ours(clips[0]).shape == naive(clips[0]).shape, "the two paths must produce the same shape"
    rate = best_clips_per_second({"ours": ours, "naive": naive}, clips, args.repeats)
    setup = f"{args.clip_seconds} s log-mels, 1 thread, best of {args.repeats} interleaved passes"
    print(f"{len(clips)} clips from {args.shards}, {setup}")
    print(f"ours  (soundfile + cached resample + Whisper log-mel): {rate['ours']:8.1f} clips/s")
    print(f"naive (torchaudio.load + resample + MelSpectrogram):   {rate['naive']:8.1f} clips/s")
    print(f"ratio ours / naive: {rate['ours'] / rate['naive']:.2f}x")


if __name__ == "__main__":
    main()
