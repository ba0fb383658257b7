"""MeasuredThroughputMonitor: FLOPs of the first batch counted exactly, MFU from a given peak."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from mmfuse.training.callbacks.throughput import MeasuredThroughputMonitor, leading_batch_size

B, D_IN, D_HID, D_OUT = 8, 16, 32, 4  # batch, widths


class TwoLayers(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(D_IN, D_HID), torch.nn.ReLU(), torch.nn.Linear(D_HID, D_OUT)
        )

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.net(batch["x"]), batch["y"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class MemoryLogger(Logger):
    name, version = "memory", 0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_counts_forward_backward_flops_and_logs_mfu(tmp_path: Path) -> None:
    data = [{"x": torch.randn(B, D_IN), "y": torch.randn(B, D_OUT), "text": ["t"] * B} for _ in range(6)]
    logger, model = MemoryLogger(), TwoLayers()
    monitor = MeasuredThroughputMonitor(available_flops=1e9, window_size=3)
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=6, logger=logger, log_every_n_steps=1, callbacks=[monitor],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=None))
    # Forward 2B(D_IN D_HID + D_HID D_OUT); backward: weight grads as much again + layer 2's input grad
    # (layer 1's input needs no grad). Bias adds, ReLU, the loss and SGD are not matmul FLOPs.
    assert model.flops_per_batch == 4 * B * D_IN * D_HID + 6 * B * D_HID * D_OUT
    last = logger.rows[-1][1]
    assert last["train/samples"] == 6 * B and last["train/batches"] == 6
    assert last["train/device/mfu"] == pytest.approx(last["train/device/flops_per_sec"] / 1e9)
    assert last["train/device/flops_per_sec"] == pytest.approx(
        2 * model.flops_per_batch / (last["train/time"] - _time_at(logger, batches=4))
    )


def _time_at(logger: MemoryLogger, batches: int) -> float:
    return next(m["train/time"] for _, m in logger.rows if m.get("train/batches") == batches)


def test_a_stage_formula_wins_over_counting(tmp_path: Path) -> None:
    model = TwoLayers()
    model.flops_per_batch = 123
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=2, logger=False, callbacks=[MeasuredThroughputMonitor()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(
        model, DataLoader([{"x": torch.randn(B, D_IN), "y": torch.randn(B, D_OUT)}] * 2, batch_size=None)
    )
    assert model.flops_per_batch == 123


def test_leading_batch_size() -> None:
    assert leading_batch_size({"text": ["a", "b"], "meta": [{}], "pixel_values": torch.zeros(5, 3)}) == 5
    assert leading_batch_size((torch.zeros(7, 2), torch.zeros(7))) == 7
    assert leading_batch_size({"nested": {"input_ids": torch.zeros(3, 4)}}) == 3
    with pytest.raises(ValueError, match="no tensor"):
        leading_batch_size({"text": ["a"]})
