"""Chat data from JSONL files with media paths equals the same chat data from a webdataset tar."""

import gzip
import json
from pathlib import Path

import torch
from shards import COLORS, png_bytes, write_shard

from mmfuse.core.data import ShardedStream, count_samples, expand_urls, jsonl_to_samples
from mmfuse.core.text import load_tokenizer
from mmfuse.training.data.chat import ChatDecoder
from mmfuse.vision import ImageTransform

TOKENIZER = str(Path(__file__).resolve().parents[3] / "data" / "tokenizer")


def _record(color: str, part: dict) -> dict:
    messages = [
        {"role": "user", "content": [part, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": color},
    ]
    return {"messages": messages, "kinds": ["image/colour"]}


def _decoded(url: str) -> tuple[list, int]:
    """The decoded conversations of a shard, and the number of samples skipped."""
    decoder = ChatDecoder(load_tokenizer(TOKENIZER), {"image": ImageTransform(image_size=16)}, max_length=64)
    stream = ShardedStream(expand_urls(url), decoder, batch_size=8, train=False, shuffle_buffer=0)
    batches = list(stream)
    return [e for b in batches for e in b["chat"]], sum(b["num_skipped"] for b in batches)


def test_jsonl_with_media_paths_decodes_like_the_tar_shard(tmp_path):
    (tmp_path / "images").mkdir()
    lines, trl_lines, samples = [], [], []
    for i, (color, rgb) in enumerate(COLORS.items()):
        (tmp_path / "images" / f"{color}.png").write_bytes(png_bytes(rgb))
        lines.append(json.dumps(_record(color, {"type": "image", "path": f"images/{color}.png"})))
        trl_record = {**_record(color, {"type": "image"}), "images": [f"images/{color}.png"]}  # TRL's layout
        trl_lines.append(json.dumps(trl_record))
        record = _record(color, {"type": "image"})
        member = {"json": json.dumps(record).encode(), "image_0.png": png_bytes(rgb)}
        samples.append({"__key__": f"s{i}", **member})
    lines.insert(2, "{not json")  # a corrupt line: skipped and counted
    with gzip.open(tmp_path / "chat.jsonl.gz", "wt") as f:
        f.write("\n".join(lines) + "\n\n")
    write_shard(tmp_path / "chat.tar", samples)
    (tmp_path / "trl.jsonl").write_text("\n".join(trl_lines))

    from_jsonl, skipped = _decoded(str(tmp_path / "chat.jsonl.gz"))
    from_tar, _ = _decoded(str(tmp_path / "chat.tar"))
    from_trl, trl_skipped = _decoded(str(tmp_path / "trl.jsonl"))

    assert skipped == 1
    assert count_samples([str(tmp_path / "chat.jsonl.gz")]) == len(COLORS) + 1  # blank lines not counted
    assert [e.key for e in from_jsonl] == [f"chat.jsonl.gz:{line}" for line in (1, 2, 4, 5)]
    assert len(from_jsonl) == len(from_tar) == len(from_trl) == len(COLORS) and trl_skipped == 0
    for a, b, c in zip(from_jsonl, from_tar, from_trl, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.shift_labels, b.shift_labels)
        assert torch.equal(c.input_ids, b.input_ids)
        assert torch.equal(a.media[0][1]["pixel_values"], b.media[0][1]["pixel_values"])
        assert torch.equal(c.media[0][1]["pixel_values"], b.media[0][1]["pixel_values"])


def test_jsonl_through_a_pipe_reads_the_same_lines(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps({"i": i, "pad": "x" * 40_000}) + "\n" for i in range(5)))  # > one read
    local = list(jsonl_to_samples(str(path)))
    piped = list(jsonl_to_samples(f"pipe:cat {path}"))
    assert [json.loads(s["json"])["i"] for s in piped] == list(range(5))
    assert [s["json"] for s in piped] == [s["json"] for s in local]
