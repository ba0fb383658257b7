"""Frames right and frames/s of decord vs torchcodec vs PyAV per container, and decord's memory.

Every row is a set of clips whose frames carry their index (:mod:`mmfuse.video.conformance`: a
black/white cell code over the top-left of a textured scene that pans 2 px per frame, so motion
search and residuals cost what camera footage costs), 320x240 at 25 fps, decoded to 224x224. Each
clip is asked for the 8 frames :class:`~mmfuse.video.UniformSampler` picks and for 8 random frames
in random order with a repeat (:class:`~mmfuse.video.SegmentSampler` in training, shuffled). A
frame is right when the code it shows is the index asked for.

Columns, one process, one thread (the budget of one dataloader worker):

* ``decord``, ``torchcodec``, ``pyav``: :func:`mmfuse.video.open_video` with that backend, i.e. the
  backend where its seek is trusted and PyAV's decode from the start elsewhere (``*``: routed);
* ``decord seek``, ``torchcodec seek``: the backend's own seek with nothing routed (``get_batch``;
  ``get_frames_at`` in exact mode), the readers before issue 13: what exactness costs is the
  difference on the rows where they are wrong;
* ``pyav from start``: PyAV decoding every clip from the start (no seek): what the index-based
  seek buys, which grows with the clip (the 60 s row).

Rows: every :data:`~mmfuse.video.conformance.FORMATS` pair (10 s clips, a keyframe every 2 s),
a variable-frame-rate phone-style clip (H.264 with B-frames in MP4, frames shown 20-100 ms), an AVI
whose headers claim twice its frames, a 60 s clip, and the embedded shard clips (32x32, 8 frames,
no code: a frame is right when it is nearest, in pixels, to the asked frame of a decode from the
start). A cell reads ``right/asked frames/s``, or the error the backend raised (a markdown table).

The memory part decodes ``--leak-decodes`` clips in a fresh process per variant and prints the
resident set size (RSS) as it goes: decord with and without the ``seek(0)`` workaround for the
native growth reported in dmlc/decord#208 / #323, torchcodec and PyAV.

Run: ``uv run python benchmarks/video_decode.py`` (6.5 minutes on 2 busy cores). The FFmpeg
warnings on stderr ("mmco: unref short failure") come from the raw seeks into the open-GOP clip.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable

import av  # noqa: F401 - before decord, see mmfuse.video.conformance.encode_clip
import decord
import numpy as np
import torch

from mmfuse.core.data import expand_urls
from mmfuse.video import SegmentSampler, UniformSampler, open_video
from mmfuse.video.conformance import FORMATS, encode_clip, index_frames, read_indices, set_avi_frame_count
from mmfuse.video.decode import DecordReader, PyAVReader
from mmfuse.video.frame_index import probe

SIZE, FPS, HEIGHT, WIDTH = 224, 25, 240, 320
CODE_HEIGHT, CODE_WIDTH = 64, 96  # the index code's corner of each frame
Decode = Callable[[bytes, list[int]], torch.Tensor]


def scene_frames(num_frames: int, seed: int) -> np.ndarray:
    """``[t, 240, 320, 3]`` uint8: 8 px random blocks panning 2 px per frame, the index code top-left."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (HEIGHT // 8, (WIDTH + 2 * num_frames) // 8 + 1, 3), dtype=np.uint8)
    scene = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)
    frames = np.stack([scene[:, 2 * t : 2 * t + WIDTH] for t in range(num_frames)])
    frames[:, :CODE_HEIGHT, :CODE_WIDTH] = index_frames(num_frames, CODE_HEIGHT, CODE_WIDTH)
    return frames


def code_rows(clips: int, seconds: int) -> dict[str, list[bytes]]:
    """Each row's clips (``clips`` each, ``seconds`` long, a keyframe every 2 s)."""
    n = FPS * seconds
    frames = [scene_frames(n, seed) for seed in range(clips)]

    def encode(name: str, **kwargs) -> list[bytes]:
        fmt = FORMATS[name]
        options = fmt.options | ({"g": str(2 * FPS)} if "g" in fmt.options else {})
        return [encode_clip(f, dataclasses.replace(fmt, options=options), fps=FPS, **kwargs) for f in frames]

    rows = {name: encode(name) for name in FORMATS}
    durations = np.random.default_rng(0).choice([20, 33, 50, 100], size=n).tolist()
    rows["vfr-h264-bframes-mp4"] = encode("h264-bframes-mp4", durations=durations)
    rows["avi-header-2x-frames"] = [set_avi_frame_count(c, 2 * n) for c in rows["mpeg4-avi"]]
    return rows


