"""Multimodal instruction tuning (SFT) of a Hugging Face causal LM fused with media towers.

The model is :class:`mmfuse.core.fusion.FusedCausalLM`: any causal LM (``AutoModelForCausalLM``
``from_config`` for a tiny model trained from scratch, ``from_pretrained`` for a real one; remote
code only when asked), attending through the core dispatch (:mod:`mmfuse.training.hf_attention`),
with one adapter per modality (Perceiver resampler or MLP projector) and gated cross-attention
blocks. Each tower may start from an alignment checkpoint (``ContrastiveAlignment``'s
``media_encoder.*`` weights, read with ``torch.load(weights_only=True)``). Parts are frozen by name
(``freeze``: ``"lm"``, ``"encoders"``, ``"fusion"``); ``lora`` adds peft LoRA adapters to the LM and
freezes its other weights.

Loss: the summed negative log-likelihood of the assistant tokens divided by the number of assistant
tokens of the whole optimizer step (every micro-batch, every rank), as transformers' Trainer does
with ``num_items_in_batch``: accumulating micro-batches of different sizes gives the gradient of
one big batch, and a conversation without targets adds nothing (no NaN). The stage therefore runs
its own accumulation loop (Lightning's manual optimization); keep ``trainer.accumulate_grad_batches``
at 1 and set ``data.accumulate``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import peft
import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM

from mmfuse.core.checkpoint import load_media_encoder_state
from mmfuse.core.encoders import EncoderOutput, MediaEncoder
from mmfuse.core.functional import IGNORE_INDEX, token_logps
from mmfuse.core.fusion import FusedCausalLM, MediaProjector, PerceiverResampler
from mmfuse.core.text import load_tokenizer, media_token
from mmfuse.training import hf_attention
from mmfuse.training.optim import adamw_param_groups, warmup_cosine

#: micro-batch keys passed to the language model as they are.
LM_KEYS = ("attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def build_language_model(
    lm: str | dict[str, Any], vocab_size: int, trust_remote_code: bool = False
) -> nn.Module:
    """A causal LM attending through the core dispatch.

    Args:
        lm: a model name or directory (``from_pretrained``), or config fields with ``model_type``
            (``AutoConfig.for_model``, random weights).
        vocab_size: the tokenizer's size; embeddings are created (or resized) to it.
        trust_remote_code: passed to transformers; off by default.
    """
    attn = hf_attention.register()
    if isinstance(lm, str):
        model = AutoModelForCausalLM.from_pretrained(
            lm, attn_implementation=attn, trust_remote_code=trust_remote_code
        )
    else:
        config = AutoConfig.for_model(**{**lm, "vocab_size": vocab_size})
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation=attn, trust_remote_code=trust_remote_code
        )
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


class InstructionTuning(L.LightningModule):
    """SFT of a fused multimodal LM on :class:`~mmfuse.training.data.ChatDataModule` batches.

    Args:
        lm: see :func:`build_language_model`.
        tokenizer: tokenizer directory or name (:func:`mmfuse.core.text.load_tokenizer`); must be the
            data module's.
        image_encoder: image tower (``forward_features -> [n, s_e, d]``), or None.
        audio_encoder: audio tower, or None.
        video_encoder: video tower, or None.
        encoder_checkpoints: modality -> alignment checkpoint (``.ckpt``) for its tower; a missing
            modality or None keeps the random initialisation.
        adapter: ``"projector"`` (one media token per encoder token) or ``"resampler"``
            (``num_latents`` tokens per item).
        num_latents: resampler output tokens per item.
        pooled_token: the adapters add each tower's pooled embedding (``EncoderOutput.pooled``, the
            one alignment trained) as one more media token (:class:`~mmfuse.core.fusion.PooledToken`).
        cross_attn_every_n_layers: spacing of the gated cross-attention blocks.
        layers_path: attribute path of the LM's decoder layers.
        num_heads: cross-attention (and resampler) heads.
        head_dim: their head width.
        freeze: parts whose weights stay fixed: ``"lm"``, ``"encoders"``, ``"fusion"``.
        lora: ``peft.LoraConfig`` fields (e.g. ``{"r": 8, "target_modules": ["q_proj", "v_proj"]}``)
            to train LoRA adapters of the LM instead of its weights.
        trust_remote_code: for ``lm`` and ``tokenizer`` names.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay of matrices.
        betas: AdamW betas.
        warmup_steps: linear warmup steps.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        max_grad_norm: gradient clipping by global norm (None: off).

    Raises:
        ValueError: an unknown part in ``freeze``, or a checkpoint for a modality without a tower.
    """

    def __init__(
        self,
        lm: str | dict[str, Any],
        tokenizer: str = "data/tokenizer",
        image_encoder: MediaEncoder | None = None,
        audio_encoder: MediaEncoder | None = None,
        video_encoder: MediaEncoder | None = None,
        encoder_checkpoints: dict[str, str | None] | None = None,
        adapter: Literal["projector", "resampler"] = "projector",
        num_latents: int = 16,
        pooled_token: bool = True,
        cross_attn_every_n_layers: int = 2,
        layers_path: str = "model.layers",
        num_heads: int = 4,
        head_dim: int = 32,
        freeze: list[str] | None = None,
        lora: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        max_grad_norm: float | None = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["image_encoder", "audio_encoder", "video_encoder"])
        self.automatic_optimization = False
        self.tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
        towers = {"image": image_encoder, "audio": audio_encoder, "video": video_encoder}
        self.encoders = nn.ModuleDict({m: t for m, t in towers.items() if t is not None})
        for modality, path in (encoder_checkpoints or {}).items():
            if path is None:
                continue
            if modality not in self.encoders:
                raise ValueError(f"a checkpoint for {modality!r} but no {modality}_encoder")
            self.encoders[modality].load_state_dict(load_media_encoder_state(path))
        language_model = build_language_model(lm, len(self.tokenizer), trust_remote_code)
        if lora is not None:
            language_model = peft.inject_adapter_in_model(peft.LoraConfig(**lora), language_model)
        width = language_model.get_input_embeddings().embedding_dim
        adapters = {m: self._adapter(tower, width) for m, tower in self.encoders.items()}
        self.fused = FusedCausalLM(
            language_model, adapters,
            {m: self.tokenizer.convert_tokens_to_ids(media_token(m)) for m in adapters},
            cross_attn_every_n_layers=cross_attn_every_n_layers, layers_path=layers_path,
            num_heads=num_heads, head_dim=head_dim,
        )  # fmt: skip
        self._freeze(freeze or [], lora is not None)

    def _adapter(self, tower: MediaEncoder, width: int) -> nn.Module:
        hp = self.hparams
        pooled_dim = tower.embed_dim if hp.pooled_token else None
        if hp.adapter == "projector":
            return MediaProjector(tower.hidden_size, width, pooled_dim=pooled_dim)
        return PerceiverResampler(
            tower.hidden_size, width, depth=2, num_latents=hp.num_latents, num_heads=hp.num_heads,
            head_dim=hp.head_dim, pooled_dim=pooled_dim,
        )  # fmt: skip

    def _freeze(self, parts: list[str], lora: bool) -> None:
        unknown = set(parts) - {"lm", "encoders", "fusion"}
        if unknown:
            raise ValueError(f"freeze names unknown parts {sorted(unknown)}; use lm, encoders, fusion")
        fusion = {id(p) for p in self.fused.fusion_parameters()}
        for name, param in self.fused.lm.named_parameters():
            is_lm = id(param) not in fusion
            if is_lm and ("lm" in parts or (lora and "lora_" not in name)):
                param.requires_grad_(False)
            if not is_lm and "fusion" in parts:
                param.requires_grad_(False)
        if "fusion" in parts:
            self.fused.adapters.requires_grad_(False)
        if "encoders" in parts:
            self.encoders.requires_grad_(False)

    def train(self, mode: bool = True) -> InstructionTuning:
        """Frozen towers stay in eval mode (no dropout, no patch dropout) while the rest trains."""
        super().train(mode)
        if "encoders" in (self.hparams.freeze or []):
            self.encoders.eval()
        return self

    def encode_media(self, media: dict[str, dict[str, Tensor]]) -> dict[str, EncoderOutput]:
        """Modality -> its towers' per-token states for the items of a micro-batch."""
        return {
            m: self.encoders[m].forward_features(**self.encoders[m].select_inputs(x))
            for m, x in media.items()
        }

    def nll(self, micro_batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Summed negative log-likelihood of the targets of one micro-batch, and their count."""
        lm_kwargs = {k: micro_batch[k] for k in LM_KEYS if k in micro_batch}
        out = self.fused(input_ids=micro_batch["input_ids"], media=self.encode_media(micro_batch["media"]),
                         use_cache=False, **lm_kwargs)  # fmt: skip
        labels = micro_batch["shift_labels"]
        return -token_logps(out.logits, labels).sum(), (labels != IGNORE_INDEX).sum()

    def accumulate(
        self, micro_batches: list[dict[str, Any]], total_tokens: Tensor, world_size: int, backward: Callable
    ) -> Tensor:
        """Backpropagate ``sum(nll) * world_size / total_tokens`` one micro-batch at a time.

        Args:
            micro_batches: one optimizer step's micro-batches on this rank.
            total_tokens: target tokens of the step over every micro-batch of every rank.
            world_size: ranks whose gradients the strategy averages.
            backward: ``loss -> None`` (``manual_backward`` in training).

        Returns:
            The step's loss, ``sum(nll) / total_tokens`` over this rank's micro-batches (detached); 0
            when the step has no target token.
        """
        scale = world_size / total_tokens.clamp_min(1.0)
        loss = torch.zeros((), device=self.device)
        for micro_batch in micro_batches:
            nll, _ = self.nll(micro_batch)
            backward(nll * scale)
            loss += nll.detach() * scale / world_size
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        local = sum(int((mb["shift_labels"] != IGNORE_INDEX).sum()) for mb in batch["micro_batches"])
        total = self.trainer.strategy.reduce(torch.tensor(float(local), device=self.device), reduce_op="sum")
        # DDP averages gradients over ranks, so each rank scales by world_size / global target count.
        loss = self.accumulate(batch["micro_batches"], total, self.trainer.world_size, self.manual_backward)
        if self.hparams.max_grad_norm is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm"
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/target_tokens", float(local), reduce_fx="sum")
        self.log(
            "data/skipped", float(batch.get("num_skipped", 0)), on_step=False, on_epoch=True, reduce_fx="sum"
        )
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Summed NLL and target count (``nll``, ``tokens``) of the batch, for perplexity."""
        nll, tokens = self.nll(batch["micro_batches"][0])
        self.log("val/loss", nll / tokens.clamp_min(1), batch_size=int(tokens))
        return {"nll": nll, "tokens": tokens}

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        media: dict[str, dict[str, Tensor]],
        max_new_tokens: int,
    ) -> Tensor:
        """Greedy decoding with the KV cache from left-padded prompts ``[b, s]``; returns ``[b, new]`` ids."""
        out = self.fused.generate(
            input_ids=input_ids, attention_mask=attention_mask, media=self.encode_media(media),
            max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
        )  # fmt: skip
        return out[:, input_ids.shape[1] :]

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = torch.optim.AdamW(adamw_param_groups(self, hp.weight_decay), lr=hp.lr, betas=hp.betas)
        scheduler = warmup_cosine(optimizer, hp.warmup_steps, int(self.trainer.estimated_stepping_batches),
                                  hp.min_lr_ratio)  # fmt: skip
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["InstructionTuning", "LM_KEYS", "build_language_model"]
