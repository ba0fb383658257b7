"""Throughput and MFU for any stage: Lightning's ThroughputMonitor with FLOPs counted on batch one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode
from typing_extensions import override


def leading_batch_size(batch: Any) -> int:
    """Samples in ``batch``: the leading dimension of its first tensor (dicts, lists, tuples searched).

    Raises:
        ValueError: If ``batch`` holds no tensor.
    """
    if isinstance(batch, Tensor):
        return batch.shape[0]
    children = (
        batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    )
    for child in children:
        try:
            return leading_batch_size(child)
        except ValueError:
            continue
    raise ValueError(f"no tensor in the batch to count samples from: {type(batch).__name__}")


class MeasuredThroughputMonitor(ThroughputMonitor):
    """:class:`~lightning.pytorch.callbacks.ThroughputMonitor` that needs no FLOPs formula.

    Lightning's monitor reads ``pl_module.flops_per_batch`` to turn batches per second into
    FLOPs per second and MFU (``device/mfu`` = achieved FLOPs / the device's peak for the
    precision, from Lightning's table of accelerators). When the stage defines no such attribute,
    this callback counts the FLOPs of the first training batch of the run - forward, backward and
    optimizer step, as executed - with :class:`torch.utils.flop_counter.FlopCounterMode`, and
    sets ``pl_module.flops_per_batch`` to that count. The counter sees the matmul/convolution/
    attention operators of ``torch.ops.aten`` (what MFU is defined over); fused kernels outside
    aten (flash-attn's varlen kernel) are not counted, so MFU is then an underestimate. Counting
    runs on global rank 0 only (where the monitor logs) and assumes every rank does the same
    work; batches are assumed to have a constant shape. Validation batches reuse the training
    count (Lightning's convention), which overstates their FLOPs by the backward pass.

    Metrics (logged every optimizer step, once ``window_size`` batches were seen):
    ``train/device/samples_per_sec``, ``train/device/flops_per_sec``, ``train/device/mfu`` (GPU
    or ``available_flops`` given), and the global ``train/samples_per_sec`` etc. when
    ``world_size > 1``.

    Args:
        batch_size_fn: samples in a batch; default :func:`leading_batch_size`.
        length_fn: items (tokens) in a batch, for ``items_per_sec``; default none.
        available_flops: peak FLOP/s of one device, overriding Lightning's table (needed for MFU
            on CPUs and accelerators Lightning does not know).
        window_size: batches in the rolling average.
    """

    def __init__(
        self,
        batch_size_fn: Callable[[Any], int] = leading_batch_size,
        length_fn: Callable[[Any], int] | None = None,
        available_flops: float | None = None,
        window_size: int = 100,
    ) -> None:
        super().__init__(batch_size_fn=batch_size_fn, length_fn=length_fn, window_size=window_size)
        self.peak_flops = available_flops
        self._counter: FlopCounterMode | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.peak_flops is not None:
            self.available_flops = int(self.peak_flops)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops

    @override
    @rank_zero_only
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._counter is None and not hasattr(pl_module, "flops_per_batch"):
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    @override
    @rank_zero_only
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            pl_module.flops_per_batch = self._counter.get_total_flops()
            self._counter = None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._counter is not None:
            self._counter.__exit__(type(exception), exception, exception.__traceback__)
            self._counter = None


__all__ = ["MeasuredThroughputMonitor", "leading_batch_size"]
