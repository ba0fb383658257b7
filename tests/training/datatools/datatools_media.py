"""Media, samples and shards for the ``mmfuse data`` tests: distinct textures, chirps and moving sprites."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from mmfuse.training.datatools import main


def texture(seed: int, size: tuple[int, int] = (48, 48)) -> Image.Image:
    """A smooth random RGB picture: 6 x 6 noise upsampled bicubically (distinct per seed)."""
    noise = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(noise).resize(size, Image.BICUBIC)


def encode_image(image: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def png(seed: int, size: tuple[int, int] = (48, 48)) -> bytes:
    return encode_image(texture(seed, size))


def reencoded(data: bytes, scale: float = 0.75, quality: int = 70) -> bytes:
    """``data`` decoded, resized by ``scale`` (bicubic) and saved as JPEG at ``quality``."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    return encode_image(image.resize((round(w * scale), round(h * scale)), Image.BICUBIC), "JPEG", quality)


def chirp(f0: float, f1: float, seconds: float = 0.6, sample_rate: int = 16000) -> np.ndarray:
    """``[n]`` float32 linear chirp from ``f0`` to ``f1`` Hz, amplitude 0.5."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))).astype(np.float32)


def moving(seed: int, num_frames: int = 8, side: int = 64) -> np.ndarray:
    """``[t, side, side, 3]`` frames of a texture sliding right by 4 px a frame over black."""
    sprite = np.asarray(texture(seed, (side // 2, side // 2)))
    frames = np.zeros((num_frames, side, side, 3), dtype=np.uint8)
    for i in range(num_frames):
        frames[i, side // 4 : side // 4 + side // 2, 4 * i : 4 * i + side // 2] = sprite
    return frames


def pair(key: str, media: bytes, ext: str, caption: str, **meta: str) -> dict[str, bytes]:
    """A media-text sample as the embedded shards hold it."""
    return {"__key__": key, ext: media, "txt": caption.encode(), "json": json.dumps(meta).encode()}


def write_tar(path: Path, samples: list[dict[str, bytes]], *, gz: bool = False) -> Path:
    """Samples as ``key.ext`` members of a tar (gzip-compressed with ``gz``); returns ``path``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext != "__key__":
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()) if gz else buf.getvalue())
    return path


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """``{key: {ext: bytes}}`` of a (gzipped) tar shard."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out


def run(args: list[str]) -> int:
    """``mmfuse data ARGS`` in-process; its exit status."""
    return main([str(a) for a in args])


def report(directory: Path, name: str) -> dict:
    return json.loads((directory / f"{name}.json").read_text())
