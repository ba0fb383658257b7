"""A run that stops early still evaluates and checkpoints, as at its normal end.

Lightning's ``max_time`` (its ``Timer``) and any ``trainer.should_stop`` request (a guard, a
requeue signal) end training after the current batch; Lightning then validates only if this epoch
is a validation epoch (``check_val_every_n_epoch``). A run sized for one validation at its last
epoch that hits ``max_time`` earlier would end with no held-out figure and no checkpoint written
after that validation. :class:`ValidateOnStop` lifts that epoch gate for the stopping batch, so the
training loop's own early-stop validation runs (``_should_check_val_fx``: "allow validation if
requesting to stop early through ``Trainer.should_stop``"), and ``ModelCheckpoint`` writes its
best/last checkpoints after it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer


class ValidateOnStop(Callback):
    """Validate (and so checkpoint) on the batch where training stops early, whatever the epoch."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The Timer runs after user callbacks, so read its clock here rather than wait for its flag.
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = None if timer is None else timer.time_remaining()
        if remaining is not None and remaining <= 0:
            trainer.should_stop = True
        if trainer.should_stop and trainer.enable_validation:
            trainer.check_val_every_n_epoch = None  # the stopping batch validates


__all__ = ["ValidateOnStop"]
