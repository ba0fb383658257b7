"""The ``mmfuse`` command: LightningCLI (fit / validate / test / predict) and the commands of
:data:`COMMANDS` (``mmfuse report``, ``eval``, ``data``, ``flywheel``, ``merge``, ``export``, ``chat``,
``pipeline``).

Every stage is a LightningModule and every dataset a LightningDataModule chosen in YAML by
``class_path`` / ``init_args`` (one config system: jsonargparse). Defaults added here:

* ``checkpoint``: a ``ModelCheckpoint`` (:class:`~mmfuse.training.checkpoint.FinalStepCheckpoint`:
  ``last.ckpt`` always of the final step) keeping ``last.ckpt`` and the best by ``checkpoint.monitor``,
  in ``<trainer.default_root_dir>/checkpoints`` (one directory for every start of a run, so
  ``--ckpt_path last`` finds the previous start's checkpoint);
* checkpoints written atomically (:class:`~mmfuse.training.checkpoint.AtomicCheckpointIO`) unless
  ``trainer.plugins`` is set;
* ``nonfinite``: :class:`~mmfuse.training.callbacks.guards.NonFiniteLossGuard` (stop; or skip);
* ``requeue``: :class:`~mmfuse.training.callbacks.requeue.RequeueOnSignal` (SLURM jobs only);
* ``validate_on_stop``: :class:`~mmfuse.training.callbacks.stop.ValidateOnStop` (a run stopped by
  ``max_time`` or a signal still validates and writes its checkpoints);
* ``rng_state``: :class:`~mmfuse.training.callbacks.rng.RngStateCheckpoint` (RNGs in checkpoints);
* ``throughput``: :class:`~mmfuse.training.callbacks.throughput.MeasuredThroughputMonitor` (MFU);
* ``ema_decay``: an exponential moving average of the weights in every stage, Lightning's
  :class:`~lightning.pytorch.callbacks.EMAWeightAveraging` (``ema = d * ema + (1 - d) * w`` after every
  optimizer step, the first step copies): validation runs on the averaged weights, checkpoints hold
  them as ``state_dict`` (so ``init_from``, ``mmfuse eval`` and ``mmfuse export`` read them) and the raw
  weights as ``current_model_state`` (so ``--ckpt_path`` resumes both). For its other options
  (``update_starting_at_step``...) list the callback in ``trainer.callbacks`` instead;
* loggers: CSV always (``lightning_logs/version_N``), TensorBoard when installed
  (``tensorboard/version_N``), both under ``trainer.default_root_dir`` (default ``runs``);
* the resolved config and the run manifest (:class:`~mmfuse.training.callbacks.manifest.RunManifest`)
  saved in each start's log directory, overwritten on requeue so a requeued SLURM job does not abort;
* ``trainer.use_distributed_sampler=False``: the webdataset pipeline splits shards by rank itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mmfuse.training.callbacks.guards import NonFiniteLossGuard
from mmfuse.training.callbacks.manifest import RunManifest
from mmfuse.training.callbacks.requeue import RequeueOnSignal
from mmfuse.training.callbacks.rng import RngStateCheckpoint
from mmfuse.training.callbacks.stop import ValidateOnStop
from mmfuse.training.callbacks.throughput import MeasuredThroughputMonitor
from mmfuse.training.checkpoint import FinalStepCheckpoint


class MmfuseCLI(LightningCLI):
    """LightningCLI with mmfuse's checkpoint and logger defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(FinalStepCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.mode": "max"})
        parser.add_lightning_class_args(NonFiniteLossGuard, "nonfinite")
        parser.add_lightning_class_args(RequeueOnSignal, "requeue")
        parser.add_lightning_class_args(RngStateCheckpoint, "rng_state")
        parser.add_lightning_class_args(ValidateOnStop, "validate_on_stop")
        parser.add_lightning_class_args(MeasuredThroughputMonitor, "throughput")
        parser.add_argument(
            "--ema_decay", type=float | None, default=None,
            help="EMA of the weights with this decay (e.g. 0.999); evaluation and checkpoints use it",
        )  # fmt: skip

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        root = trainer.default_root_dir = trainer.default_root_dir or "runs"
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = os.path.join(root, "checkpoints")
        if trainer.plugins is None:
            trainer.plugins = [{"class_path": "mmfuse.training.checkpoint.AtomicCheckpointIO"}]
        if trainer.logger in (None, True):
            loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": root}}]
            if importlib.util.find_spec("tensorboard") is not None:
                loggers.append(
                    # its own name: two loggers in one `lightning_logs` take two different version_N
                    {
                        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {"save_dir": root, "name": "tensorboard"},
                    }
                )
            trainer.logger = loggers
        callbacks = trainer.callbacks if isinstance(trainer.callbacks, list) else [trainer.callbacks]
        callbacks = [c for c in callbacks if c is not None]
        ema = "lightning.pytorch.callbacks.EMAWeightAveraging"
        if config.ema_decay is not None and not any(c.get("class_path") == ema for c in callbacks):
            # added once: a saved config re-run already lists it
            trainer.callbacks = [*callbacks, {"class_path": ema, "init_args": {"decay": config.ema_decay}}]


def cli_main(args: list[str] | None = None, run: bool = True) -> MmfuseCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, for tests."""
    return MmfuseCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunManifest,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        trainer_defaults={"use_distributed_sampler": False, "log_every_n_steps": 10},
        args=args,
        run=run,
    )


#: ``mmfuse <name> ...`` beside LightningCLI's subcommands: name -> the module whose ``main(argv)`` runs
#: it (its return value, if any, is the exit status).
COMMANDS = {
    "report": "mmfuse.training.report",
    "eval": "mmfuse.training.evaluation",
    "data": "mmfuse.training.datatools",
    "flywheel": "mmfuse.training.flywheel",
    "merge": "mmfuse.training.merge",
    "export": "mmfuse.training.export",
    "chat": "mmfuse.training.chat",
    "pipeline": "mmfuse.training.pipeline",
}


def main() -> None:
    """Console entry point ``mmfuse``."""
    if sys.argv[1:2] and sys.argv[1] in COMMANDS:
        status = importlib.import_module(COMMANDS[sys.argv[1]]).main(sys.argv[2:])
        if status:
            sys.exit(status)
        return
    cli_main()
