"""Model merging as pure functions on tensors and state dicts: linear soup, task arithmetic, TIES, DARE.

Every method reads the parents' tensors of one parameter and returns the merged tensor; the task
vector methods work on deltas ``x_i - base`` from a shared base model. The semantics are mergekit's
(``merge_methods/linear.py``, ``generalized_task_arithmetic.py``, ``sparsify.py``):

* **linear** (model soup, Wortsman et al. 2022, eq. 1): ``sum_i w_i x_i / sum_i w_i``
  (``normalize=False`` drops the division).
* **task arithmetic** (Ilharco et al. 2023, Sec. 2): ``base + scale * sum_i w_i delta_i``.
* **TIES** (Yadav et al. 2023, Sec. 3, Alg. 1): each delta is *trimmed* to its ``density`` share of
  largest magnitudes; the *elected sign* of an entry is the sign of ``sum_i w_i delta_i`` over the
  trimmed deltas (mergekit's ``consensus_method="sum"``, ties go to +); the *disjoint mean* averages
  only the entries that agree with it: ``sum_i w_i delta_i m_i / sum_i w_i m_i`` (``m_i`` = agrees,
  a divisor of 0 counts as 1), then ``base + scale * mixed``.
* **DARE** (Yu et al. 2024, eq. 2): each delta entry is dropped with probability ``p = 1 - density``
  and the survivors are rescaled by ``1 / (1 - p)``, so the delta is unchanged in expectation; the
  draws come from a seeded :class:`torch.Generator`. Then a plain weighted sum (mergekit's
  ``dare_linear``) or, with ``sign_consensus=True``, TIES's election and disjoint mean
  (``dare_ties``; mergekit does not normalise it by default, nor do we).

:func:`merge_state_dicts` applies a method to every floating tensor of state dicts of one
architecture (integer buffers must agree and are copied). LoRA layers (peft) are merged in weight
space: :func:`fold_lora` first writes each layer's effective weight ``W + scaling * B A`` into its
base weight and zeroes ``B``, so a merge of LoRA checkpoints is the merge of what the adapters do
(peft's ``add_weighted_adapter`` merges ``A`` and ``B`` separately for ``linear``/``ties``/``dare``,
which adds cross terms ``B_j A_i``; its exact ``cat`` combination equals our linear soup of folded
weights, see the tests).

Shape letters: n parents; every tensor of one parameter has the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import peft
import torch
from torch import Tensor, nn


def _weights(weights: Sequence[float], n: int, like: Tensor) -> Tensor:
    """``[n, 1, ...]`` weights broadcasting against ``[n, *shape]`` stacked tensors."""
    if len(weights) != n:
        raise ValueError(f"weights has {len(weights)} entries for {n} models")
    return torch.tensor(list(weights), dtype=like.dtype, device=like.device).view(n, *[1] * (like.dim() - 1))


def linear(tensors: Sequence[Tensor], weights: Sequence[float], *, normalize: bool = True) -> Tensor:
    """Weighted average of the parents' tensors (module docstring: linear)."""
    stacked = torch.stack(list(tensors))  # [n, ...]
    w = _weights(weights, len(tensors), stacked)
    mixed = (w * stacked).sum(0)
    return mixed / w.sum(0) if normalize else mixed


def magnitude_mask(delta: Tensor, density: float) -> Tensor:
    """Bool mask of the ``max(1, int(density * numel))`` entries of largest ``|delta|`` (TIES trim).

    mergekit keeps ``int(density * numel)`` and refuses 0; one entry is kept instead, so scalar
    parameters (gates) survive a low density.
    """
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
    mask[delta.abs().flatten().float().topk(k).indices] = True
    return mask.view_as(delta)


def sign_agreement(weighted_deltas: Tensor) -> Tensor:
    """``[n, ...]`` bool: entry agrees with the elected sign of ``weighted_deltas.sum(0)`` (>= 0: +)."""
    elected = torch.where(weighted_deltas.sum(0) >= 0, 1.0, -1.0).to(weighted_deltas.dtype)
    return weighted_deltas.sign() == elected


