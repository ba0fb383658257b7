"""The frozen reference model of the DPO family: a live eval-mode copy, or log-probs precomputed once.

Both give ``logps(micro_batch, split) -> [2b]``: the reference's summed completion log-probs of the
chosen rows then the rejected rows of a :func:`~mmfuse.training.data.preference.collate_pairs`
micro-batch, with no gradient and no dropout.

* :class:`FrozenReference`: a copy of the policy taken when the stage is built (after ``init_from``),
  frozen and always in eval mode; it doubles the model's memory and adds a forward per pair.
* :class:`CachedReference`: one pass over every training and held-out pair before the first step
  (``on_fit_start``), each rank scoring its share, the results gathered and written by rank 0 to one
  file that every rank then reads. TRL's ``precompute_ref_log_probs`` does this for text; here it
  works for any modality, because a pair is found by its sample key and checked by its fingerprint,
  not by its content type. The file is keyed by two fingerprints and refused on a mismatch: the
  reference's weights (SHA-256 of its state dict, so another ``init_from``, a retrained tower or
  another seed is caught) and the data's (the shards' bytes, the tokenizer and ``max_length``,
  :meth:`~mmfuse.training.data.preference.PreferenceDataModule.fingerprint`); each cached pair also
  keeps its own fingerprint (ids and media tensors), checked whenever it is read, which catches a
  changed media transform.

Shape letters: b pairs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn

from mmfuse.core.model import MultimodalLM
from mmfuse.training.data.preference import completion_logps, fingerprint


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 (hex) of a module's state dict (names sorted)."""
    return fingerprint(sorted(module.state_dict().items()))


class FrozenReference(nn.Module):
    """A frozen copy of ``model`` that stays in eval mode (``train()`` keeps it in eval)."""

    def __init__(self, model: MultimodalLM) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenReference:
        return super().train(False)

    @torch.no_grad()
    def logps(self, micro_batch: dict[str, Any], split: str) -> Tensor:
        """``[2b]`` float32 reference log-probs, chosen rows then rejected rows."""
        return completion_logps(self.model, micro_batch)


class CachedReference:
    """Reference log-probs of every pair, computed once and read from ``path`` (module docstring).

    Args:
        path: the cache file (``torch.save`` of plain tensors, lists and strings).
        reference_fingerprint: :func:`weights_fingerprint` of the reference, taken when the stage is
            built, before a resumed run restores its trained weights.
    """

    def __init__(self, path: str | Path, reference_fingerprint: str) -> None:
        self.path, self.reference_fingerprint = Path(path), reference_fingerprint
        self.splits: dict[str, dict[str, Any]] | None = None

    def prepare(self, model: MultimodalLM, datamodule: Any, strategy: Any) -> None:
        """Read the cache, computing it first when the file does not exist (idempotent).

        Args:
            model: the policy; it must still hold the reference's weights when the cache is computed.
            datamodule: a :class:`~mmfuse.training.data.preference.PreferenceDataModule` (``fingerprint``,
                ``reference_dataloaders``, ``micro_batch``).
            strategy: the trainer's strategy (device, rank, barrier).

        Raises:
            ValueError: the file's reference or data fingerprint is not this run's.
            RuntimeError: no file, and the model's weights are no longer the reference's (a resumed
                run whose cache was deleted).
        """
        if self.splits is not None:
            return
        data_fingerprint = datamodule.fingerprint()
        if not self.path.exists():
            if weights_fingerprint(model) != self.reference_fingerprint:
                raise RuntimeError(
                    f"reference log-prob cache {self.path} does not exist and the model's weights are no"
                    " longer the reference's (a resumed run?): restore the file or start from init_from"
                )
            self._build(model, datamodule, data_fingerprint, strategy)
        cache = torch.load(self.path, map_location="cpu", weights_only=True)
        for what, theirs, ours in (("reference weights", cache["reference"], self.reference_fingerprint),
                                   ("data", cache["data"], data_fingerprint)):  # fmt: skip
            if theirs != ours:
                raise ValueError(
                    f"reference log-prob cache {self.path} was computed for {what} {theirs[:12]}, but this"
                    f" run's {what} are {ours[:12]}: delete the file (or set another ref_logps_cache) to"
                    " recompute it"
                )
        self.splits = {
            split: {**table, "index": {key: i for i, key in enumerate(table["keys"])}}
            for split, table in cache["splits"].items()
        }

    @torch.no_grad()
    def _build(self, model: MultimodalLM, datamodule: Any, data_fingerprint: str, strategy: Any) -> None:
        was_training = model.training
        model.eval()
        splits = {}
        for split, loader in datamodule.reference_dataloaders().items():
            rows = []
            for batch in loader:
                micro_batch = move_data_to_device(datamodule.micro_batch(batch["chat"]), strategy.root_device)
                logps = completion_logps(model, micro_batch).view(2, -1).T.cpu()  # [2b] -> [b, 2]
                rows += zip(micro_batch["keys"], micro_batch["fingerprints"], logps, strict=True)
            rows = _gather(rows)
            keys = [key for key, _, _ in rows]
            if len(set(keys)) != len(keys):
                raise ValueError(
                    f"the {split} pairs have duplicate sample keys; the cache finds pairs by key"
                )
            logps = torch.stack([x for _, _, x in rows]) if rows else torch.zeros(0, 2)  # [n, 2]
            splits[split] = {"keys": keys, "fingerprints": [f for _, f, _ in rows], "logps": logps}
        model.train(was_training)
        if strategy.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            cache = {"reference": self.reference_fingerprint, "data": data_fingerprint, "splits": splits}
            torch.save(cache, partial)
            os.replace(partial, self.path)
        strategy.barrier("reference log-prob cache written")

    def logps(self, micro_batch: dict[str, Any], split: str) -> Tensor:
        """``[2b]`` float32 cached log-probs (chosen rows then rejected rows), on the batch's device.

        Raises:
            RuntimeError: :meth:`prepare` has not run.
            KeyError: a pair that is not in the cache.
            ValueError: a pair whose ids or media differ from the cached pair's.
        """
        if self.splits is None:
            raise RuntimeError("CachedReference.prepare must run before the first step (on_fit_start)")
        table, rows = self.splits[split], []
        for key, sample_fingerprint in zip(micro_batch["keys"], micro_batch["fingerprints"], strict=True):
            if key not in table["index"]:
                raise KeyError(f"{split} pair {key!r} is not in the reference log-prob cache {self.path}")
            row = table["index"][key]
            if table["fingerprints"][row] != sample_fingerprint:
                raise ValueError(
                    f"{split} pair {key!r} decodes differently from when {self.path} was computed (media"
                    " transforms, tokenizer or max_length changed): delete the file to recompute it"
                )
            rows.append(row)
        logps = table["logps"][rows]  # [b, 2]
        return logps.T.flatten().to(micro_batch["input_ids"].device)  # [2b]: chosen rows, then rejected


def _gather(rows: list) -> list:
    """Every rank's rows, rank after rank (this rank's alone outside a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rows
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part]


__all__ = ["CachedReference", "FrozenReference", "weights_fingerprint"]
