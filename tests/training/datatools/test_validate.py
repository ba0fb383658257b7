"""``mmfuse data validate``: every corrupt sample, unreadable and empty shard is listed; exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audio_bytes import encode
from datatools_media import chirp, pair, png, read_tar, report, run, write_tar

REPO = Path(__file__).parents[3]


@pytest.fixture
def shards(tmp_path: Path) -> dict[str, Path]:
    good = [pair(f"good-{i}", png(i), "png", f"picture number {i}", source="t") for i in range(5)]
    good.append(pair("speech-0", encode(chirp(300, 900), 16000, "WAV"), "wav", "a rising tone", source="t"))
    bad = [
        pair("bad-image", b"not an image at all", "png", "garbage bytes"),
        {**pair("bad-json", png(7), "png", "fine picture"), "json": b"{not json"},
        {"__key__": "no-caption", "png": png(8)},
        pair("bad-audio", b"RIFF....WAVEfmt truncated", "wav", "broken sound"),
        pair("fine", png(9), "png", "a fine picture in a bad shard"),
    ]
    truncated = write_tar(
        tmp_path / "cut.tar.gz", [pair(f"cut-{i}", png(20 + i), "png", "x") for i in range(8)], gz=True
    )
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (tmp_path / "zero.tar").write_bytes(b"")
    return {
        "good": write_tar(tmp_path / "good.tar", good),
        "bad": write_tar(tmp_path / "bad.tar", bad),
        "empty": write_tar(tmp_path / "empty.tar", []),
        "zero": tmp_path / "zero.tar",
        "cut": truncated,
    }


def test_clean_shard_passes(shards: dict[str, Path], tmp_path: Path) -> None:
    assert run(["validate", shards["good"], "--out", tmp_path / "r"]) == 0
    result = report(tmp_path / "r", "validate")
    assert (result["samples"], result["decoded"], result["ok"]) == (6, 6, True)


def test_every_fault_is_listed(shards: dict[str, Path], tmp_path: Path) -> None:
    urls = [shards[k] for k in ("good", "bad", "empty", "zero", "cut")]
    assert run(["validate", *urls, "--out", tmp_path / "r"]) == 1
    result = report(tmp_path / "r", "validate")
    corrupt = {row["key"]: row for row in result["corrupt"]}
    assert set(corrupt) == {"bad-image", "bad-json", "no-caption", "bad-audio"}
    assert all(row["shard"] == str(shards["bad"]) for row in corrupt.values())
    assert corrupt["bad-image"]["reason"].startswith("UnidentifiedImageError")
    assert corrupt["bad-json"]["reason"].startswith("JSONDecodeError")
    assert "no .txt caption" in corrupt["no-caption"]["reason"]
    assert corrupt["bad-audio"]["reason"].startswith("AudioDecodeError")
    assert result["empty_shards"] == [str(shards["empty"])]
    assert {row["shard"] for row in result["unreadable"]} == {str(shards["zero"]), str(shards["cut"])}
    read_from_cut = result["per_shard"][str(shards["cut"])]["samples"]
    assert 0 < read_from_cut < 8  # the samples before the cut are read, the rest is reported
    assert result["decoded"] == 6 + 1 + read_from_cut


def test_config_decoder_is_the_training_one(shards: dict[str, Path], tmp_path: Path) -> None:
    """--config builds the data module of a training YAML and validates with its decoder."""
    config = tmp_path / "fit.yaml"
    config.write_text(
        "model: {class_path: unused}\n"
        "data:\n  class_path: mmfuse.training.data.MediaTextDataModule\n  init_args:\n"
        f"    train_shards: {shards['bad']}\n    val_shards: {shards['good']}\n"
        "    media: {class_path: mmfuse.vision.ImageTransform, init_args: {image_size: 16}}\n"
        "    context_length: 8\n"
    )
    assert run(["validate", "--config", config, "--out", tmp_path / "r"]) == 1
    result = report(tmp_path / "r", "validate")
    # the image pair decoder has no audio transform: the good shard's speech sample fails there
    corrupt = {(Path(row["shard"]).name, row["key"]) for row in result["corrupt"]}
    assert corrupt == {("bad.tar", k) for k in ("bad-image", "bad-json", "no-caption", "bad-audio")} | {
        ("good.tar", "speech-0")
    }
    assert result["decoded"] == 5 + 1


def test_chat_samples_use_the_chat_decoder(tmp_path: Path) -> None:
    def chat(key: str, image: bytes) -> dict[str, bytes]:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": "a texture"},
        ]
        return {"__key__": key, "json": json.dumps({"messages": messages}).encode(), "image_0.png": image}

    shard = write_tar(tmp_path / "chat.tar", [chat("ok", png(1)), chat("broken", b"\x89PNG garbage")])
    assert read_tar(shard)["ok"].keys() == {"json", "image_0.png"}
    code = run(["validate", shard, "--tokenizer", REPO / "data/tokenizer", "--out", tmp_path / "r"])
    result = report(tmp_path / "r", "validate")
    assert code == 1
    assert [row["key"] for row in result["corrupt"]] == ["broken"]
    assert result["decoded"] == 1
