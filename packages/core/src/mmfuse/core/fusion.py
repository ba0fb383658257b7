"""Flamingo-style fusion of any media into a pretrained causal language model.

Alayrac et al. 2022, "Flamingo" (Sec. 2.2, Appendix A.1.2), as built by OpenFlamingo:

* :class:`MaskedCrossAttention`: each text token attends to the media items whose placeholder token
  is at or before it in its own sequence (the latest item, or all of them); a token before any
  item gets exactly zero;
* :class:`GatedCrossAttentionBlock`: that cross-attention, then a feed-forward, each scaled by
  ``tanh(gate)`` with gates initialised to 0, so the wrapped language model starts unchanged;
* :class:`FusedCausalLM`: the LM surgery. It inserts a block before every n-th decoder layer of a
  Hugging Face causal LM (any model whose decoder layers sit in an ``nn.ModuleList`` at
  ``layers_path``) and feeds the media tokens of the adapters (:mod:`mmfuse.core.adapters`) to them in
  every call of the LM, KV-cached decoding included. A fused layer keeps the wrapped layer's own
  state-dict keys (torchtune's ``FusionLayer`` convention), so the LM part of a checkpoint reads as
  the plain LM's and the new block's tensors sit beside them under ``gated_xattn.``.

The cross-attention is packed (:func:`mmfuse.core.packing.cross_attention_segments`): one segment
per run of text tokens that sees the same items, so no ``[b, h, s_text, s_media_total]`` score matrix
exists unless the attention backend itself is a dense one (``sdpa``, ``eager``), and only real media
items are encoded. :class:`mmfuse.core.model.MultimodalLM` is the user-facing model around it.

``media`` maps modality names to :class:`~mmfuse.core.encoders.EncoderOutput` s whose
``hidden_states`` are ``[n, s_e, d_enc]`` (or ``[n, t, s_e, d_enc]`` for frames) with an optional
``[n, s_e]`` (``[n, t, s_e]``) bool mask, each modality's real items in the row-major order of its
placeholders. Packed rows (several sequences in one row) pass ``position_ids`` that restart at 0 at
each sequence, as in Hugging Face's packed training; each sequence then sees only its own media.

Shape letters: b batch, s text tokens, d LM width, n media items, s_e encoder tokens, t frames,
h heads, hd head size, total_q/total_k packed query/key tokens, m media tokens.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from mmfuse.core.attention import Backend, attention
from mmfuse.core.encoders import EncoderOutput
from mmfuse.core.layers import FeedForward
from mmfuse.core.packing import (
    CrossAttentionSegments,
    concat_ranges,
    cross_attention_segments,
    cu_seqlens_from_lengths,
    media_item_ranges,
)


@dataclass
class MediaContext:
    """What every cross-attention block of one language-model call reads.

    Attributes:
        tokens: ``[m, media_dim]`` the real media tokens of the batch, item after item in placeholder order.
        segments: which text tokens attend to which media tokens in this call.
    """

    tokens: Tensor
    segments: CrossAttentionSegments


class MaskedCrossAttention(nn.Module):
    """Text tokens attend to the media tokens their segments allow (Flamingo, Sec. 2.2 and Fig. 7).

    Args:
        dim: text width ``d``.
        media_dim: media token width.
        num_heads: attention heads.
        head_dim: width of one head.
        backend: attention backend for the packed cross-attention.
    """

    def __init__(
        self, dim: int, media_dim: int, num_heads: int, head_dim: int, backend: Backend = "auto"
    ) -> None:
        super().__init__()
        self.num_heads, self.backend = num_heads, backend
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.to_kv = nn.Linear(media_dim, 2 * num_heads * head_dim, bias=False)
        self.to_out = nn.Linear(num_heads * head_dim, dim, bias=False)

    def forward(self, hidden_states: Tensor, media: MediaContext) -> Tensor:
        """``[b, s, d]`` -> ``[b, s, d]``, exactly zero at tokens that see no media."""
        segments = media.segments
        x = hidden_states.flatten(0, 1)[segments.query_index]  # [b, s, d] -> [total_q, d]
        q = rearrange(self.to_q(self.norm(x)), "q (h hd) -> q h hd", h=self.num_heads)
        kv = self.to_kv(media.tokens)[segments.key_index]  # [m, 2 h hd] -> [total_k, 2 h hd]
        k, v = rearrange(kv, "k (two h hd) -> two k h hd", two=2, h=self.num_heads)
        out = attention(
            q,
            k,
            v,
            cu_seqlens_q=segments.cu_seqlens_q,
            cu_seqlens_k=segments.cu_seqlens_k,
            max_seqlen_q=segments.max_seqlen_q,
            max_seqlen_k=segments.max_seqlen_k,
            backend=self.backend,
        )  # [total_q, h, hd]
        out = self.to_out(out.flatten(1))  # [total_q, h, hd] -> [total_q, d]
        zeros = hidden_states.new_zeros(
            hidden_states.shape[0] * hidden_states.shape[1], hidden_states.shape[2]
        )
        return zeros.index_copy(0, segments.query_index, out).view_as(hidden_states)


class GatedCrossAttentionBlock(nn.Module):
    """``x + tanh(a) * xattn(x, media)``, then ``x + tanh(f) * ffw(x)``; gates ``a = f = 0`` at init.

    Flamingo, Sec. 2.2 and Fig. 4. The feed-forward runs on every token, with or without media.
    """

    def __init__(
        self,
        dim: int,
        media_dim: int,
        num_heads: int,
        head_dim: int,
        ff_mult: int = 4,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        self.attn = MaskedCrossAttention(dim, media_dim, num_heads, head_dim, backend)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = FeedForward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states: Tensor, media: MediaContext | None) -> Tensor:
        """``[b, s, d]`` -> ``[b, s, d]``; ``media`` None (a text-only call) skips the attention."""
        if media is not None and media.segments.query_index.numel():
            hidden_states = hidden_states + self.attn_gate.tanh() * self.attn(hidden_states, media)
        return hidden_states + self.ff_gate.tanh() * self.ff(hidden_states)


class _MediaSlot:
    """The media context of the language-model call in progress, shared by all fused layers."""

    context: MediaContext | None = None


class FusedDecoderLayer(nn.Module):
    """A gated cross-attention block followed by the original decoder layer.

    State-dict keys: the decoder layer's own (no ``decoder_layer.`` prefix), plus ``gated_xattn.*``,
    through state-dict hooks as torchtune's ``FusionLayer``. Attribute lookups it cannot answer go to
    the decoder layer (models read e.g. ``attention_type``).
    """

    def __init__(
        self, gated_xattn: GatedCrossAttentionBlock, decoder_layer: nn.Module, slot: _MediaSlot
    ) -> None:
        super().__init__()
        self.gated_xattn, self.decoder_layer, self._slot = gated_xattn, decoder_layer, slot
        self.register_state_dict_post_hook(FusedDecoderLayer._unwrap_keys)
        self.register_load_state_dict_pre_hook(FusedDecoderLayer._wrap_keys)

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.decoder_layer(self.gated_xattn(hidden_states, self._slot.context), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "decoder_layer":
                raise
            return getattr(self.decoder_layer, name)

    @staticmethod
    def _unwrap_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        """``<prefix>decoder_layer.k`` -> ``<prefix>k`` in a state dict being saved."""
        inner = prefix + "decoder_layer."
        for key in [k for k in state_dict if k.startswith(inner)]:
            state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)

    @staticmethod
    def _wrap_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """``<prefix>k`` -> ``<prefix>decoder_layer.k`` (not ``gated_xattn.*``) in a state dict to load."""
        fused = (prefix + "gated_xattn.", prefix + "decoder_layer.")
        for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(fused)]:
            state_dict[prefix + "decoder_layer." + key[len(prefix) :]] = state_dict.pop(key)


@dataclass
class _MediaSession:
    """Media of one ``forward`` or ``generate`` call, and the tokens the language model has consumed.

    Attributes:
        tokens: ``[m, media_dim]`` media tokens, item after item in placeholder order.
        cu_item_tokens: ``[n + 1]`` int64 boundaries of each item in ``tokens``.
        placeholder_ids: ``[num_modalities]`` int64 placeholder token ids.
        only_latest: text sees only the latest item.
        input_ids: ``[b, L]`` every token consumed so far (prompt and generated).
        document_ids: ``[b, L]`` the sequence each of those tokens belongs to within its row.
    """

    tokens: Tensor
    cu_item_tokens: Tensor
    placeholder_ids: Tensor
    only_latest: bool
    input_ids: Tensor
    document_ids: Tensor

    def step(self, input_ids: Tensor, start: int, position_ids: Tensor | None) -> MediaContext:
        """Record the ``[b, s]`` tokens of one language-model call at cache position ``start``.

        Raises:
            ValueError: a batch size other than the session's (beam search, ``num_return_sequences``),
                or placeholders that no longer match the media items.
        """
        if input_ids.shape[0] != self.input_ids.shape[0] or start > self.input_ids.shape[1]:
            raise ValueError(
                f"a media session holding {tuple(self.input_ids.shape)} tokens got {input_ids.shape[0]} rows"
                f" at position {start}; repeat the media items with the rows (MultimodalLM.generate)"
            )
        if position_ids is not None and start == 0:  # packed rows: a sequence starts at each position 0
            docs = (position_ids == 0).long().cumsum(-1).expand_as(input_ids)
        elif start:  # new tokens continue the sequence that ends the row
            docs = self.document_ids[:, start - 1 : start].expand_as(input_ids)
        else:
            docs = torch.zeros_like(input_ids)
        self.input_ids = torch.cat([self.input_ids[:, :start], input_ids], dim=1)
        self.document_ids = torch.cat([self.document_ids[:, :start], docs], dim=1)
        is_media = torch.isin(self.input_ids, self.placeholder_ids)
        if int(is_media.sum()) != len(self.cu_item_tokens) - 1:
            raise ValueError(
                f"{int(is_media.sum())} media placeholders for {len(self.cu_item_tokens) - 1} media items"
            )
        first, last = media_item_ranges(is_media, self.document_ids, only_latest=self.only_latest)
        segments = cross_attention_segments(first[:, start:], last[:, start:], self.cu_item_tokens)
        return MediaContext(self.tokens, segments)


class FusedCausalLM(nn.Module):
    """A Hugging Face causal LM with gated cross-attention to media before every n-th decoder layer.

    The language model is modified in place: layer ``i`` with ``(i + 1) % cross_attn_every_n_layers
    == 0`` becomes a :class:`FusedDecoderLayer` (OpenFlamingo's placement). Nothing is frozen here;
    :meth:`fusion_parameters` lists the new parameters.

    Args:
        lm: a causal LM with ``get_input_embeddings()``, ``generate()`` and its decoder layers in an
            ``nn.ModuleList``; called with keyword arguments only.
        adapters: modality name -> module mapping ``(hidden_states, attention_mask, pooled)`` (the
            fields of the tower's :class:`EncoderOutput`) to an :class:`EncoderOutput` of width
            ``media_dim`` (:class:`PerceiverResampler`, :class:`MediaProjector`).
        media_token_ids: modality name -> its placeholder token id in ``input_ids``.
        cross_attn_every_n_layers: spacing of the blocks.
        layers_path: dotted attribute path of the decoder layers, e.g. ``"model.layers"``.
        media_dim: media token width; the LM width when None.
        num_heads: cross-attention heads.
        head_dim: cross-attention head width.
        ff_mult: feed-forward expansion of the blocks.
        attend: ``"latest"`` (each text token sees the latest preceding item) or ``"all"`` (every
            preceding item of its sequence).
        backend: attention backend of the cross-attention.

    Raises:
        ValueError: adapters and placeholder ids name different modalities, or ``layers_path`` is no
            ``nn.ModuleList``.
    """

    def __init__(
        self,
        lm: nn.Module,
        adapters: Mapping[str, nn.Module],
        media_token_ids: Mapping[str, int],
        *,
        cross_attn_every_n_layers: int = 4,
        layers_path: str = "model.layers",
        media_dim: int | None = None,
        num_heads: int = 8,
        head_dim: int = 64,
        ff_mult: int = 4,
        attend: Literal["latest", "all"] = "latest",
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        if set(adapters) != set(media_token_ids):
            raise ValueError(
                f"adapters {sorted(adapters)} and media_token_ids {sorted(media_token_ids)} differ"
            )
        layers = functools.reduce(getattr, layers_path.split("."), lm)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"lm.{layers_path} is a {type(layers).__name__}, not the nn.ModuleList of decoder layers"
            )
        self.lm, self.adapters = lm, nn.ModuleDict(adapters)
        self.media_token_ids = dict(media_token_ids)
        self.only_latest = attend == "latest"
        embeddings = lm.get_input_embeddings().weight
        dim = embeddings.shape[1]
        self._slot, self._session = _MediaSlot(), None
        for i in range(cross_attn_every_n_layers - 1, len(layers), cross_attn_every_n_layers):
            block = GatedCrossAttentionBlock(dim, media_dim or dim, num_heads, head_dim, ff_mult, backend)
            layers[i] = FusedDecoderLayer(
                block.to(embeddings.device, embeddings.dtype), layers[i], self._slot
            )
        self._fused_layers = [layer for layer in layers if isinstance(layer, FusedDecoderLayer)]
        lm.register_forward_pre_hook(self._before_lm_call, with_kwargs=True)

    def fusion_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters fusion added: adapters and cross-attention blocks (the LM's own excluded)."""
        yield from self.adapters.parameters()
        for layer in self._fused_layers:
            yield from layer.gated_xattn.parameters()

    def forward(
        self, input_ids: Tensor, media: Mapping[str, EncoderOutput] | None = None, **lm_kwargs: Any
    ) -> Any:
        """The LM's forward (``attention_mask``, ``labels``, ``position_ids``, .. pass through) with media.

        Args:
            input_ids: ``[b, s]`` int64 with one placeholder per media item.
            media: modality -> encoder output of its real items, in placeholder order (module docstring).

        Returns:
            The LM's output (``logits`` ``[b, s, v]``, ``loss``, ...).

        Raises:
            ValueError: placeholders and media items disagree in number or modality.
        """
        with self.media_session(input_ids, media):
            return self.lm(input_ids=input_ids, **lm_kwargs)

    @contextlib.contextmanager
    def media_session(self, input_ids: Tensor, media: Mapping[str, EncoderOutput] | None) -> Iterator[None]:
        """Every LM call inside reads ``media``, whose placeholders are in ``input_ids`` ``[b, s]``.

        ``forward`` opens one per call; a decoding loop opens one around all its KV-cached calls, the
        first of which must consume ``input_ids`` (the prompt) whole.
        """
        self._session = self._open_session(input_ids, media or {})
        try:
            yield
        finally:
            self._session, self._slot.context = None, None

    def _open_session(self, input_ids: Tensor, media: Mapping[str, EncoderOutput]) -> _MediaSession | None:
        """Adapt every item and lay its real tokens out in placeholder order."""
        unknown = set(media) - set(self.adapters)
        if unknown:
            raise ValueError(f"media for {sorted(unknown)} but adapters only for {sorted(self.adapters)}")
        names = list(self.media_token_ids)
        placeholder_ids = input_ids.new_tensor([self.media_token_ids[name] for name in names])
        item_modality = torch.nonzero(input_ids.flatten()[:, None] == placeholder_ids)[:, 1]  # [n] row-major
        for code, name in enumerate(names):
            placeholders = int((item_modality == code).sum())
            given = media[name].hidden_states.shape[0] if name in media else 0
            if given != placeholders:
                raise ValueError(
                    f"{placeholders} {name} placeholders in input_ids but {given} {name} items in media"
                )
        if not len(item_modality):
            return None
        tokens, cu_item_tokens = self._media_tokens(media, names, item_modality)
        return _MediaSession(
            tokens=tokens.to(self.lm.get_input_embeddings().weight.dtype),
            cu_item_tokens=cu_item_tokens,
            placeholder_ids=placeholder_ids,
            only_latest=self.only_latest,
            input_ids=input_ids[:, :0],
            document_ids=input_ids[:, :0],
        )

    def _media_tokens(
        self, media: Mapping[str, EncoderOutput], names: list[str], item_modality: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Adapt each modality's items at once, then regroup the real tokens in placeholder order.

        Args:
            media: modality -> encoder output, validated against the placeholders.
            names: modality names; ``item_modality`` indexes them.
            item_modality: ``[n]`` int64 modality of each item, in placeholder order.

        Returns:
            ``[m, media_dim]`` tokens and ``[n + 1]`` int64 item boundaries in them.
        """
        tokens, lengths = [], []
        item_order = torch.empty_like(item_modality)  # placeholder order -> modality-grouped order
        for code, name in enumerate(names):
            items = torch.nonzero(item_modality == code).flatten()
            if not len(items):
                continue
            out = self.adapters[name](
                media[name].hidden_states, media[name].attention_mask, media[name].pooled
            )
            mask = out.attention_mask
            if mask is None:
                mask = out.hidden_states.new_ones(out.hidden_states.shape[:2], dtype=torch.bool)
            item_order[items] = torch.arange(len(items), device=items.device) + sum(map(len, lengths))
            tokens.append(out.hidden_states[mask])  # [n_m, s_m, media_dim] -> [m_m, media_dim]
            lengths.append(mask.sum(-1))
        lengths_by_modality = torch.cat(lengths)  # items grouped by modality
        starts = cu_seqlens_from_lengths(lengths_by_modality).long()[:-1]
        item_lengths = lengths_by_modality[item_order]
        in_order = concat_ranges(starts[item_order], item_lengths)
        return torch.cat(tokens)[in_order], cu_seqlens_from_lengths(item_lengths).long()

    def _before_lm_call(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Forward pre-hook of the LM: plan this call's cross-attention from its ``input_ids``.

        The cache's length gives the position of the call's first token (transformers 5.24 passes the
        cache as ``cache``, earlier releases as ``past_key_values``); ``generate`` calls the LM once
        per token, so the session keeps the tokens seen so far.
        """
        if self._session is None:
            self._slot.context = None
            return
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError("media fusion reads placeholders from input_ids; call the LM with input_ids=")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        start = cache.get_seq_length() if cache is not None else 0
        self._slot.context = self._session.step(input_ids, start, kwargs.get("position_ids"))


__all__ = [
    "FusedCausalLM",
    "FusedDecoderLayer",
    "GatedCrossAttentionBlock",
    "MaskedCrossAttention",
    "MediaContext",
]
