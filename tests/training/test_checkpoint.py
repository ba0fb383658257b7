"""Atomic checkpoint writes: a save that fails or is SIGKILL-ed leaves the previous file whole."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from mmfuse.training.checkpoint import AtomicCheckpointIO, FinalStepCheckpoint, atomic_torch_save

# Both checkpoints are built in the parent: after a fork, the child must run no intra-op parallel
# kernel (the parent's OpenMP pool does not survive the fork), and torch.save runs none.
_FIRST = {"step": 1, "weight": torch.arange(100_000.0)}
_SECOND = {"step": 2, "weight": torch.zeros(100_000)}


def _save_then_block_mid_save(target: Path, marker: Path, point: str, writer: str) -> None:
    """Child process body: save ``_FIRST``, then block inside the save of ``_SECOND`` at ``point``."""
    save = atomic_torch_save if writer == "atomic" else torch.save

    def block_forever(*_: object) -> None:
        marker.touch()
        time.sleep(600)

    class BlocksWhilePickled:
        def __reduce__(self):
            block_forever()

    save(_FIRST, target)
    if point == "pickling":
        save({**_SECOND, "blocker": BlocksWhilePickled()}, target)
    else:  # "fsync": every byte is written, the rename has not happened yet
        os.fsync = block_forever
        save(_SECOND, target)


def _kill_child_mid_save(tmp_path: Path, point: str, writer: str) -> Path:
    """Fork a child running :func:`_save_then_block_mid_save`; SIGKILL it where it blocks."""
    target, marker = tmp_path / "last.ckpt", tmp_path / "blocked"
    child = multiprocessing.get_context("fork").Process(
        target=_save_then_block_mid_save, args=(target, marker, point, writer)
    )
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.is_alive(), f"child exited with {child.exitcode} before blocking"
            assert time.monotonic() < deadline, "child never reached the blocking point"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.join()
    assert child.exitcode == -signal.SIGKILL
    return target


@pytest.mark.parametrize("point", ["pickling", "fsync"])
def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path: Path, point: str) -> None:
    target = _kill_child_mid_save(tmp_path, point, writer="atomic")
    ckpt = torch.load(target, weights_only=True)
    assert ckpt["step"] == 1
    torch.testing.assert_close(ckpt["weight"], _FIRST["weight"], rtol=0, atol=0)
    # The killed writer's temporary file is hidden (never matches `last*.ckpt`) and the next save
    # of the same path sweeps it away.
    leftovers = sorted(p.name for p in tmp_path.glob(".last.ckpt.*.tmp"))
    assert len(leftovers) == 1
    atomic_torch_save({"step": 3}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "last.ckpt"]
    assert torch.load(target, weights_only=True) == {"step": 3}


def test_sigkill_harness_detects_a_truncating_writer(tmp_path: Path) -> None:
    """Positive control: plain ``torch.save(obj, path)`` opens (truncates) the target first."""
    target = _kill_child_mid_save(tmp_path, "pickling", writer="plain")
    assert target.stat().st_size == 0
    with pytest.raises(EOFError):
        torch.load(target, weights_only=True)


def test_failed_save_keeps_previous_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "ckpts" / "last.ckpt"
    atomic_torch_save({"step": 1}, target)
    with pytest.raises(AttributeError):  # a local lambda cannot be pickled
        atomic_torch_save({"step": 2, "fn": lambda: None}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_trainer_saves_through_the_plugin(tmp_path: Path) -> None:
    saved: list[str] = []

    class Recording(AtomicCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            saved.append(Path(path).name)
            super().save_checkpoint(checkpoint, path, storage_options)

    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=4,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[Recording()],
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)],
    )
    trainer.fit(BoringModel())
    assert isinstance(trainer.strategy.checkpoint_io, Recording)
    assert saved == ["epoch=0-step=2.ckpt", "last.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 4


@pytest.mark.parametrize("checkpoint_class", [ModelCheckpoint, FinalStepCheckpoint])
def test_last_ckpt_holds_the_final_step_on_a_step_schedule(tmp_path: Path, checkpoint_class) -> None:
    """Lightning's ModelCheckpoint(every_n_train_steps=2) leaves last.ckpt at step 4 of a 5-step run;
    mmfuse's writes the final step's."""
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=5, limit_val_batches=0, logger=False, enable_progress_bar=False,
        callbacks=[checkpoint_class(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)],
    )  # fmt: skip
    trainer.fit(BoringModel())
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == (4 if checkpoint_class is ModelCheckpoint else 5)
