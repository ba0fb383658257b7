"""Contrastive media-text alignment (CLIP / SigLIP), for any modality tower.

The stage receives its towers as submodules (``media_encoder``: image, audio or video;
``text_encoder``), so aligning audio or video with text is a config choice, not another stage.
Conventions follow open_clip's training loop: a learnable log-temperature initialised to
``ln(1/0.07)`` and clamped to ``ln(100)`` after every optimiser step, never weight-decayed; AdamW
with linear warmup and cosine decay; negatives from the global batch across ranks.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfuse.core.encoders import MediaEncoder
from mmfuse.core.losses import clip_loss, siglip_loss
from mmfuse.training.data.base import log_data
from mmfuse.training.optim import adamw_param_groups, warmup_cosine

Batch = dict[str, Any]


def positive_group_ids(batch: Batch, key: str) -> Tensor:
    """``[b] int64`` ids, equal exactly when two samples are positives of each other.

    ``key="text"``: samples with identical captions. Any other key names a ``meta`` field (e.g.
    ``"label"``): samples with the same value; a sample without that field falls back to its
    caption. Ids are CRC-32 of ``"<field>:<value>"`` (UTF-8).
    """
    values = []
    for text, meta in zip(batch["text"], batch.get("meta") or [{}] * len(batch["text"]), strict=True):
        values.append(f"{key}:{meta[key]}" if key != "text" and key in meta else f"text:{text}")
    return torch.tensor([zlib.crc32(v.encode("utf-8")) for v in values], dtype=torch.int64)


class ContrastiveAlignment(L.LightningModule):
    """Aligns a media tower with a text tower by a contrastive loss over the global batch.

    ``training_step`` reads the media tensors the tower names (``media_encoder.input_names``, e.g.
    ``pixel_values``), ``input_ids`` and ``text`` from the batch; ``validation_step`` returns the
    normalised embeddings for :class:`~mmfuse.training.callbacks.ZeroShotRetrieval`.

    Args:
        media_encoder: the media tower (``[b, ...] -> [b, e]``).
        text_encoder: the text tower (``input_ids [b, s] -> [b, e]``).
        loss: ``"clip"`` (symmetric InfoNCE) or ``"siglip"`` (pairwise sigmoid).
        positives: what makes two samples of a batch positives of each other (see
            :mod:`mmfuse.core.losses.contrastive`): ``"text"`` identical captions; a ``meta``
            field name such as ``"label"`` the same class (UniCL's image-label contrast, Yang et
            al. 2022); None the papers' one positive per sample.
        init_logit_scale: initial multiplier; default 1/0.07 (clip) or 10 (siglip).
        init_logit_bias: initial SigLIP bias; default -10.
        max_logit_scale: clamp of the multiplier after every step (open_clip: 100).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay of matrices (not of biases, norms or the temperature).
        betas: AdamW betas (open_clip ViT default (0.9, 0.98)).
        eps: AdamW epsilon.
        warmup_steps: linear warmup steps.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
    """

    def __init__(
        self,
        media_encoder: MediaEncoder,
        text_encoder: MediaEncoder,
        loss: Literal["clip", "siglip"] = "clip",
        positives: str | None = "text",
        init_logit_scale: float | None = None,
        init_logit_bias: float | None = None,
        max_logit_scale: float = 100.0,
        lr: float = 5e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["media_encoder", "text_encoder"])
        if media_encoder.embed_dim != text_encoder.embed_dim:
            raise ValueError(
                f"media_encoder.embed_dim={media_encoder.embed_dim}"
                f" != text_encoder.embed_dim={text_encoder.embed_dim}"
            )
        self.media_encoder = media_encoder
        self.text_encoder = text_encoder
        default_scale = 1 / 0.07 if loss == "clip" else 10.0
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale or default_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(init_logit_bias or -10.0)) if loss == "siglip" else None

    def embed_media(self, batch: Batch) -> Tensor:
        """L2-normalised media embeddings ``[b, e]``."""
        return F.normalize(self.media_encoder(**self.media_encoder.select_inputs(batch)), dim=-1)

    def embed_text(self, batch: Batch) -> Tensor:
        """L2-normalised text embeddings ``[b, e]`` of ``batch["input_ids"]``."""
        return F.normalize(self.text_encoder(**self.text_encoder.select_inputs(batch)), dim=-1)

    def _loss(self, media_embeds: Tensor, text_embeds: Tensor, batch: Batch) -> Tensor:
        key = self.hparams.positives
        group_ids = None if key is None else positive_group_ids(batch, key).to(media_embeds.device)
        scale = self.logit_scale.exp()
        if self.hparams.loss == "clip":
            return clip_loss(media_embeds, text_embeds, scale, group_ids=group_ids)
        return siglip_loss(media_embeds, text_embeds, scale, self.logit_bias, group_ids=group_ids)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self._loss(self.embed_media(batch), self.embed_text(batch), batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", self.logit_scale.exp())
        log_data(self, batch)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        with torch.no_grad():  # open_clip clamps after every step: 0 <= logit_scale <= ln(max)
            self.logit_scale.clamp_(0, math.log(self.hparams.max_logit_scale))

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        # Ranks may hold different numbers of val batches: nothing here may be a collective.
        # The metrics come from the callbacks that gather these embeddings at epoch end.
        self.log("data/val_skipped", float(batch.get("num_skipped", 0)), reduce_fx="sum")
        return {"media_embeds": self.embed_media(batch), "text_embeds": self.embed_text(batch)}

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = adamw_param_groups(self, hp.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=hp.betas, eps=hp.eps)
        total = self.trainer.estimated_stepping_batches
        scheduler = warmup_cosine(optimizer, hp.warmup_steps, int(total), hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
