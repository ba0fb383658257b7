"""Build small webdataset shards in tests (importable as ``tests.shards`` helpers via conftest)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def png_bytes(color: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path: Path, samples: list[dict[str, bytes]]) -> None:
    """``samples``: dicts of ``{"__key__": str, ext: bytes}`` written as ``key.ext`` members."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def color_shards(root: Path, num_shards: int, per_shard: int, corrupt: set[str] = frozenset()) -> str:
    """Shards of solid-colour PNGs captioned "a <color> square"; keys in ``corrupt`` get garbage bytes.

    Returns the brace-notation URL of the shards.
    """
    names = list(COLORS)
    for s in range(num_shards):
        samples = []
        for i in range(per_shard):
            key = f"s{s}-{i:04d}"
            name = names[(s * per_shard + i) % len(names)]
            image = b"not an image" if key in corrupt else png_bytes(COLORS[name])
            meta = {"source": "colors", "label": name}
            samples.append(
                {
                    "__key__": key,
                    "png": image,
                    "txt": f"a {name} square".encode(),
                    "json": json.dumps(meta).encode(),
                }
            )
        write_shard(root / f"train-{s:06d}.tar", samples)
    return str(root / f"train-{{000000..{num_shards - 1:06d}}}.tar")
