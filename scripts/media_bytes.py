"""Deterministic media encoders and the webdataset shard writer used by ``build_data.py``.

Every function here turns arrays into bytes that are identical from one run to the next (given the
same library versions): no timestamps, random stream serials or encoder version strings that vary.

Shape letters: t frames, h height, w width, n samples.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import webdataset as wds
from PIL import Image

VAL_PERCENT = 15


@dataclass
class Sample:
    """One webdataset sample before serialisation.

    Attributes:
        key: stable sample key (``[a-z0-9-]``, no dots: webdataset splits a member name at its
            first dot).
        ext: extension of the media member, e.g. ``"png"``, ``"ogg"``, ``"mp4"``.
        media: the encoded media file.
        caption: one line of UTF-8 text, stored as ``{key}.txt``.
        meta: JSON-serialisable fields, stored as ``{key}.json`` with sorted keys.
        split: ``"train"`` or ``"val"``.
    """

    key: str
    ext: str
    media: bytes
    caption: str
    meta: dict = field(default_factory=dict)
    split: str = "train"


def split_of(group_key: str) -> str:
    """The fixed split of a key: ``"val"`` for ~15 % of keys by a SHA-256 hash, else ``"train"``.

    Samples derived from one source item (e.g. four motion clips of one picture) pass the
    source's key so they land in the same split.
    """
    bucket = int.from_bytes(hashlib.sha256(group_key.encode()).digest()[:8], "big") % 100
    return "val" if bucket < VAL_PERCENT else "train"


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``[h, w]`` (grayscale) or ``[h, w, 3]`` (RGB) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Baseline JPEG bytes (4:2:0, libjpeg-turbo via Pillow) of a ``[h, w, 3]`` uint8 RGB array."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def encode_ogg_opus(waveform: np.ndarray, sample_rate: int, bit_rate: int) -> bytes:
    """Mono Ogg Opus bytes (libopus via PyAV) of a ``[n]`` int16 waveform.

    FFmpeg's Ogg muxer numbers streams instead of drawing a random serial under ``bitexact``,
    which makes the bytes reproducible (libsndfile's Ogg writer seeds its serial from the clock).
    libsndfile (``soundfile``) decodes the result at ``sample_rate`` with exactly ``n`` samples.

    Args:
        waveform: ``[n]`` int16 samples.
        sample_rate: Hz; one of Opus's rates 8000, 12000, 16000, 24000, 48000.
        bit_rate: target bits per second.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libopus", rate=sample_rate, layout="mono")
        stream.bit_rate = bit_rate
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        frame = av.AudioFrame.from_ndarray(waveform[None, :], format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = 0
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    return buf.getvalue()


def encode_mp4(frames: np.ndarray, fps: int, qp: int = 23) -> bytes:
    """H.264 (libx264, yuv420p) MP4 bytes of ``[t, h, w, 3]`` uint8 RGB frames; h, w even.

    Every frame is an intra frame coded at one constant quantiser (``keyint=1``, ``qp``), so a
    decoded frame depends on that frame's pixels only: the same frames in reverse order decode to
    the same images in reverse order. (With P-frames the first frame would decode sharper than the
    rest and reveal which end of a clip is its start.) decord 0.6 rejects widths that are not a
    multiple of 32 and reads these clips back from memory.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(
            "libx264", rate=fps, options={"qp": str(qp), "g": "1", "threads": "1", "preset": "veryslow"}
        )
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def write_shards(
    samples: Sequence[Sample], out_dir: Path, split: str, num_shards: int, seed: int
) -> list[Path]:
    """Write the samples of one split as ``{split}-000000.tar.gz`` ... in ``out_dir``.

    Samples are sorted by key, permuted with ``numpy.random.default_rng(seed)`` (so one shard
    does not hold one class) and cut into ``num_shards`` contiguous, near-equal shards. Members
    are written in sorted extension order with mtime 0, uid/gid 0, empty user/group names and
    mode 0444 (ustar format), so the same samples always give the same bytes.

    Raises:
        ValueError: if a key repeats or there are fewer samples than shards.
    """
    ordered = sorted(samples, key=lambda s: s.key)
    keys = [s.key for s in ordered]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys in {out_dir.name}/{split}")
    if len(ordered) < num_shards:
        raise ValueError(f"{len(ordered)} samples cannot fill {num_shards} shards in {out_dir.name}/{split}")
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, part in enumerate(np.array_split(permutation, num_shards)):
        path = out_dir / f"{split}-{index:06d}.tar.gz"
        # gzip: the tar headers of three small members per sample are most of the bytes; mtime 0
        # and no file name in the gzip header keep the output reproducible.
        with (
            open(path, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
            wds.TarWriter(gz, user="", group="", mtime=0, encoder=False) as writer,
        ):
            for i in part:
                sample = ordered[i]
                writer.write(
                    {
                        "__key__": sample.key,
                        sample.ext: sample.media,
                        "txt": sample.caption.encode(),
                        "json": json.dumps(sample.meta, sort_keys=True, ensure_ascii=False).encode(),
                    }
                )
        paths.append(path)
    return paths
