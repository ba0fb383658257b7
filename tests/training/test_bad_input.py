"""Bad input fails early and says where: config keys and types, shard paths, guard settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from shards import color_shards

from mmfuse.training.cli import cli_main

CONFIG = Path(__file__).parent / "tiny_align.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    color_shards(root, num_shards=4, per_shard=16)
    return root


def _parse_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The message after ``error:`` of a CLI that refuses ``args`` (not the usage text before it)."""
    with pytest.raises(SystemExit) as info:
        cli_main([f"--config={CONFIG}", *args], run=False)
    assert info.value.code == 2
    return capsys.readouterr().err.rpartition("error:")[2]


def _shards(root: Path) -> list[str]:
    return [
        f"--data.init_args.train_shards={root}/train-{{000000..000003}}.tar",
        "--data.init_args.val_shards=null",
    ]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--trainer.max_stepz=3"], ["unrecognized arguments: --trainer.max_stepz=3"]),
        (
            ["--trainer.max_steps=many"],
            ['Parser key "trainer.max_steps"', "Expected a <class 'int'>. Got value: many"],
        ),
        (["--model.init_args.lr=fast"], ['Parser key "lr"', "Expected a <class 'float'>. Got value: fast"]),
        (["--model.init_args.warmup_stepz=1"], ["warmup_stepz"]),
        (["--nonfinite.mode=ignore"], ['Parser key "nonfinite.mode"', "Got value: ignore"]),
    ],
)
def test_config_errors_name_the_field(
    capsys: pytest.CaptureFixture[str], shards: Path, args: list[str], said: list[str]
) -> None:
    err = _parse_error(capsys, *_shards(shards), *args)
    assert all(s in err for s in said), err


def test_unknown_key_in_a_config_file_is_named(
    capsys: pytest.CaptureFixture[str], shards: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochz: 3\n")
    err = _parse_error(capsys, *_shards(shards), f"--config={bad}")
    assert "'trainer' does not accept option 'max_epochz'" in err, err


def test_missing_shard_names_the_path(shards: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"shard not found: {missing}/train-000000.tar"):
        cli_main(
            ["fit", f"--config={CONFIG}", f"--trainer.default_root_dir={tmp_path / 'run'}",
             f"--data.init_args.train_shards={missing}/train-{{000000..000001}}.tar",
             "--data.init_args.val_shards=null"]
        )  # fmt: skip


def test_defaults_the_cli_adds(shards: Path, tmp_path: Path) -> None:
    from mmfuse.training.callbacks.guards import NonFiniteLossGuard
    from mmfuse.training.callbacks.requeue import RequeueOnSignal
    from mmfuse.training.callbacks.rng import RngStateCheckpoint
    from mmfuse.training.callbacks.throughput import MeasuredThroughputMonitor
    from mmfuse.training.checkpoint import AtomicCheckpointIO

    root = tmp_path / "run"
    cli = cli_main([f"--config={CONFIG}", f"--trainer.default_root_dir={root}", *_shards(shards),
                    "--nonfinite.mode=skip"], run=False)  # fmt: skip
    trainer = cli.trainer
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert trainer.checkpoint_callback.dirpath == str(root / "checkpoints")
    kinds = {type(cb): cb for cb in trainer.callbacks}
    assert kinds[NonFiniteLossGuard].mode == "skip"
    assert {RequeueOnSignal, RngStateCheckpoint, MeasuredThroughputMonitor} <= set(kinds)
    assert [type(lg).__name__ for lg in trainer.loggers] == ["CSVLogger", "TensorBoardLogger"]
    assert trainer.loggers[1].root_dir == str(root / "tensorboard")
