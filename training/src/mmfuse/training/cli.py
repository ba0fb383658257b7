"""The ``mmfuse`` command: LightningCLI (fit / validate / test / predict) plus ``mmfuse report``.

Every stage is a LightningModule and every dataset a LightningDataModule chosen in YAML by
``class_path`` / ``init_args`` (one config system: jsonargparse). Defaults added here:

* ``checkpoint``: a ``ModelCheckpoint`` keeping ``last.ckpt`` and the best by ``checkpoint.monitor``;
* loggers: CSV always, TensorBoard when installed, both under ``trainer.default_root_dir``;
* the resolved config saved in the run directory, overwritten on requeue (Lightning's
  ``SaveConfigCallback`` with ``overwrite=True``) so a requeued SLURM job does not abort;
* ``trainer.use_distributed_sampler=False``: the webdataset pipeline splits shards by rank itself.
"""

from __future__ import annotations

import importlib.util
import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class MmfuseCLI(LightningCLI):
    """LightningCLI with mmfuse's checkpoint and logger defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.mode": "max"})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.logger in (None, True):
            root = trainer.default_root_dir or "runs"
            loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": root}}]
            if importlib.util.find_spec("tensorboard") is not None:
                loggers.append(
                    {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": root}}
                )
            trainer.logger = loggers


def cli_main(args: list[str] | None = None, run: bool = True) -> MmfuseCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, for tests."""
    return MmfuseCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        trainer_defaults={"use_distributed_sampler": False, "log_every_n_steps": 10},
        args=args,
        run=run,
    )


def main() -> None:
    """Console entry point ``mmfuse``."""
    if sys.argv[1:2] == ["report"]:
        from mmfuse.training.report import main as report_main

        report_main(sys.argv[2:])
        return
    cli_main()
