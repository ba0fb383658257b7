"""A run stopped early (max_time, a signal) still validates and writes its checkpoint."""

import time
from datetime import timedelta

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from mmfuse.training.callbacks.stop import ValidateOnStop


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


class CountValidations(Callback):
    def __init__(self) -> None:
        self.at_steps = []

    def on_validation_end(self, trainer, pl_module):
        self.at_steps.append(trainer.global_step)


def _fit(tmp_path, *callbacks, **trainer_kwargs):
    counter = CountValidations()
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=10, check_val_every_n_epoch=10, limit_train_batches=8,
        limit_val_batches=2, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        callbacks=[*callbacks, counter, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(BoringModel())
    return trainer, counter


@pytest.mark.parametrize("with_callback", [True, False])
def test_a_requested_stop_validates_and_checkpoints_only_with_the_callback(tmp_path, with_callback):
    callbacks = [ValidateOnStop()] if with_callback else []
    trainer, counter = _fit(tmp_path, StopAt(step=3), *callbacks)
    assert trainer.global_step == 3  # stopped in epoch 0 of 10; validation was due at epoch 9 only
    assert counter.at_steps == ([3] if with_callback else [])


class Slow(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(0.2)


def test_max_time_validates_at_the_stopping_step_and_checkpoints_after_it(tmp_path):
    trainer, counter = _fit(tmp_path, Slow(), ValidateOnStop(), max_time=timedelta(seconds=1))
    assert 0 < trainer.global_step < 80 and counter.at_steps == [trainer.global_step]
    assert (
        torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == trainer.global_step
    )
