"""Shared shard pieces: the key-hash split, brace URLs, the split writer, the filtered copy, the CLI."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from datatools_media import pair, png, read_tar, write_tar

from mmfuse.core.data import expand_urls
from mmfuse.training import cli
from mmfuse.training.datatools.shards import SplitWriter, brace_url, copy_shards, split_of

REPO = Path(__file__).parents[3]


def test_split_of_is_the_embedded_data_rule() -> None:
    """Every image_text key of the committed shards is in the split ``split_of`` gives it."""
    for split in ("train", "val"):
        for shard in expand_urls(
            str(REPO / f"data/image_text/{split}-{{000000..00000{3 if split == 'train' else 1}}}.tar.gz")
        ):
            with tarfile.open(shard) as tar:
                keys = {m.name.split(".")[0] for m in tar.getmembers()}
            assert keys and {split_of(k, 15) for k in keys} == {split}


def test_brace_url() -> None:
    paths = [f"out/train-{i:06d}.tar" for i in range(12)]
    assert brace_url(paths) == "out/train-{000000..000011}.tar"
    assert wds.shardlists.expand_urls(brace_url(paths)) == paths
    assert brace_url(paths[:1]) == "out/train-000000.tar"
    assert brace_url([paths[0], paths[2]]) == "out/train-000000.tar::out/train-000002.tar"
    assert brace_url([]) == ""


def test_split_writer_starts_shards_by_count(tmp_path: Path) -> None:
    writer = SplitWriter(tmp_path, max_size=1e9, max_count=3)
    for i in range(7):
        writer.write("train", pair(f"k{i}", png(i), "png", f"c{i}"))
    paths = writer.close()
    assert [Path(p).name for p in paths["train"]] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    assert [len(read_tar(Path(p))) for p in paths["train"]] == [3, 3, 1]
    assert not list(tmp_path.glob("val-*"))
    with tarfile.open(paths["train"][0]) as tar:  # reproducible members
        assert {(m.mtime, m.uname, m.gname) for m in tar.getmembers()} == {(0, "", "")}


def test_copy_keeps_names_and_empty_shards(tmp_path: Path) -> None:
    shards = [write_tar(tmp_path / "a.tar", [pair(f"k{i}", png(i), "png", "c") for i in range(4)]),
              write_tar(tmp_path / "b.tar", [])]  # fmt: skip
    counts = copy_shards(
        [str(s) for s in shards], tmp_path / "copy", lambda s: s["__key__"] != "k1", description="t"
    )
    assert counts == {"kept": 3, "removed": 1}
    assert set(read_tar(tmp_path / "copy/a.tar")) == {"k0", "k2", "k3"}
    assert read_tar(tmp_path / "copy/b.tar") == {}
    with pytest.raises(ValueError, match="only tar shards"):
        copy_shards([str(tmp_path / "x.jsonl")], tmp_path / "c2", bool, description="t")


def test_console_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``mmfuse data ...`` dispatches from the console script; bad input exits 2 naming it."""
    corrupt = write_tar(tmp_path / "c.tar", [pair("bad", b"junk", "png", "x")])
    monkeypatch.setattr(
        sys, "argv", ["mmfuse", "data", "validate", str(corrupt), "--out", str(tmp_path / "r")]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    monkeypatch.setattr(sys, "argv", ["mmfuse", "data", "inspect", str(tmp_path / "missing.tar")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "shard not found" in capsys.readouterr().err