def long_row(seconds: int) -> dict[str, list[bytes]]:
    frames = scene_frames(FPS * seconds, 0)
    return {f"h264-mp4 {seconds} s": [encode_clip(frames, "h264-mp4", fps=FPS)]}


def read_shard_clips(shards: str, limit: int) -> list[bytes]:
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


def asked_frames(data: bytes, seed: int) -> list[list[int]]:
    """The uniform 8 and a shuffled, repeating random 8 of a clip."""
    timestamps = probe(data).timestamps
    generator = torch.Generator().manual_seed(seed)
    random = SegmentSampler(8)(timestamps, train=True, generator=generator)
    random = [random[i] for i in torch.randperm(len(random), generator=generator)] + random[:1]
    return [UniformSampler(8)(timestamps, train=False), random]


def coded_indices(frames: torch.Tensor) -> list[int]:
    """The index each ``[t, 224, 224, 3]`` frame's code shows."""
    corner = frames[:, : CODE_HEIGHT * SIZE // HEIGHT, : CODE_WIDTH * SIZE // WIDTH].numpy()
    return read_indices(corner)


def nearest_indices(frames: torch.Tensor, reference: torch.Tensor) -> list[int]:
    """For each frame, the index of the nearest (mean absolute difference) reference frame."""
    distance = (frames[:, None].float() - reference[None].float()).abs().mean(dim=(2, 3, 4))  # [t, n]
    return distance.argmin(dim=1).tolist()


def backend(name: str, size: int) -> Decode:
    return lambda data, indices: open_video(data, height=size, width=size, backend=name).get_frames(indices)


def decord_seek(size: int) -> Decode:
    """decord's own seek and frame count on every clip (``get_batch``, then ``seek(0)``)."""

    def run(data: bytes, indices: list[int]) -> torch.Tensor:
        reader = decord.VideoReader(io.BytesIO(data), width=size, height=size, num_threads=1)
        frames = reader.get_batch(indices).asnumpy()
        reader.seek(0)
        return torch.from_numpy(frames)

    return run


def torchcodec_seek(size: int) -> Decode:
    """torchcodec's own seek and frame count on every clip (exact mode, ``get_frames_at``)."""
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    def run(data: bytes, indices: list[int]) -> torch.Tensor:
        decoder = VideoDecoder(
            data, dimension_order="NHWC", num_ffmpeg_threads=1, transforms=[Resize(size=(size, size))]
        )
        return decoder.get_frames_at(indices).data

    return run


def from_start(size: int) -> Decode:
    def run(data: bytes, indices: list[int]) -> torch.Tensor:
        return PyAVReader(data, height=size, width=size, seek=False).get_frames(indices)

    return run


def measure(decode: Decode, clips: list[bytes], asks: list[list[list[int]]], check, repeats: int) -> str:
    """``right/asked frames/s`` of ``decode`` over ``clips`` (``check(frames, clip number) -> indices``)."""
    right = asked = 0
    try:
        for number, (clip, clip_asks) in enumerate(zip(clips, asks, strict=True)):
            for indices in clip_asks:
                got = check(decode(clip, indices), number)
                right += sum(g == i for g, i in zip(got, indices, strict=True))
                asked += len(indices)
        start = time.perf_counter()
        for _ in range(repeats):
            for clip, clip_asks in zip(clips, asks, strict=True):
                for indices in clip_asks:
                    decode(clip, indices)
        seconds = time.perf_counter() - start
    except Exception as error:  # a backend that cannot read a row says so in its cell
        return type(error).__name__
    return f"{right}/{asked} {asked * repeats / seconds:5.0f}"


def routed(name: str, clips: list[bytes]) -> bool:
    reader = open_video(clips[0], height=SIZE, width=SIZE, backend=name)
    return name != "pyav" and isinstance(reader, PyAVReader)


def table(rows: dict[str, list[bytes]], size: int, repeats: int, check_factory) -> None:
    import torchcodec

    columns: dict[str, Decode] = {"decord": backend("decord", size), "pyav": backend("pyav", size)}
    seeks: dict[str, Decode] = {"decord seek": decord_seek(size)}
    if torchcodec.ffmpeg_major_version is not None:
        columns["torchcodec"] = backend("torchcodec", size)
        seeks["torchcodec seek"] = torchcodec_seek(size)
    else:
        print("(torchcodec: no system FFmpeg libraries, columns left out)")
    columns = {**columns, **seeks, "pyav from start": from_start(size)}
    print(f"| {'row':<22} |" + "".join(f" {c:>17} |" for c in columns))
    print(f"|{'-' * 24}|" + "".join(f"{'-' * 18}:|" for _ in columns))
    for row, clips in rows.items():
        asks = [asked_frames(c, seed) for seed, c in enumerate(clips)]
        check = check_factory(clips, size)
        cells = []
        for column, decode in columns.items():
            cell = measure(decode, clips, asks, check, repeats)
            if column in ("decord", "torchcodec") and not cell.startswith("error") and routed(column, clips):
                cell += "*"
            cells.append(cell)
        print(f"| {row:<22} |" + "".join(f" {c:>17} |" for c in cells), flush=True)


def coded_check(clips: list[bytes], size: int):
    return lambda frames, number: coded_indices(frames)


def nearest_check(clips: list[bytes], size: int):
    references = [from_start(size)(c, list(range(probe(c).num_frames))) for c in clips]
    return lambda frames, number: nearest_indices(frames, references[number])


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def leak_worker(variant: str, decodes: int) -> None:
    """Runs in a fresh process: decode ``decodes`` clips, print ``step rss_mib`` lines."""
    clips = code_rows(1, 4)["h264-bframes-mp4"] * 4
    indices = [asked_frames(c, 0)[0] for c in clips]
    if variant.startswith("decord"):
        seek_after_read = variant == "decord+seek(0)"

        def decode(data: bytes, wanted: list[int]) -> torch.Tensor:
            return DecordReader(data, height=SIZE, width=SIZE, seek_after_read=seek_after_read).get_frames(
                wanted
            )
    else:
        decode = backend(variant, SIZE)
    for step in range(decodes + 1):
        decode(clips[step % len(clips)], indices[step % len(clips)])
        if step % (decodes // 5) == 0:
            print(step, f"{rss_mib():.1f}", flush=True)


def leak(decodes: int) -> None:
    print(f"\nRSS (MiB) over {decodes} decodes of 4 s 320x240 clips (8 frames -> 224x224), one process each")
    for variant in ("decord", "decord+seek(0)", "torchcodec", "pyav"):
        command = [sys.executable, __file__, "--leak-worker", variant, "--leak-decodes", str(decodes)]
        lines = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split("\n")
        points = [line.split() for line in lines if line.strip()]
        trace = "  ".join(f"{step}:{rss}" for step, rss in points)
        growth = float(points[-1][1]) - float(points[1][1])
        print(f"  {variant:<15} {trace}   growth after step {points[1][0]}: {growth:+.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", default="data/video_text/val-{000000..000001}.tar.gz")
    parser.add_argument("--clips", type=int, default=2, help="clips per coded row")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--long-seconds", type=int, default=60)
    parser.add_argument("--shard-clips", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--leak-decodes", type=int, default=2000)
    parser.add_argument("--leak-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1's encoder: errors only, not its banner per clip
    torch.set_num_threads(1)
    if args.leak_worker:
        leak_worker(args.leak_worker, args.leak_decodes)
        return
    start = time.perf_counter()
    rows = code_rows(args.clips, args.seconds) | long_row(args.long_seconds)
    print(f"encoded {sum(len(c) for c in rows.values())} clips in {time.perf_counter() - start:.0f} s")
    print(f"\nframes right/asked and frames/s, {args.seconds} s clips of 320x240 at 25 fps -> {SIZE}x{SIZE}")
    table(rows, SIZE, args.repeats, coded_check)
    print("\nembedded shard clips (H.264 MP4, 32x32, 8 frames, all intra) -> 32x32")
    table({"shards": read_shard_clips(args.shards, args.shard_clips)}, 32, args.repeats, nearest_check)
    print("* routed: the backend refused or could not open the clips; PyAV decoded them from the start")
    leak(args.leak_decodes)


if __name__ == "__main__":
    main()
