"""Hugging Face decoders attending through :func:`mmfuse.core.attention.attention`.

Registers the attention implementation ``"mmfuse"`` in transformers' ``AttentionInterface`` (and its
mask builder, transformers' SDPA one, in ``AttentionMaskInterface``). Load a model with
``attn_implementation=ATTN_IMPLEMENTATION`` after :func:`register` and every self-attention layer of a
standard decoder (Llama, Qwen2, Mistral, ...) calls the core dispatch:

* packed rows: when the forward receives ``cu_seq_lens_q`` / ``cu_seq_lens_k`` / ``max_length_q`` /
  ``max_length_k`` (the keyword names of transformers' ``DataCollatorWithFlattening`` and flash
  attention path), the ``[b, h, s, hd]`` queries are flattened to ``[b * s, h, hd]`` and attention runs
  per segment (causal inside each), so no token attends across a sequence boundary; on GPU the core
  picks flash-attn varlen, on CPU one SDPA call per segment;
* otherwise (padded batches, generation with a KV cache): the padded layout with transformers' SDPA
  mask (``[b, 1, s_q, s_k]`` bool, True = attend) or, without one, a bottom-right causal mask.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mmfuse.core.attention import attention

ATTN_IMPLEMENTATION = "mmfuse"


def core_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention-function protocol on top of the core dispatch.

    Args:
        module: the attention layer (its ``is_causal`` is read, default True).
        query: ``[b, h, s_q, hd]``.
        key: ``[b, h_kv, s_k, hd]`` (the cache included).
        value: as ``key``.
        attention_mask: ``[b, 1, s_q, s_k]`` bool (True = attend) or None.
        dropout: attention-probability dropout (transformers passes 0 in eval mode).
        scaling: score multiplier; ``hd ** -0.5`` when None.
        kwargs: ``cu_seq_lens_q``/``_k`` (int32 ``[n + 1]`` over the ``b * s`` flattened tokens) and
            ``max_length_q``/``_k`` select the packed path; anything else is ignored.

    Returns:
        ``[b, s_q, h, hd]`` and no attention weights.
    """
    causal = getattr(module, "is_causal", True)
    cu_seqlens_q = kwargs.get("cu_seq_lens_q")
    if cu_seqlens_q is not None:
        b, h, s, hd = query.shape
        out = attention(
            query.transpose(1, 2).flatten(0, 1),  # [b, h, s, hd] -> [b * s, h, hd]
            key.transpose(1, 2).flatten(0, 1),
            value.transpose(1, 2).flatten(0, 1),
            cu_seqlens_q=cu_seqlens_q,
            cu_seqlens_k=kwargs.get("cu_seq_lens_k", cu_seqlens_q),
            max_seqlen_q=kwargs.get("max_length_q"),
            max_seqlen_k=kwargs.get("max_length_k", kwargs.get("max_length_q")),
            causal=causal,
            scale=scaling,
            dropout_p=dropout,
        )  # [b * s, h, hd]
        return out.view(b, s, h, hd), None
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        raise ValueError(
            f"the {ATTN_IMPLEMENTATION} attention expects a bool mask, got {attention_mask.dtype}"
        )
    out = attention(
        query, key, value, attn_mask=attention_mask, causal=causal and attention_mask is None,
        scale=scaling, dropout_p=dropout,
    )  # fmt: skip
    return out.transpose(1, 2), None  # [b, h, s, hd] -> [b, s, h, hd]


def register() -> str:
    """Register the ``"mmfuse"`` attention and mask functions (idempotent); returns the name."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, core_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION


__all__ = ["ATTN_IMPLEMENTATION", "core_attention_forward", "register"]
