"""``mmfuse data decontaminate``: planted eval captions and images are found; nothing else is."""

from __future__ import annotations

from pathlib import Path

from datatools_media import pair, png, read_tar, reencoded, report, run, write_tar

from mmfuse.training.datatools.textmatch import NgramIndex

EVAL = [
    "a heron standing in shallow water at dawn while the mist rises slowly over the quiet lake shore",
    "rook",
    "the small red kite circles above the hill",
    "two children fly a yellow kite on the beach",
    "an old wooden boat rests on the sand",
]
TRAIN = [
    f"training caption number {i} about {w}" for i, w in enumerate("cats dogs owls cars bikes trees".split())
]


def write_sets(tmp_path: Path) -> tuple[Path, Path]:
    eval_shard = write_tar(
        tmp_path / "val.tar", [pair(f"val-{i}", png(100 + i), "png", t) for i, t in enumerate(EVAL)]
    )
    train = [pair(f"train-{i}", png(i), "png", t) for i, t in enumerate(TRAIN)]
    train += [
        # an eval caption with light edits (case, punctuation, spacing) under another picture
        pair("leak-caption", png(50), "png", "The small RED kite -- circles above the hill!"),
        # an eval picture re-encoded as JPEG and resized, under another caption
        pair("leak-image", reencoded(png(103), 0.75, 70), "jpg", "an unrelated caption"),
        # 13 consecutive words of the long eval caption inside a longer text
        pair(
            "leak-13gram",
            png(51),
            "png",
            "notes: standing in shallow water at dawn while the mist rises slowly over the quiet, said",
        ),
    ]
    return write_tar(tmp_path / "train.tar", train), eval_shard


def hits(result: dict) -> dict[str, set[str]]:
    items = result["sets"]["val"]["items_hit"]
    return {i["key"]: {t["key"] for t in i["train"]} for i in items}


def test_planted_leaks_are_found_and_filtered(tmp_path: Path) -> None:
    train, val = write_sets(tmp_path)
    code = run(["decontaminate", "--train", train, "--eval", f"val={val}", "--out", tmp_path / "o",
                "--filtered", tmp_path / "clean"])  # fmt: skip
    assert code == 0
    result = report(tmp_path / "o", "decontaminate")
    assert hits(result) == {"val-0": {"leak-13gram"}, "val-2": {"leak-caption"}, "val-3": {"leak-image"}}
    items = {i["key"]: i for i in result["sets"]["val"]["items_hit"]}
    assert items["val-2"]["measures"] == ["text", "text_equal"]
    assert items["val-3"]["measures"] == ["image"]
    assert items["val-0"]["train"][0]["matches"] == [
        {"measure": "text", "ngram": "standing in shallow water at dawn while the mist rises slowly over the"}
    ]  # the first shared 13-gram of the 14 shared words
    assert result["sets"]["val"]["contaminated"] == 3 and result["train"]["hitting"] == 3
    assert set(read_tar(tmp_path / "clean/train.tar")) == {f"train-{i}" for i in range(len(TRAIN))}


def test_ngram_rule() -> None:
    """13 shared words contaminate a long item, 12 do not; a short item needs all of its words."""
    index = NgramIndex(13)
    index.add("long", EVAL[0])
    index.add("short", "Rook")
    words = EVAL[0].split()
    assert index.query(" ".join(words[2:15])) == {"long": " ".join(words[2:15])}
    assert index.query(" ".join(words[2:14])) == {}
    assert index.query("A black ROOK, on h8.") == {"short": "rook"}
    assert index.query("rooks and crooks") == {}
