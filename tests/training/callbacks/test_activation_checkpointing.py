"""ActivationCheckpointing: same gradients, layers recomputed in backward, same state_dict keys."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmfuse.training.callbacks.activation_checkpointing import ActivationCheckpointing


class Block(nn.Module):
    calls = 0  # forward calls of every Block, over all instances

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Block.calls += 1
        return x + self.mlp(x)


class Stack(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(Block(), Block(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        return self.blocks(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _train(tmp_path: Path, callbacks: list) -> tuple[Stack, int]:
    Block.calls = 0
    model = Stack()
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    batches = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    trainer.fit(model, DataLoader(batches, batch_size=None))
    return model, Block.calls


def test_recomputes_in_backward_with_identical_results(tmp_path: Path) -> None:
    plain, plain_calls = _train(tmp_path / "plain", [])
    checkpointed, ckpt_calls = _train(tmp_path / "ckpt", [ActivationCheckpointing([f"{__name__}.Block"])])
    assert plain_calls == 2 * 3  # 2 blocks x 3 steps
    assert ckpt_calls == 2 * 2 * 3  # + one recomputation each in backward
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(checkpointed.state_dict()[name], value, rtol=0, atol=0)


def test_bad_layer_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot import layer class 'torch.nn.NoSuchLayer'"):
        ActivationCheckpointing(["torch.nn.NoSuchLayer"])
    with pytest.raises(ValueError, match="'torch.nn.functional.relu' is not an nn.Module class"):
        ActivationCheckpointing(["torch.nn.functional.relu"])
    with pytest.raises(ValueError, match=r"Stack has no \['Conv2d'\] layer"):
        _train(tmp_path, [ActivationCheckpointing(["torch.nn.Conv2d"])])
