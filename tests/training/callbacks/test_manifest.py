"""The run manifest: written by LightningCLI on every (re)start, with git, packages, seed, shards."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path

import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

from mmfuse.training.callbacks.manifest import RunManifest, git_state


class ShardedBoringData(BoringDataModule):
    """BoringDataModule that names its (unused) shards like the mmfuse data modules do."""

    def __init__(self, train_shards: str = "data/train-{0..2}.tar", val_shards: str = "a.tar::b.tar") -> None:
        super().__init__()
        self.train_shards, self.val_shards = train_shards, val_shards


def _fit(root: Path, *args: str) -> None:
    LightningCLI(
        BoringModel,
        ShardedBoringData,
        save_config_callback=RunManifest,
        save_config_kwargs={"overwrite": True},
        args=[
            "fit", "--seed_everything=123", f"--trainer.default_root_dir={root}",
            "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={root}",
            "--trainer.callbacks=ModelCheckpoint", f"--trainer.callbacks.dirpath={root}/checkpoints",
            "--trainer.callbacks.save_last=true",
            "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0", *args,
        ],
    )  # fmt: skip


def _manifest(root: Path, version: int) -> dict:
    return json.loads((root / f"lightning_logs/version_{version}/manifest.json").read_text())


def test_manifest_of_a_run_and_of_its_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _fit(tmp_path, "--trainer.max_steps=2")
    first = _manifest(tmp_path, 0)
    assert (tmp_path / "lightning_logs/version_0/config.yaml").is_file()
    assert first["seed"] == 123 and first["seed_workers"] is True
    assert first["config"]["seed_everything"] == 123 and first["config"]["trainer"]["max_steps"] == 2
    assert first["world_size"] == 1 and first["strategy"] == "SingleDeviceStrategy"
    assert first["cluster_environment"] is None  # only parallel strategies have one
    assert first["slurm"] == {"job_id": "77", "restart_count": "1"}
    assert first["shards"] == {
        "train_shards": ["data/train-0.tar", "data/train-1.tar", "data/train-2.tar"],
        "val_shards": ["a.tar", "b.tar"],
    }
    assert first["packages"]["torch"] == importlib.metadata.version("torch")
    assert first["packages"]["lightning"] == importlib.metadata.version("lightning")
    assert first["torch"]["version"] == torch.__version__
    repo = Path(first["git"]["root"])
    assert (repo / "training/src/mmfuse/training/callbacks/manifest.py").is_file()
    assert len(first["git"]["commit"]) == 40
    assert first["uv_lock_sha256"] == hashlib.sha256((repo / "uv.lock").read_bytes()).hexdigest()
    assert first["resumed_from"] is None and first["start"] == {"global_step": 0, "epoch": 0}

    _fit(tmp_path, "--trainer.max_steps=4", "--ckpt_path=last")
    resumed = _manifest(tmp_path, 1)
    assert resumed["resumed_from"] == str(tmp_path / "checkpoints" / "last.ckpt")
    assert resumed["start"] == {"global_step": 2, "epoch": 0}
    assert resumed["config"]["ckpt_path"] == "last"
    assert _manifest(tmp_path, 0) == first  # the first start's manifest is kept


def test_git_state_of_a_dirty_checkout(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True
        ).stdout

    git("init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    state, diff = git_state(tmp_path / "src")
    assert state == {
        "root": str(tmp_path),
        "commit": git("rev-parse", "HEAD").strip(),
        "dirty": False,
        "untracked": [],
    }
    assert diff == ""

    (tmp_path / "src" / "a.py").write_text("x = 2\n")
    (tmp_path / "new.txt").write_text("?")
    state, diff = git_state(tmp_path / "src")
    assert state["dirty"] is True and state["untracked"] == ["new.txt"]
    assert "-x = 1\n+x = 2\n" in diff and diff == git("diff", "HEAD")


def test_git_state_outside_a_checkout(tmp_path: Path) -> None:
    state, diff = git_state(tmp_path)
    assert state["error"].startswith(f"no git state for {tmp_path}") and diff == ""
