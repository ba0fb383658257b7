"""CLI smoke test of ``training/configs/align/audio_text.yaml`` on the embedded audio shards."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mmfuse.training.cli import cli_main

REPO = Path(__file__).parents[2]
CONFIG = REPO / "training/configs/align/audio_text.yaml"


@pytest.mark.slow
def test_audio_text_config_trains_and_evaluates_zero_shot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO)  # the config's shard paths are relative to the repository
    cli = cli_main(
        ["fit", f"--config={CONFIG}", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1",
         "--trainer.limit_train_batches=2", "--trainer.check_val_every_n_epoch=1",
         "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false"]
    )  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 2
    assert math.isfinite(float(metrics["train/loss"]))
    assert 0.0 <= float(metrics["val/zeroshot_top1"]) <= 1.0  # the 36-class held-out task ran
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
