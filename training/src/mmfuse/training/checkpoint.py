"""Checkpoint writing: crash-safe files, and a ``last.ckpt`` of every run's final step.

A kill at any moment leaves either the old or the new file, whole.

Lightning's :class:`~lightning.pytorch.plugins.io.TorchCheckpointIO` serialises to memory and then
commits through an fsspec transaction whose temporary file lives in the system temp directory
(``tempfile.mkstemp()``), followed by ``shutil.move``. When that directory is on another
filesystem than the run directory (``/tmp`` on a node-local disk, runs on a shared filesystem: the
usual cluster layout) the move is a copy into the target, which a ``SIGKILL``, an OOM kill or a
SLURM pre-emption can leave truncated; nothing is ``fsync``-ed either, so a node crash can lose the
bytes of a checkpoint whose name already exists.

:class:`AtomicCheckpointIO` writes into a temporary file in the *same directory* as the target,
``fsync``-s it, renames it over the target with :func:`os.replace` (atomic on POSIX within one
filesystem) and ``fsync``-s the directory so the rename itself is durable. :class:`FinalStepCheckpoint`
adds the final ``last.ckpt`` that Lightning skips when it saves on a step schedule.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override


def _temp_prefix(target: Path) -> str:
    """Name prefix of the temporary files that may precede ``target`` (hidden, never ``*.ckpt``)."""
    return f".{target.name}."


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never observed partially written.

    Leftover temporary files of an earlier writer of the same ``path`` that was killed mid-save
    (``.{name}.*.tmp`` in the same directory) are removed first: one process owns a checkpoint
    path (Lightning saves on global rank 0 only).

    Args:
        obj: Anything :func:`torch.save` accepts (a Lightning checkpoint dict).
        path: Local destination file; its parent directory is created if needed.

    Raises:
        OSError: If the directory cannot be written or synced.
        pickle.PicklingError: Or whatever else :func:`torch.save` raises for ``obj``.
        In every case ``path`` is unchanged and the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{_temp_prefix(target)}*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException:  # also KeyboardInterrupt / SystemExit: never leave the temporary behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A :class:`TorchCheckpointIO` whose local saves go through :func:`atomic_torch_save`.

    Every checkpoint the trainer writes uses it (``ModelCheckpoint`` files and ``last.ckpt``, the
    SLURM ``hpc_ckpt_*.ckpt`` written on ``SIGUSR1``, ``trainer.save_checkpoint``). Remote paths
    (``s3://``...) keep Lightning's behaviour: an object-store upload is already all-or-nothing.
    Loading and removal are Lightning's.

    Use it as a trainer plugin: ``Trainer(plugins=[AtomicCheckpointIO()])`` (the ``mmfuse`` CLI adds
    it by default).
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local) or via Lightning (remote).

        Raises:
            TypeError: If ``storage_options`` is given (as :class:`TorchCheckpointIO`).
        """
        fs = get_filesystem(path)
        if storage_options is not None or not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, fs._strip_protocol(str(path)))  # "file:///a" -> "/a"


class FinalStepCheckpoint(ModelCheckpoint):
    """Lightning's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` that also writes ``last.ckpt``
    when training ends off its schedule.

    With ``every_n_train_steps`` set, Lightning saves only on those steps (its ``on_train_end`` saves
    ``last.ckpt`` only when none was ever written), so a run of 1,827 steps saving every 50 ended with a
    ``last.ckpt`` of step 1,800: the last 27 steps' weights were lost to ``init_from`` and the
    pipeline. Like the Hugging Face Trainer since transformers#30160, a final ``last.ckpt`` is written
    at the end of training when the latest save was not at the final step (``save_last`` on). Its own
    name keeps ``trainer.callbacks: [ModelCheckpoint]`` unambiguous to jsonargparse.
    """

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        behind = self._last_global_step_saved != trainer.global_step
        if self.save_last and behind and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)


__all__ = ["AtomicCheckpointIO", "FinalStepCheckpoint", "atomic_torch_save"]
