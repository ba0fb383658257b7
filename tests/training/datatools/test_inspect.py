"""``mmfuse data inspect``: counts, media descriptions, text lengths, truncation and the plots."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from audio_bytes import encode
from datatools_media import chirp, pair, png, report, run, write_tar
from PIL import Image

from mmfuse.training.datatools.inspect import summarize


def test_counts_sizes_durations_and_truncation(tmp_path: Path) -> None:
    images = [pair(f"a-{i}", png(i, (32, 24)), "png", "red square", source="shapes") for i in range(3)]
    images += [pair("b-0", png(9, (16, 16)), "png", "a red and blue square on a mat", source="mats")]
    speech = [pair("s-0", encode(chirp(200, 400, 0.5, 8000), 8000, "WAV"), "wav", "one", source="voice")]
    broken = [pair("broken", b"not audio", "wav", "lost", source="voice")]
    shards = [write_tar(tmp_path / "img.tar", images), write_tar(tmp_path / "aud.tar", speech + broken),
              write_tar(tmp_path / "empty.tar", [])]  # fmt: skip
    # open_clip ViT-B-32: each of these words is one token, plus start and end
    assert run(["inspect", *shards, "--max_length", 5, "--out", tmp_path / "o"]) == 0
    result = report(tmp_path / "o", "inspect")
    assert result["samples"] == 6
    assert result["counts"] == {"audio": {"voice": 2}, "image": {"mats": 1, "shapes": 3}}
    stats = result["stats"]
    assert stats["image/width"]["histogram"] == {"16": 1, "32": 3}
    assert stats["image/height"]["histogram"] == {"16": 1, "24": 3}
    assert stats["audio/duration_s"]["histogram"] == {"0.5": 1} and stats["audio/sample_rate"]["max"] == 8000
    assert stats["text/words"]["histogram"] == {"1": 1, "2": 3, "8": 1}
    assert stats["text/tokens"]["histogram"] == {"3": 1, "4": 3, "10": 1}
    assert (result["truncated"], result["truncated_fraction"]) == (1, 0.2)
    assert [u["key"] for u in result["unreadable_samples"]] == ["broken"]
    for plot in result["plots"]:
        assert Image.open(plot).size == (600, 350)
    assert {Path(p).name for p in result["plots"]} >= {
        "text_tokens.png",
        "image_width.png",
        "audio_duration_s.png",
    }


def test_summarize_percentiles() -> None:
    values = Counter({1: 5, 2: 3, 10: 2})  # 1 1 1 1 1 2 2 2 10 10
    stats = summarize(values)
    assert (stats["n"], stats["min"], stats["p50"], stats["p95"], stats["max"]) == (10, 1, 1, 10, 10)
    assert stats["mean"] == 3.1
