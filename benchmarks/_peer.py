"""What the benchmarks against TRL share: the tiny model, step timers on both trainers, interleaved runs.

Imported by the scripts beside it (``python benchmarks/<name>.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import statistics
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = str(REPO / "data" / "tokenizer")
#: the embedded configs' tiny Llama (training/configs/models/embedded.yaml): random init, no fusion blocks
#: when built with ``cross_attn_every_n_layers`` beyond its depth.
LM = yaml.safe_load((REPO / "training" / "configs" / "models" / "embedded.yaml").read_text())["init_args"][
    "lm"
]


def train_records(folder: str) -> Iterator[tuple[str, dict]]:
    """(sample key, JSON record) of every sample of ``data/<folder>``'s train shards, in shard order."""
    for path in sorted((REPO / "data" / folder).glob("train-*.tar.gz")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    yield member.name.removesuffix(".json"), json.load(tar.extractfile(member))


class Timer:
    """Wraps ``obj.name`` to add the seconds spent in it to :attr:`seconds`."""

    def __init__(self, obj: object, name: str) -> None:
        self.seconds, inner = 0.0, getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(obj, name, timed)


class StepTimer(TrainerCallback):
    """Seconds of each optimizer step of a transformers ``Trainer`` (``on_step_begin`` .. ``on_step_end``:
    forward to zero_grad; the batch is fetched and collated before ``on_step_begin``)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.start)


def interleaved(
    runs: dict[str, Callable[[], list[float]]], repeats: int, unit: str = "tokens/s", digits: int = 0
) -> dict[str, list[list[float]]]:
    """Every run once per round, in order, for ``repeats`` rounds: each run's step rates (in ``unit``,
    printed with ``digits`` decimals), by name."""
    results: dict[str, list[list[float]]] = {name: [] for name in runs}
    for round_ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
            print(f"  round {round_ + 1}/{repeats} {name}: median step "
                  f"{statistics.median(results[name][-1]):,.{digits}f} {unit}",
                  flush=True)  # fmt: skip
    return results


def trl_settings(trainer) -> dict:
    """The settings every TRL trainer runs with, read back from it (not from what was passed):
    precision, checkpointing, attention, optimiser, schedule, batching, sampling; each benchmark adds
    its trainer's own (``padding_free``, ``beta``, ...)."""
    a, model = trainer.args, trainer.model
    return {
        "dtype": str(next(model.parameters()).dtype), "bf16": a.bf16, "fp16": a.fp16,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "gradient_checkpointing": a.gradient_checkpointing,
        "attn_implementation": model.config._attn_implementation, "optim": a.optim,
        "lr": a.learning_rate, "betas": (a.adam_beta1, a.adam_beta2), "eps": a.adam_epsilon,
        "weight_decay": a.weight_decay, "max_grad_norm": a.max_grad_norm,
        "lr_scheduler_type": a.lr_scheduler_type,
        "per_device_train_batch_size": a.per_device_train_batch_size,
        "gradient_accumulation_steps": a.gradient_accumulation_steps,
        "train_sampling_strategy": a.train_sampling_strategy, "torch_compile": a.torch_compile,
        "use_liger_kernel": a.use_liger_kernel, "dataloader_num_workers": a.dataloader_num_workers,
        "device": str(a.device),
    }  # fmt: skip


def settings_line(settings: dict) -> str:
    """``k=v, ...`` (enums by value)."""
    return ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in settings.items())
