"""``mmfuse data build``: each input layout becomes train/val shards that the data module reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from audio_bytes import encode
from datatools_media import chirp, pair, png, read_tar, report, run, write_tar

from mmfuse.core.data import expand_urls
from mmfuse.training.data import MediaTextDataModule
from mmfuse.training.datatools.build import parse_size
from mmfuse.training.datatools.shards import split_of
from mmfuse.vision import ImageTransform


def built(out: Path) -> dict[str, dict[str, dict[str, bytes]]]:
    """``{split: {key: members}}`` of everything under ``out``."""
    samples: dict[str, dict[str, dict[str, bytes]]] = {"train": {}, "val": {}}
    for shard in sorted(out.glob("*.tar*")):
        samples[shard.name.split("-")[0]].update(read_tar(shard))
    return samples


def test_folder_of_images_and_captions(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "birds").mkdir(parents=True)
    for i in range(40):
        folder = root / "birds" if i % 2 else root
        (folder / f"img {i}.png").write_bytes(png(i))
        (folder / f"img {i}.txt").write_text(f"  photo number {i}\n")
    (root / "orphan.png").write_bytes(png(99))  # no caption
    (root / "notes.md").write_text("not media")
    (root / "birds/img 1.json").write_text(json.dumps({"url": "https://example.org/1"}))
    assert run(["build", root, "--out", tmp_path / "shards", "--max_count", 8]) == 0
    result = report(tmp_path / "shards", "build")
    assert result["skipped"] == [
        {"input": str(root), "item": "orphan.png", "reason": "no caption file orphan.txt"}
    ]
    samples = built(tmp_path / "shards")
    keys = {f"photos-{'birds-' if i % 2 else ''}img-{i}-png": i for i in range(40)}
    assert {k for split in samples.values() for k in split} == set(keys)
    for split, members in samples.items():
        for key, sample in members.items():
            i = keys[key]
            assert split_of(key.removesuffix("-png"), 15) == split  # split by the file's stem
            assert sample["png"] == png(i) and sample["txt"] == f"photo number {i}".encode()
            meta = json.loads(sample["json"])
            assert meta["source"] == "photos" and meta["file"].endswith(f"img {i}.png")
    bird = samples[split_of("photos-birds-img-1", 15)]["photos-birds-img-1-png"]
    assert json.loads(bird["json"])["url"].endswith("/1")
    n_train = len(samples["train"])
    assert [Path(p).name for p in result["splits"]["train"]["shards"]] == [
        f"train-{i:06d}.tar" for i in range(-(-n_train // 8))
    ]
    # the printed URLs feed the data module, as `mmfuse fit --data.train_shards ...` does
    datamodule = MediaTextDataModule(
        result["train_shards"], result["val_shards"], ImageTransform(16), context_length=8, batch_size=4,
        num_workers=0,
    )  # fmt: skip
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["input_ids"].dtype == torch.int64
    assert len(expand_urls(result["val_shards"])) == len(result["splits"]["val"]["shards"])


def test_huggingface_audiofolder_and_tables(tmp_path: Path) -> None:
    audio = tmp_path / "speech"
    (audio / "train").mkdir(parents=True)
    (audio / "train/a.wav").write_bytes(encode(chirp(300, 600), 16000, "WAV"))
    (audio / "train/b.wav").write_bytes(encode(chirp(500, 900), 16000, "WAV"))
    rows = [{"file_name": "a.wav", "transcription": "hello", "speaker": "s1"},
            {"file_name": "b.wav", "transcription": "world", "speaker": "s2"},
            {"file_name": "missing.wav", "transcription": "gone"}]  # fmt: skip
    (audio / "train/metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = tmp_path / "pics/captions.csv"
    table.parent.mkdir()
    (table.parent / "cat.jpg").write_bytes(png(3))
    table.write_text("path,caption\ncat.jpg,a cat\ncat.jpg,a sleeping cat\n")
    code = run(["build", audio, table, "--out", tmp_path / "out", "--val_percent", 0, "--gzip"])
    assert code == 0
    samples = built(tmp_path / "out")
    assert samples["val"] == {} and not list((tmp_path / "out").glob("val-*"))  # an empty split: no shard
    assert set(samples["train"]) == {"speech-train-a", "speech-train-b", "captions-cat", "captions-cat-2"}
    assert json.loads(samples["train"]["speech-train-b"]["json"]) == {
        "file": "train/b.wav", "source": "speech", "speaker": "s2"
    }  # fmt: skip
    assert samples["train"]["captions-cat-2"]["txt"] == b"a sleeping cat"
    skipped = report(tmp_path / "out", "build")["skipped"]
    assert [(s["item"], s["reason"].split(":")[0]) for s in skipped] == [
        ("metadata.jsonl:3", "FileNotFoundError")
    ]


def test_webdataset_shards_are_resharded_by_key(tmp_path: Path) -> None:
    """img2dataset writes ``key.jpg``, ``key.txt``, ``key.json``: kept as they are, split by key."""
    samples = [pair(f"{i:09d}", png(i), "jpg", f"caption {i}", url=f"http://x/{i}") for i in range(30)]
    write_tar(tmp_path / "00000.tar", samples[:15])
    write_tar(tmp_path / "00001.tar", samples[15:])
    assert run(["build", str(tmp_path / "{00000..00001}.tar"), "--out", tmp_path / "out"]) == 0
    written = built(tmp_path / "out")
    for sample in samples:
        copy = written[split_of(sample["__key__"], 15)][sample["__key__"]]
        assert copy == {k: v for k, v in sample.items() if k != "__key__"}


def test_parse_size() -> None:
    assert parse_size("256MB") == 256e6 and parse_size("1.5g") == 1.5e9 and parse_size("1000") == 1000
    with pytest.raises(ValueError, match="--shard_size"):
        parse_size("lots")


def test_modality_filter(tmp_path: Path) -> None:
    """Stamps whose sound effects share their names and captions: --modality image keeps the pictures."""
    root = tmp_path / "stamps"
    root.mkdir()
    for i in range(3):
        (root / f"s{i}.png").write_bytes(png(i))
        (root / f"s{i}.ogg").write_bytes(encode(chirp(300, 500), 16000, "OGG", "VORBIS"))
        (root / f"s{i}.txt").write_text(f"stamp {i}")
    assert run(["build", root, "--out", tmp_path / "both", "--val_percent", 0]) == 0
    assert {ext for s in built(tmp_path / "both")["train"].values() for ext in s} == {
        "png",
        "ogg",
        "txt",
        "json",
    }
    assert len(built(tmp_path / "both")["train"]) == 6  # a picture sample and a sound sample per stem
    assert run(["build", root, "--out", tmp_path / "img", "--val_percent", 0, "--modality", "image"]) == 0
    assert {ext for s in built(tmp_path / "img")["train"].values() for ext in s} == {"png", "txt", "json"}
    assert report(tmp_path / "img", "build")["skipped"] == []
