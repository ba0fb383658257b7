"""``mmfuse data dedup``: exact and near duplicates of every modality, clusters and the filtered copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from audio_bytes import encode
from datatools_media import (
    chirp,
    moving,
    pair,
    png,
    read_tar,
    reencoded,
    report,
    run,
    write_tar,
)

from mmfuse.video.conformance import encode_clip

CAPTIONS = [
    f"{w} texture number {i}" for i, w in enumerate("red green blue cyan amber olive teal pink".split())
]


def image_shards(tmp_path: Path) -> list[Path]:
    originals = [pair(f"img-{i}", png(i), "png", CAPTIONS[i]) for i in range(8)]
    planted = [
        pair("copy-of-0", png(0), "png", CAPTIONS[0]),  # exact
        pair("near-of-1", reencoded(png(1)), "jpg", CAPTIONS[1].upper() + "!"),  # re-encoded, caption edited
        pair("image-of-2", reencoded(png(2), 1.5, 80), "jpg", "a caption of its own"),  # image only
        pair("caption-of-3", png(30), "png", CAPTIONS[3]),  # caption only
    ]
    return [write_tar(tmp_path / "a.tar", originals[:4] + planted[2:]),
            write_tar(tmp_path / "b.tar", originals[4:] + planted[:2])]  # fmt: skip


def clusters(result: dict) -> set[frozenset[str]]:
    return {frozenset([c["keep"]["key"], *(d["key"] for d in c["duplicates"])]) for c in result["clusters"]}


def test_exact_and_near_duplicates_are_removed(tmp_path: Path) -> None:
    shards = image_shards(tmp_path)
    assert run(["dedup", *shards, "--out", tmp_path / "out"]) == 0
    result = report(tmp_path / "out", "dedup")
    assert clusters(result) == {frozenset({"img-0", "copy-of-0"}), frozenset({"img-1", "near-of-1"})}
    assert (result["samples"], result["exact_duplicates"], result["near_duplicates"]) == (12, 1, 1)
    # single measures: the image-only and caption-only plants are clustered there, not removed
    image = {frozenset(m["key"] for m in c) for c in result["by_measure"]["image"]["members"]}
    text = {frozenset(m["key"] for m in c) for c in result["by_measure"]["text"]["members"]}
    assert frozenset({"img-2", "image-of-2"}) in image and frozenset({"img-3", "caption-of-3"}) in text
    kept = {**read_tar(tmp_path / "out/filtered/a.tar"), **read_tar(tmp_path / "out/filtered/b.tar")}
    assert len(kept) == 10 and not {"copy-of-0", "near-of-1"} & set(kept)
    assert kept["img-5"] == {
        "png": png(5),
        "txt": CAPTIONS[5].encode(),
        "json": b"{}",
    }  # copied byte for byte
    assert result["filtered"]["shards"] == f"{tmp_path}/out/filtered/a.tar::{tmp_path}/out/filtered/b.tar"


def test_match_any_also_removes_single_measure_duplicates(tmp_path: Path) -> None:
    assert (
        run(["dedup", *image_shards(tmp_path), "--match", "any", "--no_copy", "--out", tmp_path / "o"]) == 0
    )
    result = report(tmp_path / "o", "dedup")
    assert clusters(result) == {
        frozenset({"img-0", "copy-of-0"}), frozenset({"img-1", "near-of-1"}),
        frozenset({"img-2", "image-of-2"}), frozenset({"img-3", "caption-of-3"}),
    }  # fmt: skip
    assert result["filtered"] is None and not (tmp_path / "o/filtered").exists()


def test_audio_is_compared_by_its_decoded_waveform(tmp_path: Path) -> None:
    """The same 16-bit samples as WAV and FLAC are an exact duplicate; an Ogg Vorbis re-encode a near one."""
    tones = {f"tone-{i}": (chirp(200 + 150 * i, 1200 - 100 * i) * 32767).astype(np.int16) for i in range(6)}
    samples = [pair(k, encode(w, 16000, "WAV"), "wav", f"sound {k}") for k, w in tones.items()]
    samples += [
        pair("flac-of-0", encode(tones["tone-0"], 16000, "FLAC"), "flac", "sound tone-0"),
        pair(
            "vorbis-of-1",
            encode(0.8 * tones["tone-1"] / 32767, 16000, "OGG", "VORBIS"),
            "ogg",
            "sound tone-1",
        ),
    ]
    assert run(["dedup", write_tar(tmp_path / "s.tar", samples), "--no_copy", "--out", tmp_path / "o"]) == 0
    result = report(tmp_path / "o", "dedup")
    assert clusters(result) == {frozenset({"tone-0", "flac-of-0"}), frozenset({"tone-1", "vorbis-of-1"})}
    assert (result["exact_duplicates"], result["near_duplicates"]) == (1, 1)


def test_a_clip_played_backwards_is_not_a_duplicate(tmp_path: Path) -> None:
    frames = [moving(seed) for seed in range(4)]
    samples = [
        pair(f"clip-{i}", encode_clip(f, "h264-mp4", fps=8), "mp4", f"texture {i} moving right")
        for i, f in enumerate(frames)
    ]
    samples += [
        pair("copy-of-0", encode_clip(frames[0], "h264-mp4", fps=8), "mp4", "texture 0 moving right"),
        pair(
            "reversed-1",
            encode_clip(np.ascontiguousarray(frames[1][::-1]), "h264-mp4", fps=8),
            "mp4",
            "texture 1 moving right",
        ),
    ]
    assert run(["dedup", write_tar(tmp_path / "v.tar", samples), "--no_copy", "--out", tmp_path / "o"]) == 0
    result = report(tmp_path / "o", "dedup")
    assert clusters(result) == {frozenset({"clip-0", "copy-of-0"})}
    assert not any("reversed-1" in c for c in map(str, result["by_measure"]["video"]["members"]))
