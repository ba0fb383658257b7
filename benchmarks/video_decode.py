"""Frames/s of decord vs torchcodec vs PyAV on the same clips, and decord's memory over many decodes.

Each backend turns the same encoded clips into the frames :class:`mmfuse.video.UniformSampler`
picks, as ``[t, h, w, 3]`` uint8 resized to the output size, in one process on one thread (the
budget of one dataloader worker):

* decord: :class:`mmfuse.video.decode.DecordReader` (``VideoReader`` + ``get_batch``, resize in
  FFmpeg 4.1's scale filter, ``seek(0)`` after each read);
* torchcodec: :class:`mmfuse.video.decode.TorchCodecReader` (``VideoDecoder`` exact seek mode +
  ``get_frames_at``, ``Resize`` decoder transform; needs the system FFmpeg libraries, on Debian 12
  ``apt-get install libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6
  libswresample4``);
* PyAV: decode the stream in order up to the last wanted frame, ``to_ndarray(width=, height=)``
  (swscale) for the wanted ones: the usual way to read a short clip with PyAV.

Two clip sets: the embedded shard clips (32 px, 8 frames: container overhead dominates) and
synthetic camera-sized clips made here with PyAV (320x240, 96 frames at 24 fps, a keyframe every
12, sampled to 8 frames of 224x224).

The memory part decodes ``--leak-decodes`` clips in a fresh process per variant and prints the
resident set size (RSS) as it goes: decord with and without the ``seek(0)`` workaround for the
native growth reported in dmlc/decord#208 / #323, and torchcodec for reference.

Run: ``uv run python benchmarks/video_decode.py`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable

import av
import numpy as np
import torch

from mmfuse.core.data import expand_urls
from mmfuse.video.decode import DecordReader, TorchCodecReader
from mmfuse.video.sampling import UniformSampler

Decode = Callable[[bytes], torch.Tensor]


def read_clips(shards: str, limit: int) -> list[bytes]:
    """The bytes of up to ``limit`` ``.mp4`` members of the shards."""
    clips = []
    for url in expand_urls(shards):
        with tarfile.open(url) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".mp4"):
                    clips.append(tar.extractfile(member).read())
                    if len(clips) == limit:
                        return clips
    return clips


def synthetic_clips(count: int, frames: int = 96, height: int = 240, width: int = 320) -> list[bytes]:
    """H.264 clips of a textured scene panning sideways (keyframe every 12 frames, B-frames on)."""
    rng = np.random.default_rng(0)
    clips = []
    for _ in range(count):
        scene = rng.integers(0, 256, (height, width + 4 * frames, 3), dtype=np.uint8)
        scene = np.repeat(np.repeat(scene[::8, ::8], 8, axis=0), 8, axis=1)[:height]  # 8 px blocks
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=24, options={"g": "12", "crf": "23"})
            stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
            for t in range(frames):
                image = np.ascontiguousarray(scene[:, 4 * t : 4 * t + width])
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        clips.append(buf.getvalue())
    return clips


def decord_decode(sampler: UniformSampler, size: int, seek_after_read: bool = True) -> Decode:
    def run(data: bytes) -> torch.Tensor:
        reader = DecordReader(data, height=size, width=size, seek_after_read=seek_after_read)
        return reader.get_frames(sampler(reader.num_frames, reader.average_fps, train=False))

    return run


def torchcodec_decode(sampler: UniformSampler, size: int) -> Decode:
    def run(data: bytes) -> torch.Tensor:
        reader = TorchCodecReader(data, height=size, width=size)
        return reader.get_frames(sampler(reader.num_frames, reader.average_fps, train=False))

    return run


def pyav_decode(sampler: UniformSampler, size: int) -> Decode:
    def run(data: bytes) -> torch.Tensor:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            indices = sampler(stream.frames, float(stream.average_rate), train=False)
            wanted, frames = set(indices), {}
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24", width=size, height=size)
                if i == indices[-1]:
                    break
        return torch.from_numpy(np.stack([frames[i] for i in indices]))

    return run


def frames_per_second(decode: Decode, clips: list[bytes], repeats: int) -> tuple[float, torch.Tensor]:
    """Sampled frames delivered per second over ``repeats`` passes (after one warm-up pass)."""
    first = [decode(c) for c in clips]
    start = time.perf_counter()
    for _ in range(repeats):
        for clip in clips:
            decode(clip)
    seconds = time.perf_counter() - start
    return sum(f.shape[0] for f in first) * repeats / seconds, torch.stack(first)


def speed(name: str, clips: list[bytes], size: int, repeats: int) -> None:
    sampler = UniformSampler(8)
    backends = {
        "decord": decord_decode(sampler, size),
        "torchcodec": torchcodec_decode(sampler, size),
        "pyav": pyav_decode(sampler, size),
    }
    print(f"\n{name}: {len(clips)} clips x {repeats} passes, 8 frames each at {size}x{size}")
    results = {backend: frames_per_second(decode, clips, repeats) for backend, decode in backends.items()}
    reference = results["decord"][1].float()
    for backend, (fps, frames) in results.items():
        difference = (frames.float() - reference).abs().mean().item()
        ratio = fps / results["decord"][0]
        line = f"  {backend:<11} {fps:9.0f} frames/s   x{ratio:5.2f} vs decord"
        print(f"{line}   mean |pixel - decord's| {difference:5.2f}")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def leak_worker(variant: str, decodes: int) -> None:
    """Runs in a fresh process: decode ``decodes`` clips, print ``step rss_mib`` lines."""
    clips, sampler = synthetic_clips(4), UniformSampler(8)
    decode = {
        "decord": decord_decode(sampler, 224, seek_after_read=False),
        "decord+seek(0)": decord_decode(sampler, 224, seek_after_read=True),
        "torchcodec": torchcodec_decode(sampler, 224),
    }[variant]
    for step in range(decodes + 1):
        decode(clips[step % len(clips)])
        if step % (decodes // 5) == 0:
            print(step, f"{rss_mib():.1f}", flush=True)


def leak(decodes: int) -> None:
    print(
        f"\nRSS (MiB) over {decodes} decodes of 320x240 clips (8 frames -> 224x224), one process per variant"
    )
    for variant in ("decord", "decord+seek(0)", "torchcodec"):
        command = [sys.executable, __file__, "--leak-worker", variant, "--leak-decodes", str(decodes)]
        lines = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split("\n")
        points = [line.split() for line in lines if line.strip()]
        trace = "  ".join(f"{step}:{rss}" for step, rss in points)
        growth = float(points[-1][1]) - float(points[1][1])
        print(f"  {variant:<15} {trace}   growth after step {points[1][0]}: {growth:+.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", default="data/video_text/val-{000000..000001}.tar.gz")
    parser.add_argument("--num-clips", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--leak-decodes", type=int, default=3000)
    parser.add_argument("--leak-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.leak_worker:
        leak_worker(args.leak_worker, args.leak_decodes)
        return
    speed("embedded shard clips (32x32, 8 frames)", read_clips(args.shards, args.num_clips), 32, args.repeats)
    speed("synthetic clips (320x240, 96 frames, GOP 12)", synthetic_clips(12), 224, args.repeats)
    leak(args.leak_decodes)


if __name__ == "__main__":
    main()
