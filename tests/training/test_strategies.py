"""Strategies and precision come from the config: bf16 mixed precision, gradient accumulation,
clipping and activation checkpointing compose with the alignment stage and mmfuse's callbacks.
Multi-process DDP runs in ``tests/slurm``; FSDP needs CUDA in Lightning 2.6."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from shards import color_shards
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from mmfuse.training.callbacks.throughput import MeasuredThroughputMonitor
from mmfuse.training.cli import cli_main

CONFIG = Path(__file__).parent / "tiny_align.yaml"
BLOCK = "open_clip.transformer.ResidualAttentionBlock"
CHECKPOINTING = "mmfuse.training.callbacks.activation_checkpointing.ActivationCheckpointing"


@pytest.fixture(scope="module")
def shard_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    return [f"--data.init_args.train_shards={color_shards(root, 4, 16)}", "--data.init_args.val_shards=null"]


def _fit(root: Path, shard_args: list[str], *args: str):
    return cli_main(
        ["fit", f"--config={CONFIG}", f"--trainer.default_root_dir={root}", *shard_args,
         "--trainer.max_steps=3", "--trainer.accumulate_grad_batches=2",
         f"--trainer.callbacks+={CHECKPOINTING}", f"--trainer.callbacks.layer_classes=[{BLOCK}]", *args]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("precision", "clip"),
    [
        ("bf16-mixed", None),
        ("32-true", 1.0),
        pytest.param("bf16-mixed", 1.0, marks=pytest.mark.slow),
    ],
)
def test_precision_accumulation_clipping_and_activation_checkpointing(
    tmp_path: Path, shard_args: list[str], precision: str, clip: float | None
) -> None:
    clipping = [f"--trainer.gradient_clip_val={clip}"] if clip else []
    cli = _fit(tmp_path, shard_args, f"--trainer.precision={precision}", *clipping)
    trainer, model = cli.trainer, cli.model
    assert trainer.precision == precision and trainer.gradient_clip_val == clip
    assert trainer.global_step == 3 and trainer.fit_loop.epoch_loop.batch_progress.total.completed == 6
    assert math.isfinite(trainer.callback_metrics["train/loss"])
    assert len([m for m in model.modules() if isinstance(m, CheckpointWrapper)]) == 2  # vision + text block
    monitor = next(cb for cb in trainer.callbacks if isinstance(cb, MeasuredThroughputMonitor))
    assert monitor.available_flops is None and model.flops_per_batch > 0  # CPU: FLOPs, but no peak -> no MFU
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any("_checkpoint_wrapped_module" in name for name in state)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="Lightning's FSDPStrategy requires a CUDA accelerator"
)
def test_fsdp_bf16_with_activation_checkpointing_policy(tmp_path: Path, shard_args: list[str]) -> None:
    cli = cli_main(
        ["fit", f"--config={CONFIG}", f"--trainer.default_root_dir={tmp_path}", *shard_args,
         "--trainer.max_steps=3", "--trainer.accelerator=cuda", "--trainer.strategy=FSDPStrategy",
         f"--trainer.strategy.activation_checkpointing_policy=[{BLOCK}]", "--trainer.precision=bf16-mixed"]
    )  # fmt: skip
    assert isinstance(cli.trainer.strategy, FSDPStrategy) and cli.trainer.global_step == 3
    assert len([m for m in cli.model.modules() if isinstance(m, CheckpointWrapper)]) == 2
    assert cli.trainer.callback_metrics["train/device/mfu"] > 0
