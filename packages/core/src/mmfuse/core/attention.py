"""One attention entry point for every tower and for the fused language model.

:func:`attention` takes two layouts:

* padded: ``q`` ``[b, h, s_q, hd]``, ``k``/``v`` ``[b, h_kv, s_k, hd]`` -> ``[b, h, s_q, hd]``
  (the layout of ``torch.nn.functional.scaled_dot_product_attention``);
* packed: ``q`` ``[total_q, h, hd]``, ``k``/``v`` ``[total_k, h_kv, hd]`` with ``cu_seqlens_q``/``_k``
  (int32 ``[n + 1]``) -> ``[total_q, h, hd]`` (the layout of flash-attn's ``flash_attn_varlen_func``);
  segment ``i`` of the queries attends to segment ``i`` of the keys only.

Every backend computes the same function, flash-attn 2's:

* GQA: query head ``i`` reads key/value head ``i // (h // h_kv)``;
* ``causal`` is aligned to the bottom-right corner: in a segment of ``s_q`` queries and ``s_k`` keys,
  query ``i`` sees keys ``j <= i + s_k - s_q`` (the usual mask when ``s_q == s_k``; the KV-cache mask
  when ``s_q < s_k``);
* a query that sees no key (an empty key segment, a fully masked row) gets an output of exactly 0;
* ``attn_mask`` (padded layout only): bool, True = attend, broadcastable to ``[b, h, s_q, s_k]``,
  combined with ``causal`` by AND;
* ``scale`` defaults to ``hd ** -0.5``; ``dropout_p`` drops attention probabilities (pass 0 in eval).

Backends (``backend=``):

* ``flash``: flash-attn 2 (``flash_attn_func`` / ``flash_attn_varlen_func``; optional extra ``flash``),
  both layouts; CUDA sm80+, fp16/bf16, hd <= 256, no ``attn_mask``.
* ``torch_varlen``: ``torch.nn.attention.varlen.varlen_attn``, packed only; CUDA sm80+, fp16/bf16,
  hd % 8 == 0, no dropout, no ``attn_mask``.
* ``flex``: FlexAttention with a segment / causal block mask, both layouts; compiled on CUDA; on CPU
  forward only (no backward in torch 2.11); no ``attn_mask``, no dropout.
* ``sdpa_varlen``: packed only, any device; a host loop over ``cu_seqlens``: one SDPA call per segment, or
  for causal self-attention one per bucket of similar-length segments, right-padded, when that at least
  halves the calls (``SDPA_VARLEN_BUCKET_TOKENS``).
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, both layouts, any device; packed input
  becomes one block-diagonal ``[total_q, total_k]`` mask.
* ``eager``: the plain math reference, both layouts, any device; materialises every score.

``auto`` takes the first backend that supports the inputs, in the order flash, torch_varlen,
sdpa_varlen (packed) or flash, sdpa (padded). On CPU with torch 2.11 (16 sequences of 16..1024 tokens,
8 heads x 64, causal, forward + backward): per-segment SDPA 0.29 s, padded SDPA 0.45 s, block-diagonal
SDPA 2.7 s, FlexAttention's eager forward alone 15.7 s (it has no CPU backward and materialises the
whole score matrix), so ``flex`` is never chosen automatically; ``benchmarks/attention.py`` measures
the others. A backend named explicitly that cannot run the inputs raises
:class:`AttentionBackendError` saying why; nothing falls back silently.

Shape letters: b batch, h query heads, h_kv key/value heads, s_q/s_k query/key tokens, hd head size,
n segments, total_q/total_k packed tokens.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmfuse.core.packing import segment_ids

Backend = Literal["auto", "flash", "torch_varlen", "flex", "sdpa_varlen", "sdpa", "eager"]


class AttentionBackendError(RuntimeError):
    """An explicitly requested attention backend cannot run the given inputs."""


@dataclass(frozen=True)
class _Call:
    """The validated arguments of one :func:`attention` call."""

    q: Tensor
    k: Tensor
    v: Tensor
    cu_seqlens_q: Tensor | None
    cu_seqlens_k: Tensor | None
    max_seqlen_q: int | None
    max_seqlen_k: int | None
    causal: bool
    scale: float
    dropout_p: float
    attn_mask: Tensor | None

    @property
    def packed(self) -> bool:
        return self.cu_seqlens_q is not None

    @property
    def gqa(self) -> bool:
        return self.q.shape[-2 if self.packed else -3] != self.k.shape[-2 if self.packed else -3]

    def padded_view(self) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as ``[b, h, s, hd]``; packed ones as one row: ``[total, h, hd] -> [1, h, total, hd]``."""
        if not self.packed:
            return self.q, self.k, self.v
        return tuple(t.transpose(0, 1).unsqueeze(0) for t in (self.q, self.k, self.v))  # type: ignore[return-value]

    def unpad_view(self, out: Tensor) -> Tensor:
        """Inverse of :meth:`padded_view` for the output: ``[1, h, total_q, hd] -> [total_q, h, hd]``."""
        return out.squeeze(0).transpose(0, 1) if self.packed else out


