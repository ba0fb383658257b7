"""Zero-shot classification and cross-modal retrieval on the validation split.

Zero-shot follows CLIP (Radford et al. 2021, Sec. 3.1.4): each class is embedded as the mean of
its L2-normalised prompt embeddings over templates, renormalised (prompt ensembling); a sample is
predicted as the class of highest cosine similarity. Templates are Python format strings over the
sample's ``meta`` with the class substituted into ``class_field``, so a prompt can also use other
fields ("{object} moving {direction}").

Retrieval treats identical captions as the same text: media i -> text retrieval scores a hit at k
when one of the k nearest texts has media i's caption (and text -> media symmetrically). The
chance level of that definition is logged beside it (``val/i2t_r5_chance``): for a random ranking
of N texts of which m share the caption, ``1 - C(N - m, k) / C(N, k)``, averaged over queries.
"""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ZeroShotTask:
    """One zero-shot classification over a filtered part of the val split.

    Attributes:
        name: metric prefix: ``val/<name>_top1``.
        class_field: the ``meta`` field holding the class (e.g. ``"label"``, ``"direction"``).
        templates: prompt format strings over ``meta`` fields, e.g. ``"a photo of {label}"``.
        where: keep only samples whose meta has these values, e.g. ``{"source": "digits"}``.
    """

    name: str = "zeroshot"
    class_field: str = "label"
    templates: list[str] = field(default_factory=lambda: ["{label}"])
    where: dict[str, Any] = field(default_factory=dict)


def _gather_objects(obj: Any) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def recall_hits(
    similarity: Tensor, query_captions: list[str], item_captions: list[str], k: int
) -> list[bool]:
    """Per query: is an item of its caption among the top-k by ``similarity [q, n]``?"""
    top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices  # [q, k]
    return [any(item_captions[j] == query_captions[i] for j in row) for i, row in enumerate(top.tolist())]


def recall_at_k(similarity: Tensor, query_captions: list[str], item_captions: list[str], k: int) -> float:
    """Fraction of queries with an item of the same caption among the top-k by ``similarity [q, n]``."""
    hits = recall_hits(similarity, query_captions, item_captions, k)
    return sum(hits) / len(hits)


def chance_recall_at_k(query_captions: list[str], item_captions: list[str], k: int) -> float:
    """Expected recall@k of a uniformly random ranking (see module docstring)."""
    n, counts = len(item_captions), Counter(item_captions)
    total = 0.0
    for caption in query_captions:
        miss = 1.0  # P(none of the k draws without replacement has the caption)
        for i in range(min(k, n)):
            miss *= max(n - counts[caption] - i, 0) / (n - i)
        total += 1 - miss
    return total / len(query_captions)


class ZeroShotRetrieval(L.Callback):
    """Logs ``val/<task>_top1`` per zero-shot task and ``val/{i2t,t2i}_r{k}`` on the whole val split.

    Collects ``validation_step``'s ``media_embeds``/``text_embeds`` with the batch's ``text`` and
    ``meta``, gathers them from every rank at epoch end, and encodes prompts with the stage's
    ``embed_text`` and the datamodule's tokenizer. Skipped during Lightning's sanity check.

    Args:
        tasks: zero-shot tasks (none: retrieval only).
        recall_at: the k of recall@k.
    """

    def __init__(
        self, tasks: list[ZeroShotTask] | None = None, recall_at: tuple[int, ...] = (1, 5, 10)
    ) -> None:
        self.tasks = tasks or []
        self.recall_at = recall_at
        self._rows: list[tuple[Tensor, Tensor, str, dict, str]] = []
        self._outcomes: dict[str, dict[str, bool]] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if trainer.sanity_checking:
            return
        media, text = outputs["media_embeds"].float().cpu(), outputs["text_embeds"].float().cpu()
        keys = batch.get("__key__") or [str(len(self._rows) + i) for i in range(len(media))]
        self._rows.extend(zip(media, text, batch["text"], batch["meta"], keys, strict=True))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        rows = [row for part in _gather_objects(self._rows) for row in part]
        self._rows = []
        if not rows:
            return
        media = torch.stack([r[0] for r in rows])  # [n, e]
        texts = torch.stack([r[1] for r in rows])  # [n, e]
        captions = [r[2] for r in rows]
        metas, keys = [r[3] for r in rows], [r[4] for r in rows]
        similarity = media @ texts.T  # [n, n]
        outcomes: dict[str, dict[str, bool]] = {}
        metrics: dict[str, float] = {}
        for k in self.recall_at:
            outcomes[f"val/i2t_r{k}"] = dict(
                zip(keys, recall_hits(similarity, captions, captions, k), strict=True)
            )
            outcomes[f"val/t2i_r{k}"] = dict(
                zip(keys, recall_hits(similarity.T, captions, captions, k), strict=True)
            )
            metrics[f"val/i2t_r{k}_chance"] = chance_recall_at_k(captions, captions, k)
        for task in self.tasks:
            correct = self._zeroshot(task, media, metas, trainer, pl_module)
            if correct:
                outcomes[f"val/{task.name}_top1"] = {keys[i]: hit for i, hit in correct.items()}
        self._outcomes = outcomes
        metrics.update({name: sum(items.values()) / len(items) for name, items in outcomes.items()})
        pl_module.log_dict(metrics, sync_dist=False, rank_zero_only=False)

    def item_outcomes(self) -> dict[str, dict[str, bool]]:
        """Metric -> sample key -> hit, of the latest validation (for ``mmfuse eval``)."""
        return self._outcomes

    @torch.no_grad()
    def _zeroshot(
        self, task: ZeroShotTask, media: Tensor, metas: list[dict], trainer, pl_module
    ) -> dict[int, bool]:
        keep = [i for i, m in enumerate(metas) if all(m.get(k) == v for k, v in task.where.items())]
        if not keep:
            return {}
        classes = sorted({metas[i][task.class_field] for i in keep})
        other_fields = {f for t in task.templates for _, f, _, _ in string.Formatter().parse(t) if f} - {
            task.class_field
        }
        tokenizer = trainer.datamodule.tokenizer
        cache: dict[tuple, Tensor] = {}
        correct = {}
        for i in keep:
            context = tuple((f, metas[i][f]) for f in sorted(other_fields))
            if context not in cache:
                prompts = [
                    t.format(**dict(context), **{task.class_field: c})
                    for c in classes
                    for t in task.templates
                ]
                input_ids = tokenizer(prompts).to(pl_module.device)
                embeds = pl_module.embed_text({"input_ids": input_ids}).float().cpu()  # [c * t, e]
                embeds = embeds.view(len(classes), len(task.templates), -1).mean(1)  # [c, t, e] -> [c, e]
                cache[context] = F.normalize(embeds, dim=-1)
            predicted = classes[int((cache[context] @ media[i]).argmax())]
            correct[i] = predicted == metas[i][task.class_field]
        return correct
