"""NonFiniteLossGuard: stop with a message naming the last good checkpoint, or skip and count."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from mmfuse.training.callbacks.guards import NonFiniteLossError, NonFiniteLossGuard


def _batches(num: int, nan_at: set[int] = frozenset()) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``num`` fixed (x [4, 3], y [4, 1]) batches; batch i in ``nan_at`` has a NaN input."""
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, generator=gen), torch.randn(4, 1, generator=gen)) for _ in range(num)]
    for i in nan_at:
        batches[i][0][0, 0] = float("nan")
    return batches


class Regression(L.LightningModule):
    """Linear regression with Adam (moments make a skipped step distinguishable from a zero step)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)


def _fit(
    tmp_path: Path, batches, guard: NonFiniteLossGuard, **trainer_kwargs
) -> tuple[Regression, L.Trainer]:
    model = Regression()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing="callbacks" in trainer_kwargs,
        callbacks=[guard, *trainer_kwargs.pop("callbacks", [])],
        **trainer_kwargs,
    )
    trainer.fit(model, DataLoader(batches, batch_size=None))
    return model, trainer


def test_stop_raises_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    with pytest.raises(NonFiniteLossError) as info:
        _fit(tmp_path, _batches(6, nan_at={3}), NonFiniteLossGuard(), callbacks=[checkpoint])
    last = tmp_path / "ckpt" / "last.ckpt"
    message = str(info.value)
    assert "Non-finite training loss at global step 3 (epoch 0, batch 3)" in message
    assert "local loss on rank 0: nan" in message
    assert f"last checkpoint: {last}" in message
    state = torch.load(last, weights_only=False)
    assert state["global_step"] == 3
    # The checkpoint is the run after 3 clean steps: equal to an uninterrupted 3-batch run.
    clean, _ = _fit(tmp_path / "clean", _batches(3), NonFiniteLossGuard())
    for name, value in clean.state_dict().items():
        torch.testing.assert_close(state["state_dict"][name], value, rtol=0, atol=0)


def test_stop_before_any_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="last checkpoint: none written yet"):
        _fit(tmp_path, _batches(2, nan_at={0}), NonFiniteLossGuard())


def test_skip_drops_the_step_and_counts_it(tmp_path: Path) -> None:
    guard = NonFiniteLossGuard(mode="skip")
    skipped_run, trainer = _fit(tmp_path, _batches(5, nan_at={2}), guard)
    assert guard.skipped == 1 and trainer.global_step == 5
    assert trainer.callback_metrics["train/nonfinite_skipped"] == 1.0
    # Parameters and Adam moments untouched by the NaN batch: same as training without it.
    batches = _batches(5)
    reference, _ = _fit(tmp_path / "ref", [b for i, b in enumerate(batches) if i != 2], NonFiniteLossGuard())
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(skipped_run.state_dict()[name], value, rtol=0, atol=0)


def test_skip_with_accumulation_drops_the_whole_accumulated_step(tmp_path: Path) -> None:
    guard = NonFiniteLossGuard(mode="skip")
    model, trainer = _fit(tmp_path, _batches(4, nan_at={1}), guard, accumulate_grad_batches=2)
    assert guard.skipped == 1 and trainer.global_step == 2
    reference, _ = _fit(tmp_path / "ref", _batches(4)[2:], NonFiniteLossGuard(), accumulate_grad_batches=2)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)


def test_skip_stops_past_max_skipped_and_count_survives_checkpoints(tmp_path: Path) -> None:
    guard = NonFiniteLossGuard(mode="skip", max_skipped=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    with pytest.raises(NonFiniteLossError, match="2 optimizer steps skipped, more than max_skipped=1"):
        _fit(tmp_path, _batches(5, nan_at={1, 3}), guard, callbacks=[checkpoint])
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert state["callbacks"]["NonFiniteLossGuard"] == {"skipped": 1}
    restored = NonFiniteLossGuard(mode="skip")
    restored.load_state_dict(state["callbacks"]["NonFiniteLossGuard"])
    assert restored.skipped == 1


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"mode": "ignore"}, "mode must be"), ({"max_skipped": -1}, ">= 0")]
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NonFiniteLossGuard(**kwargs)