def _causal_mask(s_q: int, s_k: int, device: torch.device) -> Tensor:
    """Bottom-right aligned causal mask ``[s_q, s_k]`` bool: query i sees keys j <= i + s_k - s_q."""
    return torch.ones(s_q, s_k, dtype=torch.bool, device=device).tril(s_k - s_q)


def _mask_mod(call: _Call) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None:
    """Segment and causal visibility as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``.

    Written with tensor indexing only, so it also builds dense masks from broadcast index grids.
    Returns None when every query sees every key (padded, not causal).
    """
    if not call.packed:
        if not call.causal:
            return None
        shift = call.k.shape[-2] - call.q.shape[-2]
        return lambda b, h, q_idx, kv_idx: kv_idx <= q_idx + shift
    cu_q, cu_k = call.cu_seqlens_q.long(), call.cu_seqlens_k.long()  # type: ignore[union-attr]
    seg_q, seg_k = segment_ids(cu_q, call.q.shape[0]), segment_ids(cu_k, call.k.shape[0])
    shift = (cu_k[1:] - cu_k[:-1]) - (cu_q[1:] - cu_q[:-1])  # [n] s_k - s_q of each segment

    def visible(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        seg = seg_q[q_idx]
        same = seg == seg_k[kv_idx]
        if not call.causal:
            return same
        return same & (kv_idx - cu_k[seg] <= q_idx - cu_q[seg] + shift[seg])

    return visible


def _dense_mask(call: _Call) -> Tensor | None:
    """Everything the call masks as one bool tensor broadcastable to ``[b, h, s_q, s_k]``, or None."""
    q, k, _ = call.padded_view()
    mask_mod = _mask_mod(call)
    mask = call.attn_mask
    if mask_mod is not None:
        q_idx = torch.arange(q.shape[-2], device=q.device).unsqueeze(-1)
        kv_idx = torch.arange(k.shape[-2], device=q.device).unsqueeze(0)
        visible = mask_mod(None, None, q_idx, kv_idx)  # [s_q, s_k]
        mask = visible if mask is None else mask & visible
    return mask


def _sees_any_key(mask: Tensor) -> Tensor:
    return mask.any(dim=-1, keepdim=True)


# ---- backends: a reason they cannot run (or None), and the computation ------------------------------


def _needs_cuda_half(call: _Call, name: str) -> str | None:
    if not call.q.is_cuda:
        return f"{name} needs CUDA tensors (got {call.q.device.type})"
    if call.q.dtype not in (torch.float16, torch.bfloat16):
        return f"{name} needs float16 or bfloat16 (got {call.q.dtype})"
    if torch.cuda.get_device_capability(call.q.device) < (8, 0):
        return f"{name} needs an Ampere (sm80) or newer GPU"
    if call.q.shape[-1] > 256:
        return f"{name} supports head_dim <= 256 (got {call.q.shape[-1]})"
    if call.attn_mask is not None:
        return f"{name} takes no dense attn_mask: express padding with the packed layout (cu_seqlens)"
    return None


def _flash_unsupported(call: _Call) -> str | None:
    reason = _needs_cuda_half(call, "flash")
    if reason is None and importlib.util.find_spec("flash_attn") is None:
        reason = "flash needs the flash-attn package: `uv sync --extra flash` on a CUDA machine"
    return reason


def _flash(call: _Call) -> Tensor:
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    options = dict(dropout_p=call.dropout_p, softmax_scale=call.scale, causal=call.causal)
    if call.packed:
        return flash_attn_varlen_func(
            call.q,
            call.k,
            call.v,
            call.cu_seqlens_q,
            call.cu_seqlens_k,
            call.max_seqlen_q,
            call.max_seqlen_k,
            **options,
        )
    q, k, v = (t.transpose(1, 2) for t in (call.q, call.k, call.v))  # [b, h, s, hd] -> [b, s, h, hd]
    return flash_attn_func(q, k, v, **options).transpose(1, 2)  # [b, s_q, h, hd] -> [b, h, s_q, hd]


def _torch_varlen_unsupported(call: _Call) -> str | None:
    if not call.packed:
        return "torch_varlen takes the packed layout only (pass cu_seqlens_q/cu_seqlens_k)"
    if call.dropout_p > 0:
        return "torch_varlen has no dropout (varlen_attn fixes dropout_p = 0)"
    if call.q.shape[-1] % 8:
        return f"torch_varlen needs head_dim divisible by 8 (got {call.q.shape[-1]})"
    return _needs_cuda_half(call, "torch_varlen")


def _torch_varlen(call: _Call) -> Tensor:
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(
        call.q,
        call.k,
        call.v,
        call.cu_seqlens_q,
        call.cu_seqlens_k,
        call.max_seqlen_q,
        call.max_seqlen_k,
        scale=call.scale,
        window_size=(-1, 0) if call.causal else (-1, -1),
    )


def _flex_unsupported(call: _Call) -> str | None:
    if call.attn_mask is not None:
        return "flex takes no dense attn_mask: use the packed layout or sdpa"
    if call.dropout_p > 0:
        return "flex has no dropout"
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (call.q, call.k, call.v))
    if not call.q.is_cuda and grad:
        return "flex has no backward on CPU (torch 2.11): run it under torch.no_grad() or use sdpa_varlen"
    return None


