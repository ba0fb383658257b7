"""Guard against NaN/Inf training losses: stop with a clear message, or skip the step and count it."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override


class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or Inf (raised by :class:`NonFiniteLossGuard`)."""


class NonFiniteLossGuard(Callback):
    """Checks every training loss before its backward pass, on every rank.

    The check runs in ``on_before_backward`` (so once per micro-batch under gradient accumulation)
    and is agreed across ranks (any rank non-finite -> all ranks act), so DDP/FSDP ranks never
    diverge into a collective that only some of them reach. It costs one host sync of a scalar
    per micro-batch.

    * ``mode="stop"`` (default): raise :class:`NonFiniteLossError` before the backward pass. The
      weights and optimizer state are those of the last finite step and nothing is saved after
      the bad step, so the last checkpoint written (named in the message) is good.
    * ``mode="skip"``: let the backward run, then drop every gradient (``param.grad = None``) in
      ``on_before_optimizer_step``, which makes ``optimizer.step()`` leave parameters and moments
      untouched (torch optimizers skip parameters without a gradient). The number of skipped
      optimizer steps is logged as ``train/nonfinite_skipped`` and kept in checkpoints; once it
      exceeds ``max_skipped`` the run stops as in ``"stop"`` mode. The learning-rate schedule and
      ``global_step`` still advance, as with AMP's skipped steps.

    Args:
        mode: ``"stop"`` or ``"skip"``.
        max_skipped: In ``"skip"`` mode, the most optimizer steps that may be skipped over the
            whole run (resumes included); ``None`` for no limit.

    Raises:
        ValueError: If ``mode`` is not ``"stop"``/``"skip"`` or ``max_skipped`` is negative.
    """

    def __init__(self, mode: Literal["stop", "skip"] = "stop", max_skipped: int | None = None) -> None:
        if mode not in ("stop", "skip"):
            raise ValueError(f"NonFiniteLossGuard mode must be 'stop' or 'skip', got {mode!r}")
        if max_skipped is not None and max_skipped < 0:
            raise ValueError(f"NonFiniteLossGuard max_skipped must be >= 0, got {max_skipped}")
        self.mode = mode
        self.max_skipped = max_skipped
        self.skipped = 0
        self._skip_pending = False
        self._where = ""  # where the pending non-finite loss was seen, for the error message

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        local_finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(local_finite, all=True):
            return
        where = (
            f"at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
            f"batch {trainer.fit_loop.epoch_loop.batch_idx}); local loss on rank "
            f"{trainer.global_rank}: {loss.detach().float().item()}"
        )
        if self.mode == "stop":
            raise NonFiniteLossError(
                f"Non-finite training loss {where}. Stopped before the backward pass, so the weights "
                f"are still those of the last finite step; last checkpoint: {_last_checkpoint(trainer)}. "
                "To skip such steps: NonFiniteLossGuard(mode='skip'), in mmfuse `--nonfinite.mode=skip`."
            )
        self._skip_pending = True
        self._where = where

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._skip_pending:
            return
        self._skip_pending = False
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        self.skipped += 1
        if self.max_skipped is not None and self.skipped > self.max_skipped:
            raise NonFiniteLossError(
                f"Non-finite training loss {self._where}: {self.skipped} optimizer steps skipped, more "
                f"than max_skipped={self.max_skipped}; last checkpoint: {_last_checkpoint(trainer)}."
            )

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.mode == "skip":
            pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict["skipped"]


def _last_checkpoint(trainer: L.Trainer) -> str:
    """The newest checkpoint path the trainer's ``ModelCheckpoint`` knows, or a note that none exists."""
    callback = trainer.checkpoint_callback
    path = callback and (callback.last_model_path or callback.best_model_path)
    return path or "none written yet"


__all__ = ["NonFiniteLossError", "NonFiniteLossGuard"]
