"""Random number generator states in checkpoints, so that a resumed run draws the same numbers.

Lightning checkpoints hold weights, optimizer, schedulers, loop progress and dataloader state, but
not the global RNGs: a resumed run draws its dropout masks, patch/tube masks and other main-process
randomness from wherever ``seed_everything`` and model construction left the generators, not from
where the interrupted run was. :class:`RngStateCheckpoint` stores them (as tensors and plain
Python values, so ``torch.load(weights_only=True)`` accepts the checkpoint) and restores them.
Dataloader workers need nothing here: their seeds derive from (seed, epoch) (see
:class:`mmfuse.core.data.EpochLoader`).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


def rng_states() -> dict[str, Any]:
    """The global RNG states: torch CPU, the current CUDA device (if any), numpy and ``random``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }  # fmt: skip


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    n = states["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class RngStateCheckpoint(Callback):
    """Saves the global RNG states with every checkpoint and restores them on resume.

    The checkpoint is written by global rank 0, so every rank resumes with rank 0's states: exact
    for the usual setup where all ranks are seeded alike (``seed_everything``) and draw alike.
    """

    @override
    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict)


__all__ = ["RngStateCheckpoint", "rng_states", "set_rng_states"]
