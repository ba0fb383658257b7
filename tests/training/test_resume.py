"""Reproducible runs and exact resume through the ``mmfuse`` CLI on a tiny alignment run.

* Same seeds -> same batches (sample keys) and same losses; another data seed -> another order.
* ``kill -9`` mid-epoch, then ``mmfuse fit ... --ckpt_path last``: the run continues at the
  checkpoint's optimizer step and data position, and its losses, validation metrics and final
  weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shards import color_shards

from mmfuse.training.cli import cli_main

HERE = Path(__file__).parent
CONFIG = HERE / "tiny_align.yaml"
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def shard_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    train = color_shards(root, num_shards=4, per_shard=16)
    return [f"--data.init_args.train_shards={train}", f"--data.init_args.val_shards={root}/train-000000.tar"]


@pytest.fixture(autouse=True)
def probes_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))  # `probes.RecordSteps` by class path


def _fit(root: Path, shard_args: list[str], *args: str):
    """One in-process ``mmfuse fit`` of the tiny config; the trainer's RecordSteps probe."""
    cli = cli_main(
        ["fit", f"--config={CONFIG}", f"--trainer.default_root_dir={root}", *shard_args,
         "--trainer.callbacks+=probes.RecordSteps", *args]
    )  # fmt: skip
    return cli.trainer, next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "RecordSteps")


def _metrics(path: Path) -> dict[str, dict[int, float]]:
    """``{metric: {step: value}}`` of one metrics.csv."""
    out: dict[str, dict[int, float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                if value and name not in ("epoch", "step"):
                    out.setdefault(name, {})[int(row["step"])] = float(value)
    return out


def test_same_seed_same_batches_and_losses(tmp_path: Path, shard_args: list[str]) -> None:
    args = ("--trainer.max_steps=3", "--trainer.limit_val_batches=0")
    _, first = _fit(tmp_path / "a", shard_args, *args)
    _, again = _fit(tmp_path / "b", shard_args, *args)
    _, other_data = _fit(tmp_path / "c", shard_args, *args, "--data.init_args.seed=1")
    _, other_init = _fit(tmp_path / "d", shard_args, *args, "--seed_everything=1")
    assert [s for s, _, _ in first.steps] == [0, 1, 2]
    assert first.steps == again.steps  # keys and losses, exactly
    assert [k for _, k, _ in other_data.steps] != [k for _, k, _ in first.steps]
    assert [k for _, k, _ in other_init.steps] == [k for _, k, _ in first.steps]  # data order: data.seed
    assert other_init.steps[0][2] != first.steps[0][2]  # weights: seed_everything


@pytest.mark.slow  # three runs, one of them a fresh process: ~1-2 min on 2 cores
def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, shard_args: list[str]
) -> None:
    # Epochs are 8 steps, checkpoints every 4: the kill at step 10 is mid-epoch 1, 2 steps after
    # the last checkpoint (step 8), with 2 dataloader workers in flight.
    full_trainer, full = _fit(tmp_path / "full", shard_args)

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", "from mmfuse.training.cli import main; main()", "fit", f"--config={CONFIG}",
         f"--trainer.default_root_dir={killed}", *shard_args, "--trainer.callbacks+=probes.KillAtStep",
         "--trainer.callbacks.step=10"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8

    resumed_trainer, resumed = _fit(killed, shard_args, "--ckpt_path=last")
    assert [s for s, _, _ in resumed.steps] == list(range(8, 20))
    assert resumed_trainer.global_step == full_trainer.global_step == 20
    assert resumed.steps == full.steps[8:]  # same batches (keys), same losses

    full_metrics = _metrics(tmp_path / "full/lightning_logs/version_0/metrics.csv")
    resumed_metrics = _metrics(killed / "lightning_logs/version_1/metrics.csv")
    for name in ("train/loss", "val/color_top1", "val/i2t_r1", "val/t2i_r1"):
        after_resume = {s: v for s, v in full_metrics[name].items() if s >= 8}
        assert after_resume and resumed_metrics[name] == pytest.approx(after_resume, rel=1e-6), name
    full_state = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    resumed_state = torch.load(killed / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    for name, value in full_state.items():
        torch.testing.assert_close(resumed_state[name], value, rtol=1e-6, atol=1e-7)