@functools.cache
def _compiled_flex_attention() -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(call: _Call) -> Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = call.padded_view()
    if call.q.is_cuda and k.untyped_storage().data_ptr() == q.untyped_storage().data_ptr():
        k, v = k.clone(), v.clone()  # compiling flex_attention fails when q, k, v share one buffer
    mask_mod = _mask_mod(call)
    block_mask = None
    if mask_mod is not None:
        block_mask = create_block_mask(mask_mod, None, None, q.shape[-2], k.shape[-2], device=q.device)
    kernel = _compiled_flex_attention() if q.is_cuda else flex_attention
    out = kernel(q, k, v, block_mask=block_mask, scale=call.scale, enable_gqa=call.gqa)
    return call.unpad_view(out)


def _sdpa_varlen_unsupported(call: _Call) -> str | None:
    return (
        None if call.packed else "sdpa_varlen takes the packed layout only (pass cu_seqlens_q/cu_seqlens_k)"
    )


#: sdpa_varlen runs causal self-attention segments whose lengths round up to the same multiple of this many
#: tokens as one SDPA call, right-padded to the longest of them, when that at least halves the calls.
#: On this machine (forward + backward, best of 40): 39 segments of 3..107 tokens (8 packed rows of the
#: SFT benchmark, 4 heads x 32) took 7.8 ms of CPU time in one call per segment, 5.4 ms in buckets of 32
#: tokens (6.6 ms of 16, 7.3 ms of 64), 21 ms in one bucket padded to 107 tokens (1 thread); with 2
#: threads on the loaded shared machine, 72 vs 34 ms wall time (medians 289 vs 182 ms). 16 segments of
#: 16..1024 tokens (8 heads x 64) fall into 15 buckets and keep one call per segment (0.43 s).
SDPA_VARLEN_BUCKET_TOKENS = 32


