"""Test-only callbacks loaded by class path (``--trainer.callbacks+=probes.KillAtStep``).

The tests put this directory on ``sys.path`` (in-process runs) or ``PYTHONPATH`` (subprocesses,
SLURM jobs).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any

import lightning as L
import torch


class KillAtStep(L.Callback):
    """``SIGKILL`` this process when training step ``step`` starts (a kill -9 mid-epoch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillOnceAtStep(KillAtStep):
    """:class:`KillAtStep`, but only while ``marker`` does not exist (it is created first): a rerun
    of the same command survives."""

    def __init__(self, step: int, marker: str) -> None:
        super().__init__(step)
        self.marker = marker

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ):
        if trainer.global_step == self.step and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


class RecordSteps(L.Callback):
    """Keeps ``(global_step, sample keys, loss)`` of every training batch in ``self.steps``."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, list[str], float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        self.steps.append((trainer.global_step - 1, list(batch["__key__"]), float(outputs["loss"])))


def parameter_digest(module: torch.nn.Module) -> str:
    """SHA-1 of every parameter's float32 bytes, in ``named_parameters`` order."""
    digest = hashlib.sha1()
    for _, param in module.named_parameters():
        digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class ReportRank(L.Callback):
    """Prints one ``RANK ...`` line per rank: cluster environment, world, steps, parameter digest.

    With ``step_sleep`` > 0 every training step also sleeps that long (seconds), so that a signal
    can be sent while a job is mid-run; a ``STEP <n>`` line is printed by rank 0 after each step.
    """

    def __init__(self, step_sleep: float = 0.0) -> None:
        self.step_sleep = step_sleep

    def _line(self, trainer: L.Trainer, pl_module: L.LightningModule, event: str) -> None:
        env = getattr(trainer.strategy, "cluster_environment", None)
        print(
            f"RANK {event} global_rank={trainer.global_rank} world_size={trainer.world_size} "
            f"env={type(env).__name__} node={os.environ.get('SLURMD_NODENAME')} "
            f"restart={os.environ.get('SLURM_RESTART_COUNT', '0')} global_step={trainer.global_step} "
            f"params={parameter_digest(pl_module)}",
            flush=True,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._line(trainer, pl_module, "start")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        if self.step_sleep:
            time.sleep(self.step_sleep)
        if trainer.is_global_zero:
            print(f"STEP {trainer.global_step}", flush=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._line(trainer, pl_module, "end")
