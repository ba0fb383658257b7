"""RngStateCheckpoint: a resumed run with dropout draws the same masks as an uninterrupted one."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from mmfuse.training.callbacks.rng import RngStateCheckpoint, rng_states, set_rng_states


def test_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    torch.testing.assert_close(torch.rand(3), expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


class Dropout(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        return self.net(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(root: Path, max_steps: int, callbacks: list, ckpt_path: str | None = None) -> Dropout:
    torch.manual_seed(123)  # what seed_everything does at every start, resumed or not
    model = Dropout()
    trainer = L.Trainer(
        default_root_dir=root, max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, ModelCheckpoint(every_n_train_steps=4, save_last=True)],
    )  # fmt: skip
    # One batch repeated, so that the data position cannot matter, only the dropout masks can. The
    # loader has its own generator (as EpochLoader): creating its iterator draws nothing from the
    # global RNG.
    batches = [torch.randn(8, 4, generator=torch.Generator().manual_seed(0))] * 6
    loader = DataLoader(batches, batch_size=None, generator=torch.Generator().manual_seed(0))
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return model


def _resumed_equals_uninterrupted(tmp_path: Path, callbacks: list) -> bool:
    reference = _fit(tmp_path / "ref", 30, callbacks)
    _fit(tmp_path / "run", 16, callbacks)  # stopped mid-epoch 2 (6 batches an epoch)
    resumed = _fit(tmp_path / "run", 30, callbacks, ckpt_path="last")
    return all(torch.equal(resumed.state_dict()[k], v) for k, v in reference.state_dict().items())


def test_resume_draws_the_same_dropout_masks(tmp_path: Path) -> None:
    assert _resumed_equals_uninterrupted(tmp_path, [RngStateCheckpoint()])


def test_without_it_the_masks_differ(tmp_path: Path) -> None:
    """Positive control: Lightning's own checkpoint does not restore the RNGs."""
    assert not _resumed_equals_uninterrupted(tmp_path, [])
