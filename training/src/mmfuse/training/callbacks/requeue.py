"""SLURM auto-requeue that checkpoints at a step boundary, so the requeued job resumes exactly.

Lightning's SLURMEnvironment auto-requeue saves ``hpc_ckpt_<n>.ckpt`` *inside* the SIGUSR1
handler, i.e. wherever the main thread happens to be: in the middle of a forward pass (the data
loader has already handed out the batch, so the resumed run skips it), between two parameter
updates of ``optimizer.step()`` (a half-updated model), or - with several ranks signalled at
slightly different moments - issuing the checkpoint's barrier while another rank issues a
gradient all-reduce. :class:`RequeueOnSignal` keeps Lightning's protocol (same signal, same
``hpc_ckpt_<n>.ckpt`` in ``trainer.default_root_dir`` that Lightning restores on restart, same
``scontrol requeue``) but its handler only raises a flag; the checkpoint is written at the next
``on_train_batch_end``, after the optimizer step, on every rank at the same step.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for array jobs, else the job id.

    Raises:
        KeyError: If not inside a SLURM job.
    """
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


class RequeueOnSignal(Callback):
    """On SIGUSR1 (SLURM's ``--signal=SIGUSR1@<s>``): checkpoint at the step boundary, requeue, stop.

    Active only in a SLURM job (``SLURMEnvironment.detect()``); elsewhere it does nothing and
    costs nothing. In a job it replaces Lightning's requeue handler at ``on_train_start`` and,
    after every training batch, agrees across ranks whether any rank was signalled (one scalar
    all-reduce per batch). When one was, every rank:

    1. saves ``hpc_ckpt_<n>.ckpt`` in ``trainer.default_root_dir`` (restored by Lightning when the
       requeued job starts without ``ckpt_path``) and refreshes ``last.ckpt`` of each
       ``ModelCheckpoint(save_last=True)`` (restored when it starts with ``--ckpt_path=last``);
    2. stops training (``trainer.should_stop``), so loggers flush and the process exits cleanly;
    3. global rank 0 then runs ``scontrol requeue <job>`` from ``teardown``.

    A signal that arrives during validation is acted on at the next training batch.

    Args:
        signal_name: the signal SLURM sends (``--signal=<name>@<seconds>``), e.g. ``"SIGUSR1"``.

    Raises:
        ValueError: If ``signal_name`` is not a signal of this platform.
    """

    def __init__(self, signal_name: str = "SIGUSR1") -> None:
        if signal_name not in signal.Signals.__members__:
            raise ValueError(f"RequeueOnSignal: unknown signal {signal_name!r}")
        self.signum = signal.Signals[signal_name]
        self._active = False  # inside a SLURM job (decided once, at on_train_start)
        self._signalled = False
        self._requeue = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True  # only this: the checkpoint waits for the step boundary

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = SLURMEnvironment.detect()
        if self._active:
            signal.signal(self.signum, self._on_signal)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active or not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            return
        # hpc_ckpt_<n+1>, named on rank 0: another rank could list the directory after rank 0 wrote
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        path = trainer.strategy.broadcast(path)
        trainer.save_checkpoint(path)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
                last = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
                trainer.save_checkpoint(last)
        rank_zero_info(f"{self.signum.name}: saved {path} at global step {trainer.global_step}; stopping")
        self._requeue = True
        trainer.should_stop = True

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._requeue and trainer.is_global_zero:
            job = slurm_job_id()
            rank_zero_info(f"requeueing SLURM job {job}")  # before: the requeue terminates this task
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode != 0:
                rank_zero_warn(f"scontrol requeue {job} failed ({result.returncode}): {result.stderr}")
        self._requeue = False


__all__ = ["RequeueOnSignal", "slurm_job_id"]