def _length_buckets(lengths: list[int]) -> list[list[int]]:
    """The non-empty segments grouped by ``ceil(length / SDPA_VARLEN_BUCKET_TOKENS)``, in order."""
    buckets: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        if n:
            buckets.setdefault(-(-n // SDPA_VARLEN_BUCKET_TOKENS), []).append(i)
    return list(buckets.values())


def _sdpa_varlen_buckets(call: _Call, lengths: list[int], buckets: list[list[int]]) -> Tensor:
    """Causal self-attention (equal query and key segments), one SDPA call per length bucket.

    The segments of a bucket are gathered into ``[m, h, s_b, hd]``, each right-padded to the bucket's
    longest: a real query sees only keys at or before it, never the padding after its segment, so
    ``is_causal`` alone computes every segment exactly; the padded query rows are dropped (their
    gradient is zero). A segment alone in its bucket is a view, as in the per-segment loop, and one
    gather serves every shared bucket, so the backward scatters into ``q``, ``k``, ``v`` once.
    """
    shared = [b for b in buckets if len(b) > 1]
    views = [t.split(lengths) for t in (call.q, call.k, call.v)]  # split: one concatenation in backward
    outs: list[Tensor | None] = [None] * len(lengths)  # each segment's output [s_i, h, hd_v]
    for segments in buckets:
        if len(segments) == 1:
            q, k, v = (parts[segments[0]].transpose(0, 1).unsqueeze(0) for parts in views)  # [1, h, s_i, hd]
            outs[segments[0]] = _causal_sdpa(call, q, k, v)[0]
    if shared:
        starts = call.cu_seqlens_q[:-1].long()  # type: ignore[index]
        reals, slot_index = [], []
        for segments in shared:
            n = torch.tensor([lengths[i] for i in segments], device=call.q.device)
            slots = torch.arange(max(lengths[i] for i in segments), device=call.q.device)
            reals.append(slots < n[:, None])  # [m, s_b]
            slot_index.append(torch.where(reals[-1], starts[segments][:, None] + slots, 0).flatten())
        sizes = [real.numel() for real in reals]
        gathered = [t[torch.cat(slot_index)].split(sizes) for t in (call.q, call.k, call.v)]
        for segments, real, *qkv in zip(shared, reals, *gathered, strict=True):
            q, k, v = (t.view(*real.shape, *t.shape[1:]).transpose(1, 2) for t in qkv)  # [m, h, s_b, hd]
            rows = _causal_sdpa(call, q, k, v)[real]  # [tokens_b, h, hd]: segment after segment
            for i, out in zip(segments, rows.split([lengths[i] for i in segments]), strict=True):
                outs[i] = out
    present = [out for out in outs if out is not None]
    return torch.cat(present) if present else call.q.new_zeros(*call.q.shape[:-1], call.v.shape[-1])


def _causal_sdpa(call: _Call, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA with ``is_causal`` on ``[m, h, s, hd]``, returned as ``[m, s, h, hd_v]``."""
    out = F.scaled_dot_product_attention(
        q, k, v, dropout_p=call.dropout_p, is_causal=True, scale=call.scale, enable_gqa=call.gqa
    )
    return out.transpose(1, 2)


def _sdpa_varlen(call: _Call) -> Tensor:
    lengths_q = torch.diff(call.cu_seqlens_q).tolist()  # type: ignore[arg-type]
    lengths_k = torch.diff(call.cu_seqlens_k).tolist()  # type: ignore[arg-type]
    if sum(lengths_q) != call.q.shape[0] or sum(lengths_k) != call.k.shape[0]:
        raise ValueError(
            f"cu_seqlens cover {sum(lengths_q)} query and {sum(lengths_k)} key tokens, but q has "
            f"{call.q.shape[0]} and k {call.k.shape[0]}"
        )
    if call.causal and lengths_q == lengths_k:
        buckets = _length_buckets(lengths_q)
        if 2 * len(buckets) <= sum(map(len, buckets)):  # bucketing at least halves the SDPA calls
            return _sdpa_varlen_buckets(call, lengths_q, buckets)
    # split (not slicing): its backward concatenates the segment gradients once
    parts = zip(call.q.split(lengths_q), call.k.split(lengths_k), call.v.split(lengths_k), strict=True)
    outs = []
    for q, k, v in parts:
        if not len(k):
            outs.append(q.new_zeros(*q.shape[:-1], call.v.shape[-1]))
            continue
        # [s_i, h, hd] -> [1, h, s_i, hd]: SDPA's fused CPU kernel takes 4-D input (3-D runs the math path)
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        s_q, s_k = q.shape[-2], k.shape[-2]
        mask = _causal_mask(s_q, s_k, q.device) if call.causal and s_q != s_k else None
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=call.dropout_p,
            is_causal=call.causal and mask is None,
            scale=call.scale,
            enable_gqa=call.gqa,
        )
        outs.append(out[0].transpose(0, 1))  # [1, h, s_q_i, hd] -> [s_q_i, h, hd]
    return torch.cat(outs)


def _sdpa(call: _Call) -> Tensor:
    q, k, v = call.padded_view()
    implicit_causal = (
        call.causal and not call.packed and call.attn_mask is None and q.shape[-2] == k.shape[-2]
    )
    mask = None if implicit_causal else _dense_mask(call)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=call.dropout_p,
        is_causal=implicit_causal,
        scale=call.scale,
        enable_gqa=call.gqa,
    )
    if mask is not None:
        # Rows that see no key: SDPA's CPU kernels return 0 (tested); its CUDA kernels do not all
        # document that, so pin the contract here.
        out = out.masked_fill(~_sees_any_key(mask), 0.0)
    return call.unpad_view(out)


def _eager(call: _Call) -> Tensor:
    q, k, v = call.padded_view()
    if call.gqa:
        group = q.shape[1] // k.shape[1]
        k, v = (
            k.repeat_interleave(group, dim=1),
            v.repeat_interleave(group, dim=1),
        )  # [b, h_kv, ..] -> [b, h, ..]
    scores = (q @ k.transpose(-2, -1)) * call.scale  # [b, h, s_q, s_k]
    mask = _dense_mask(call)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    if mask is not None:
        probs = probs.masked_fill(~_sees_any_key(mask), 0.0)  # softmax over no key is NaN: see nothing
    if call.dropout_p > 0:
        probs = F.dropout(probs, p=call.dropout_p)
    return call.unpad_view(probs @ v)


def _always(call: _Call) -> None:
    return None


_BACKENDS: dict[str, tuple[Callable[[_Call], str | None], Callable[[_Call], Tensor]]] = {
    "flash": (_flash_unsupported, _flash),
    "torch_varlen": (_torch_varlen_unsupported, _torch_varlen),
    "flex": (_flex_unsupported, _flex),
    "sdpa_varlen": (_sdpa_varlen_unsupported, _sdpa_varlen),
    "sdpa": (_always, _sdpa),
    "eager": (_always, _eager),
}
_AUTO_PACKED = ("flash", "torch_varlen", "sdpa_varlen")
_AUTO_PADDED = ("flash", "sdpa")


def _validate(call: _Call) -> None:
    """Raise ValueError on inconsistent shapes or arguments, whatever the backend."""
    q, k, v = call.q, call.k, call.v
    rank = 3 if call.packed else 4
    if q.dim() != rank or k.dim() != rank or v.dim() != rank:
        layout = "packed [total, h, hd]" if call.packed else "padded [b, h, s, hd]"
        raise ValueError(
            f"the {layout} layout needs {rank}-D q, k, v; got {[tuple(t.shape) for t in (q, k, v)]}"
        )
    head_axis = -2 if call.packed else -3
    h, h_kv = q.shape[head_axis], k.shape[head_axis]
    if v.shape[head_axis] != h_kv or h % h_kv or q.shape[-1] != k.shape[-1] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"q, k, v {[tuple(t.shape) for t in (q, k, v)]}: k and v must match, as must the head sizes"
            " of q and k, and h must be a multiple of h_kv"
        )
    if call.packed:
        cu_q, cu_k = call.cu_seqlens_q, call.cu_seqlens_k
        if cu_q.dtype != torch.int32 or cu_k.dtype != torch.int32 or cu_q.shape != cu_k.shape:  # type: ignore[union-attr]
            raise ValueError("cu_seqlens_q and cu_seqlens_k must be int32 tensors of the same length n + 1")
        if call.attn_mask is not None:
            raise ValueError("attn_mask applies to the padded layout only; packed segments already mask")
    elif q.shape[0] != k.shape[0]:
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}")
    if call.attn_mask is not None and call.attn_mask.dtype != torch.bool:
        raise ValueError(f"attn_mask must be bool (True = attend), got {call.attn_mask.dtype}")
    if not 0.0 <= call.dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {call.dropout_p}")


def _max_seqlen(cu_seqlens: Tensor) -> int:
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if len(cu_seqlens) > 1 else 0


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    cu_seqlens_q: Tensor | None = None,
    cu_seqlens_k: Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    attn_mask: Tensor | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """Scaled dot-product attention, padded or packed, through the chosen backend.

    Computes ``softmax(q k^T * scale + mask) v`` (Vaswani et al. 2017, eq. 1) with the semantics in the
    module docstring.

    Args:
        q: ``[b, h, s_q, hd]`` (padded) or ``[total_q, h, hd]`` (packed).
        k: ``[b, h_kv, s_k, hd]`` or ``[total_k, h_kv, hd]``; ``h % h_kv == 0``.
        v: as ``k`` (its last size may differ for the sdpa, sdpa_varlen and eager backends).
        cu_seqlens_q: ``[n + 1]`` int32 query segment boundaries; selects the packed layout.
        cu_seqlens_k: ``[n + 1]`` int32 key segment boundaries; defaults to ``cu_seqlens_q``.
        max_seqlen_q: longest query segment; computed (one device sync) when None.
        max_seqlen_k: longest key segment; defaults to ``max_seqlen_q`` when ``cu_seqlens_k`` is None.
        causal: bottom-right aligned causal mask within each segment.
        scale: score multiplier; ``hd ** -0.5`` when None.
        dropout_p: attention-probability dropout; pass 0.0 in eval mode.
        attn_mask: padded layout only; bool, True = attend, broadcastable to ``[b, h, s_q, s_k]``.
        backend: a backend name from the module docstring, or ``"auto"``.

    Returns:
        ``[b, h, s_q, hd_v]`` or ``[total_q, h, hd_v]``, the dtype of ``q``.

    Raises:
        ValueError: inconsistent shapes, dtypes or arguments, or an unknown backend name.
        AttentionBackendError: the requested backend cannot run these inputs (the message says why).
    """
    if backend != "auto" and backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {['auto', *_BACKENDS]}")
    if cu_seqlens_q is not None:
        if cu_seqlens_k is None:
            cu_seqlens_k, max_seqlen_k = cu_seqlens_q, max_seqlen_q
        max_seqlen_q = _max_seqlen(cu_seqlens_q) if max_seqlen_q is None else max_seqlen_q
        max_seqlen_k = _max_seqlen(cu_seqlens_k) if max_seqlen_k is None else max_seqlen_k
    elif cu_seqlens_k is not None:
        raise ValueError("cu_seqlens_k given without cu_seqlens_q")
    call = _Call(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        causal,
        q.shape[-1] ** -0.5 if scale is None else scale,
        dropout_p,
        attn_mask,
    )
    _validate(call)
    if backend == "auto":
        backend = next(
            name
            for name in (_AUTO_PACKED if call.packed else _AUTO_PADDED)
            if _BACKENDS[name][0](call) is None
        )
    unsupported, run = _BACKENDS[backend]
    reason = unsupported(call)
    if reason is not None:
        raise AttentionBackendError(reason)
    return run(call)


__all__ = ["AttentionBackendError", "Backend", "attention"]
