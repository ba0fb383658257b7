"""The run manifest: everything needed to trust, re-run or audit a run, in its log directory.

Every start of a run (the first one, a resume, a SLURM requeue) has its own log directory
(``<default_root_dir>/lightning_logs/version_N``) and gets, from global rank 0:

* ``config.yaml``: the resolved LightningCLI config (Lightning's :class:`SaveConfigCallback`);
* ``manifest.json``: the same config, the command line, the git commit of the mmfuse sources
  and whether they were dirty, the package versions and the ``uv.lock`` hash, the seeds, host,
  world size, strategy, precision, SLURM job, the expanded shard lists of the data module, and
  (from ``on_train_start``) the checkpoint the run resumed from and the step it starts at;
* ``git.diff``: ``git diff HEAD`` of the source tree when it was dirty (untracked files are
  listed in the manifest, not copied).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import webdataset as wds
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

import mmfuse.training

MANIFEST_FILE = "manifest.json"
DIFF_FILE = "git.diff"
_SLURM_VARS = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "nodelist": "SLURM_JOB_NODELIST",
    "ntasks": "SLURM_NTASKS",
    "ntasks_per_node": "SLURM_NTASKS_PER_NODE",
    "partition": "SLURM_JOB_PARTITION",
}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def git_state(source: Path) -> tuple[dict[str, Any], str]:
    """The git commit of the checkout holding ``source``, and its ``git diff HEAD``.

    Returns:
        ``({"root", "commit", "dirty", "untracked"}, diff)`` where ``dirty`` means tracked files
        differ from ``HEAD`` and ``untracked`` lists the untracked, non-ignored paths; or
        ``({"error": reason}, "")`` when ``source`` is not in a git checkout (an installed wheel)
        or git is missing.
    """
    try:
        root = Path(_git(source, "rev-parse", "--show-toplevel").strip())
        diff = _git(root, "diff", "HEAD")
        untracked = _git(root, "ls-files", "--others", "--exclude-standard").splitlines()
        commit = _git(root, "rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"error": f"no git state for {source}: {exc}"}, ""
    return {"root": str(root), "commit": commit, "dirty": bool(diff), "untracked": untracked}, diff


def sha256_file(path: Path) -> str | None:
    """Hex SHA-256 of a file, or None if it does not exist."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def package_versions() -> dict[str, str]:
    """``{distribution name: version}`` of every installed distribution, sorted by name."""
    versions = {dist.metadata["Name"]: dist.version for dist in importlib.metadata.distributions()}
    return dict(sorted(versions.items(), key=lambda kv: kv[0].lower()))


def shard_lists(datamodule: Any) -> dict[str, list[str]]:
    """Expanded shard URLs of every ``*_shards`` string attribute of ``datamodule`` (brace notation,
    ``::`` lists), e.g. ``{"train_shards": [".../train-000000.tar", ...]}``."""
    attrs = vars(datamodule) if datamodule is not None else {}
    return {
        name: wds.shardlists.expand_urls(value)
        for name, value in sorted(attrs.items())
        if name.endswith("_shards") and isinstance(value, str)
    }


def build_manifest(trainer: L.Trainer, config: dict[str, Any] | None, git: dict[str, Any]) -> dict[str, Any]:
    """The manifest dict of the current process (see the module docstring)."""
    strategy = trainer.strategy
    env = getattr(strategy, "cluster_environment", None)
    seed = os.environ.get("PL_GLOBAL_SEED")
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "seed": int(seed) if seed is not None else None,
        "seed_workers": os.environ.get("PL_SEED_WORKERS") == "1",
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "devices_per_node": trainer.num_devices,
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(strategy).__name__,
        "cluster_environment": type(env).__name__ if env is not None else None,
        "precision": trainer.precision,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "gradient_clip_val": trainer.gradient_clip_val,
        "slurm": {k: os.environ[v] for k, v in _SLURM_VARS.items() if v in os.environ} or None,
        "git": git,
        "uv_lock_sha256": sha256_file(Path(git["root"]) / "uv.lock") if "root" in git else None,
        "python": sys.version,
        "platform": platform.platform(),
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        },
        "packages": package_versions(),
        "shards": shard_lists(trainer.datamodule),
        "config": config,
    }


class RunManifest(SaveConfigCallback):
    """Lightning's config-saving callback that also writes ``manifest.json`` (and ``git.diff``).

    Pass it as ``LightningCLI(save_config_callback=RunManifest, save_config_kwargs={"overwrite":
    True})`` (the ``mmfuse`` CLI does); the constructor arguments are :class:`SaveConfigCallback`'s.
    The manifest is written on global rank 0 at ``setup`` and completed at ``on_train_start``
    with ``resumed_from`` (the checkpoint loaded, or None) and ``start`` (global step and epoch
    the run continues from).
    """

    _manifest: dict[str, Any] | None = None
    _log_dir: Path

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # `trainer.log_dir` is a broadcast: every rank asks here, never rank 0 alone later.
        self._log_dir = Path(trainer.log_dir)
        super().setup(trainer, pl_module, stage)

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        git, diff = git_state(Path(mmfuse.training.__file__).parent)
        self._manifest = build_manifest(trainer, config, git)
        if diff:
            (self._log_dir / DIFF_FILE).write_text(diff)
        self._write()

    @override
    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._manifest is None:  # save_config did not run (config saving disabled)
            return
        self._manifest["resumed_from"] = str(trainer.ckpt_path) if trainer.ckpt_path else None
        self._manifest["start"] = {"global_step": trainer.global_step, "epoch": trainer.current_epoch}
        self._write()

    def _write(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        (self._log_dir / MANIFEST_FILE).write_text(json.dumps(self._manifest, indent=2, default=str) + "\n")


__all__ = ["RunManifest", "build_manifest", "git_state", "package_versions", "shard_lists"]