def _combine(
    base: Tensor,
    deltas: Tensor,
    weights: Sequence[float],
    *,
    sign_consensus: bool,
    normalize: bool,
    scale: float,
) -> Tensor:
    """mergekit's generalised task arithmetic on ``[n, ...]`` (already sparsified) deltas."""
    w = _weights(weights, len(deltas), deltas)
    weighted = deltas * w
    if sign_consensus:
        agree = sign_agreement(weighted).to(deltas.dtype)
        mixed, divisor = (weighted * agree).sum(0), (w * agree).sum(0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    else:
        mixed, divisor = weighted.sum(0), w.sum(0)
        divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
    if normalize:
        mixed = mixed / divisor
    return base + scale * mixed


def _deltas(base: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack([t - base for t in tensors])  # [n, ...]


def task_arithmetic(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    scale: float = 1.0,
    normalize: bool = False,
) -> Tensor:
    """``base + scale * sum_i w_i (x_i - base)`` (module docstring; ``scale`` is mergekit's lambda)."""
    return _combine(base, _deltas(base, tensors), weights, sign_consensus=False, normalize=normalize,
                    scale=scale)  # fmt: skip


def ties(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    density: float,
    scale: float = 1.0,
    normalize: bool = True,
) -> Tensor:
    """Trim to ``density``, elect signs, disjoint mean (module docstring).

    Raises:
        ValueError: ``density`` outside ``(0, 1]``.
    """
    _check_density(density)
    deltas = _deltas(base, tensors)
    trimmed = torch.stack([d * magnitude_mask(d, density) for d in deltas])
    return _combine(base, trimmed, weights, sign_consensus=True, normalize=normalize, scale=scale)


def dare(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    *,
    density: float,
    generator: torch.Generator,
    sign_consensus: bool = False,
    scale: float = 1.0,
    normalize: bool = False,
) -> Tensor:
    """Drop-and-rescale each delta (keep with probability ``density``, times ``1 / density``), then mix.

    The masks are drawn from ``generator`` parent after parent (module docstring).

    Raises:
        ValueError: ``density`` outside ``(0, 1]``.
    """
    _check_density(density)
    deltas = _deltas(base, tensors)
    keep = torch.full(deltas.shape[1:], density, dtype=torch.float32, device=deltas.device)
    masks = [torch.bernoulli(keep, generator=generator).to(deltas.dtype) for _ in deltas]
    dropped = torch.stack([d * m / density for d, m in zip(deltas, masks, strict=True)])
    return _combine(base, dropped, weights, sign_consensus=sign_consensus, normalize=normalize, scale=scale)


def _check_density(density: float) -> None:
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")


#: method name -> (needs a base model, function)
METHODS: dict[str, tuple[bool, Callable[..., Tensor]]] = {
    "linear": (False, linear),
    "task_arithmetic": (True, task_arithmetic),
    "ties": (True, ties),
    "dare": (True, dare),
}


def merge_state_dicts(
    method: str,
    states: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float],
    base: Mapping[str, Tensor] | None = None,
    **kwargs: Any,
) -> dict[str, Tensor]:
    """Merge state dicts of one architecture key by key, in sorted key order.

    Args:
        method: a key of :data:`METHODS`.
        states: the parents (for the task vector methods: the fine-tuned models, not the base).
        weights: one per parent.
        base: the shared base model (task arithmetic, TIES, DARE); ignored by ``linear``.
        kwargs: the method's options (``density``, ``scale``, ``normalize``, ``generator``...).

    Returns:
        The merged state dict; floating tensors in the parents' dtype (computed in float32 or wider),
        other tensors copied from the first parent.

    Raises:
        ValueError: an unknown method, a missing base, parents with different keys or shapes (naming
            the first such key), or integer tensors that differ between parents.
    """
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}; use one of {sorted(METHODS)}")
    needs_base, fn = METHODS[method]
    if needs_base and base is None:
        raise ValueError(f"merge method {method!r} needs a base model")
    everyone = [*states, *([base] if needs_base else [])]
    keys = set(states[0])
    for i, state in enumerate(everyone):
        if set(state) != keys:
            diff = sorted(set(state) ^ keys)
            raise ValueError(f"model {i} has other parameters than model 0, e.g. {diff[:3]}")
    merged = {}
    for key in sorted(keys):
        tensors = [s[key] for s in everyone]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise ValueError(f"{key}: shapes differ between models {[tuple(t.shape) for t in tensors]}")
        if not tensors[0].is_floating_point():
            if any(not torch.equal(t, tensors[0]) for t in tensors):
                raise ValueError(f"{key}: integer tensors differ between models")
            merged[key] = tensors[0].clone()
            continue
        work = torch.promote_types(tensors[0].dtype, torch.float32)
        parents = [s[key].to(work) for s in states]
        args = (base[key].to(work), parents) if needs_base else (parents,)
        merged[key] = fn(*args, weights, **kwargs).to(tensors[0].dtype)
    return merged


def fold_lora(module: nn.Module) -> nn.Module:
    """Write every peft LoRA layer's effective weight into its base weight, in place, and zero ``B``.

    ``W <- W + sum over active adapters of get_delta_weight(adapter)`` (``scaling * B @ A``, peft's own
    delta, honouring ``lora_alpha``, rsLoRA and ``fan_in_fan_out``), then ``lora_B <- 0``: the module
    computes exactly what it computed before (up to rounding of the sum) and keeps its state-dict keys.

    Returns:
        ``module``.
    """
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, peft.tuners.lora.LoraLayer):
                base = layer.get_base_layer().weight
                for adapter in layer.active_adapters:
                    base += layer.get_delta_weight(adapter).to(base.dtype)
                    layer.lora_B[adapter].weight.zero_()
    return module


__all__ = [
    "METHODS",
    "dare",
    "fold_lora",
    "linear",
    "magnitude_mask",
    "merge_state_dicts",
    "sign_agreement",
    "task_arithmetic",
    "ties",
]
