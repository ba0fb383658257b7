"""Policy-gradient losses of online RL: GRPO and its variants (DAPO, Dr. GRPO, GSPO), RLOO, and PPO's pieces.

Shaped like verl's ``trainer/ppo/core_algos.py``: small functions registered by name in
:data:`ADVANTAGE_ESTIMATORS`, :data:`KL_ESTIMATORS` and :data:`LOSS_AGGREGATIONS`, so a stage picks them
from its config; the names and defaults follow TRL 1.16's ``GRPOTrainer`` (``loss_type``,
``epsilon_low``/``epsilon_high``, ``importance_sampling_level``, ``scale_rewards``).

Token tensors are aligned with the completion: position ``i`` of ``logps`` is the log-probability of
completion token ``i``, and ``response_mask`` is 1 on the completion's tokens up to and including its
first EOS, 0 after it (and on padding).

Gradient accumulation: ``"dapo"`` divides by ``num_items``, the token count of the whole accumulated
batch, so the sum of the micro-batch losses is the loss of one batch holding them all. Under DDP, which
averages gradients over ranks, pass the all-reduced token count divided by the world size (TRL's
``num_items_in_batch / num_processes``).

Shape letters: b sequences (prompts x g, a prompt's g samples consecutive), g group size, t completion
tokens, v vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

ADVANTAGE_ESTIMATORS: dict[str, Callable[[Tensor, int], Tensor]] = {}
"""``name -> fn(rewards [b], group_size) -> advantages [b]``: ``"grpo"``, ``"rloo"``."""
KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
"""``name -> fn(logps [b, t], ref_logps [b, t]) -> [b, t]``: Schulman's ``"k1"``, ``"k2"``, ``"k3"``."""
LOSS_AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, Tensor | float | None, int | None], Tensor]] = {}
"""``name -> fn(per_token_loss, mask, num_items, max_completion_length) -> scalar``: the ``loss_type``."""


def _register(table: dict, name: str) -> Callable:
    def decorator(fn: Callable) -> Callable:
        table[name] = fn
        return fn

    return decorator


def _lookup(table: dict, name: str, field: str) -> Callable:
    if name not in table:
        raise ValueError(f"{field} must be one of {sorted(table)}, got {name!r}")
    return table[name]


def _token_mean(x: Tensor, mask: Tensor, num_items: Tensor | float | None = None) -> Tensor:
    """``sum(x * mask) / num_items`` (``num_items`` defaults to ``mask.sum()``, at least 1)."""
    if num_items is None:
        denominator = mask.sum()
    else:
        denominator = torch.as_tensor(num_items, dtype=x.dtype, device=x.device)
    return (x * mask).sum() / denominator.clamp(min=1)


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """``[b] -> [b / g, g]``, each row one prompt's samples."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [b * g], got shape {list(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards ({rewards.numel()}) must hold whole groups of group_size={group_size}")
    return rewards.float().view(-1, group_size)  # [b] -> [b / g, g]


# --- advantages -------------------------------------------------------------------------------------------


@_register(ADVANTAGE_ESTIMATORS, "grpo")
def group_advantages(rewards: Tensor, group_size: int, *, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """GRPO's group-relative advantages (Shao et al. 2024, arXiv:2402.03300, Sec. 4.1.2, outcome supervision).

    ``A_i = (r_i - mean(group)) / (std + eps)``, the std Bessel-corrected, as TRL's ``scale_rewards``:
    ``"group"`` divides by the group's std, ``"batch"`` by the std of all ``b`` rewards (Lite PPO, Liu et al.
    2025, arXiv:2508.08221), ``"none"`` only centres (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783).

    A group whose rewards are all equal gives zeros (centred to 0, then divided by ``eps``). A singleton
    group has no sibling to compare with: its std is taken as 0 (not the NaN of a one-sample Bessel std),
    so its advantage is a finite 0 and it contributes no gradient.

    Args:
        rewards: ``[b * g]`` float, a prompt's ``g`` samples consecutive.
        group_size: ``g``, samples per prompt.
        scale: ``"group"``, ``"batch"`` or ``"none"``.
        eps: added to the std (TRL: 1e-4).

    Returns:
        ``[b * g]`` float32 advantages.

    Raises:
        ValueError: if ``rewards`` is not 1-D or not whole groups, or ``scale`` is unknown.
    """
    grouped = _groups(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [b / g, g]
    if scale == "none":
        return centred.flatten()
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped)
    elif scale == "batch":
        std = rewards.float().std() if rewards.numel() > 1 else torch.zeros(())
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return (centred / (std + eps)).flatten()


@_register(ADVANTAGE_ESTIMATORS, "rloo")
def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740).

    ``A_i = r_i - 1/(g-1) * sum_{j != i} r_j``: each sample's baseline is the mean of its siblings, so it
    is unbiased (the baseline does not depend on the sample itself).

    Args:
        rewards: ``[b * g]`` float, a prompt's ``g`` samples consecutive.
        group_size: ``g >= 2``.

    Returns:
        ``[b * g]`` float32 advantages.

    Raises:
        ValueError: if ``group_size < 2`` (no sibling to leave out), or ``rewards`` is not whole groups.
    """
    if group_size < 2:
        raise ValueError(f"rloo_advantages needs group_size >= 2 (leave-one-out baseline), got {group_size}")
    grouped = _groups(rewards, group_size)
    baselines = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # [b / g, g]
    return (grouped - baselines).flatten()


# --- KL estimators ----------------------------------------------------------------------------------------
# Schulman, "Approximating KL Divergence" (2020): samples come from the policy q, the reference is p, and
# r = p(x) / q(x), so log r = ref_logps - logps. Each estimates KL(q || p) per token.


@_register(KL_ESTIMATORS, "k1")
def _k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    return logps - ref_logps  # -log r: unbiased, high variance, can be negative


@_register(KL_ESTIMATORS, "k2")
def _k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    return 0.5 * (logps - ref_logps) ** 2  # (log r)^2 / 2: biased, low variance, >= 0


@_register(KL_ESTIMATORS, "k3")
def _k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    log_r = ref_logps - logps
    return torch.exp(log_r) - log_r - 1  # (r - 1) - log r: unbiased, low variance, >= 0


def kl_estimate(logps: Tensor, ref_logps: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from sampled tokens (Schulman 2020).

    With ``log r = ref_logps - logps``: ``"k1"`` is ``-log r``, ``"k2"`` is ``(log r)^2 / 2``, ``"k3"`` is
    ``r - 1 - log r`` (GRPO's estimator, Shao et al. 2024, Eq. 4). At ``log r = -1``, k3 is ``e^-1``.

    Args:
        logps: ``[b, t]`` float, the policy's log-probs of the sampled tokens.
        ref_logps: ``[b, t]`` float, the reference model's log-probs of the same tokens.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
        ``[b, t]``, unmasked (the caller masks with ``response_mask``).

    Raises:
        ValueError: on an unknown estimator or mismatched shapes.
    """
    if logps.shape != ref_logps.shape:
        raise ValueError(f"ref_logps has shape {list(ref_logps.shape)}, logps has {list(logps.shape)}")
    return _lookup(KL_ESTIMATORS, estimator, "estimator")(logps, ref_logps)


# --- loss aggregation (TRL's loss_type) -------------------------------------------------------------------


@_register(LOSS_AGGREGATIONS, "grpo")
def _grpo(loss: Tensor, mask: Tensor, num_items: Tensor | float | None, max_len: int | None) -> Tensor:
    # Each sequence's token mean, then the mean over sequences (Shao et al. 2024, Eq. 3).
    return ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


@_register(LOSS_AGGREGATIONS, "bnpo")
def _bnpo(loss: Tensor, mask: Tensor, num_items: Tensor | float | None, max_len: int | None) -> Tensor:
    # The token mean over this (micro-)batch.
    return _token_mean(loss, mask)


@_register(LOSS_AGGREGATIONS, "dapo")
def _dapo(loss: Tensor, mask: Tensor, num_items: Tensor | float | None, max_len: int | None) -> Tensor:
    # Token-level loss (Yu et al. 2025, arXiv:2503.14476, Sec. 3.3) over the whole accumulated batch's tokens.
    return _token_mean(loss, mask, num_items)


@_register(LOSS_AGGREGATIONS, "dr_grpo")
def _dr_grpo(loss: Tensor, mask: Tensor, num_items: Tensor | float | None, max_len: int | None) -> Tensor:
    # A constant normaliser, b x max completion length: no length bias (Dr. GRPO, Liu et al. 2025).
    return (loss * mask).sum() / (loss.shape[0] * (max_len or loss.shape[1]))


def _check_token_tensors(response_mask: Tensor, **tensors: Tensor | None) -> None:
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be [b, t], got shape {list(response_mask.shape)}")
    for name, x in tensors.items():
        if x is not None and x.shape != response_mask.shape:
            raise ValueError(f"{name} has shape {list(x.shape)}, response_mask {list(response_mask.shape)}")


def policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    loss_type: str = "dapo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    importance_sampling: str = "token",
    ref_logps: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    max_completion_length: int | None = None,
    num_items: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate loss of PPO/GRPO with TRL's aggregations, clip-higher, GSPO and a KL term.

    Per token, with the importance weight ``w = exp(logps - old_logps)`` (``"token"``) or GSPO's
    ``w_i = exp(mean_t(logps - old_logps))`` shared by a sequence's tokens (``"sequence"``, Zheng et al.
    2025, arXiv:2507.18071, sequence-level ratio ``s_i``):

    ``loss_t = -min(w A, clip(w, 1 - epsilon_low, 1 + epsilon_high) A) + beta * KL_t``

    (PPO's L^CLIP, Schulman et al. 2017, Eq. 7; decoupled clip bounds, DAPO's clip-higher, Yu et al. 2025;
    ``KL_t = kl_estimate(logps, ref_logps, kl_estimator)``). Then ``loss_type`` aggregates:
    ``"grpo"`` each sequence's token mean, then the mean over sequences; ``"bnpo"`` the sum over tokens /
    this batch's token count; ``"dapo"`` the sum / ``num_items`` (the whole accumulated batch's token count;
    this batch's when None); ``"dr_grpo"`` the sum / ``(b * max_completion_length)`` (``t`` when None).

    Args:
        logps: ``[b, t]`` float32, the policy's log-probs of the sampled tokens (with grad).
        old_logps: ``[b, t]`` float32, the log-probs at sampling time, computed in eval mode (no dropout)
            so the ratio is exactly 1 at the first update; reused over ``num_iterations`` updates.
        advantages: ``[b]`` (one per sequence, GRPO/RLOO) or ``[b, t]`` (per token, PPO's GAE).
        response_mask: ``[b, t]`` bool/int/float, 1 on the completion tokens to train on.
        loss_type: one of :data:`LOSS_AGGREGATIONS`. Default ``"dapo"``.
        epsilon_low: lower clip, the ratio floor is ``1 - epsilon_low``. Default 0.2.
        epsilon_high: upper clip, the ratio ceiling is ``1 + epsilon_high`` (DAPO: 0.28). Default 0.2.
        importance_sampling: ``"token"`` or ``"sequence"`` (GSPO). Default ``"token"``.
        ref_logps: ``[b, t]`` the reference model's log-probs; required when ``beta != 0``, and when given
            the mean KL is reported even with ``beta == 0``.
        beta: weight of the per-token KL term. Default 0 (no reference needed).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``. Default ``"k3"``.
        max_completion_length: the normaliser of ``"dr_grpo"``; ignored by the others.
        num_items: the token count of the whole accumulated batch for ``"dapo"`` (int or scalar tensor,
            e.g. all-reduced); ignored by the others.

    Returns:
        ``(loss, metrics)``: the scalar loss, and detached scalar metrics averaged over this batch's
        masked tokens: ``"clip_ratio/low"`` (ratio below the floor with ``A < 0``), ``"clip_ratio/high"``
        (above the ceiling with ``A > 0``), ``"clip_ratio/region"`` (either: the clip fraction),
        ``"ratio"`` (mean importance weight), and ``"kl"`` (mean ``KL_t``) when ``ref_logps`` is given.

    Raises:
        ValueError: on an unknown ``loss_type``, ``importance_sampling`` or ``kl_estimator``; mismatched
            shapes; ``beta != 0`` without ``ref_logps``; a clip bound outside ``[0, 1)`` / ``>= 0``.
    """
    aggregate = _lookup(LOSS_AGGREGATIONS, loss_type, "loss_type")
    _check_token_tensors(response_mask, logps=logps, old_logps=old_logps, ref_logps=ref_logps)
    if advantages.shape not in (response_mask.shape[:1], response_mask.shape):
        raise ValueError(f"advantages must be [b] or [b, t], got {list(advantages.shape)}")
    if not (0 <= epsilon_low < 1 and epsilon_high >= 0):
        raise ValueError(f"need epsilon_low in [0, 1), epsilon_high >= 0; got {epsilon_low}, {epsilon_high}")
    if beta != 0 and ref_logps is None:
        raise ValueError("ref_logps is required when beta != 0 (the KL term)")
    mask = response_mask.to(logps.dtype)
    adv = advantages.to(logps.dtype)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv  # [b] -> [b, 1]

    log_ratio = logps - old_logps
    if importance_sampling == "token":
        log_weights = log_ratio
    elif importance_sampling == "sequence":
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(1)  # [b] -> [b, 1]
    else:
        raise ValueError(f"importance_sampling must be 'token' or 'sequence', got {importance_sampling!r}")
    weights = torch.exp(log_weights)
    clipped = torch.clamp(weights, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -torch.min(weights * adv, clipped * adv)  # [b, t] or [b, 1] (sequence IS, [b] adv)
    kl = None if ref_logps is None else kl_estimate(logps, ref_logps, kl_estimator)
    if beta != 0:
        per_token_loss = per_token_loss + beta * kl
    per_token_loss = per_token_loss.expand_as(mask)  # [b, 1] -> [b, t]
    loss = aggregate(per_token_loss, mask, num_items, max_completion_length)

    with torch.no_grad():
        low = ((weights < 1 - epsilon_low) & (adv < 0)).expand_as(mask).to(mask.dtype)
        high = ((weights > 1 + epsilon_high) & (adv > 0)).expand_as(mask).to(mask.dtype)
        metrics = {
            "clip_ratio/low": _token_mean(low, mask),
            "clip_ratio/high": _token_mean(high, mask),
            "clip_ratio/region": _token_mean(torch.maximum(low, high), mask),
            "ratio": _token_mean(weights.expand_as(mask), mask),
        }
        if kl is not None:
            metrics["kl"] = _token_mean(kl, mask)
    return loss, metrics


# --- PPO --------------------------------------------------------------------------------------------------


@torch.no_grad()
def kl_penalized_rewards(
    scores: Tensor,
    logps: Tensor,
    ref_logps: Tensor,
    response_mask: Tensor,
    *,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> Tensor:
    """Per-token rewards of RLHF's PPO: ``-kl_coef * KL_t`` on every token, plus the score on the last one.

    ``R(x, y) = r(x, y) - beta log(pi(y|x) / pi_ref(y|x))`` (Ziegler et al. 2019, arXiv:1909.08593, Sec. 2)
    spread over tokens as TRL's PPO does: the sequence score (e.g. the reward model's, read at the last
    response token) is added at the last masked position.

    Args:
        scores: ``[b]`` float, one score per sequence.
        logps: ``[b, t]`` float, the rollout policy's log-probs (``old_logps``), detached.
        ref_logps: ``[b, t]`` float, the reference model's log-probs.
        response_mask: ``[b, t]``, 1 on the response tokens.
        kl_coef: ``beta``, e.g. :attr:`AdaptiveKLController.kl_coef`.
        kl_estimator: ``"k1"`` (TRL's default), ``"k2"`` or ``"k3"``.

    Returns:
        ``[b, t]`` float32 rewards, 0 outside the mask; no grad.

    Raises:
        ValueError: on mismatched shapes, or a ``response_mask`` row with no token (no place for its score).
    """
    _check_token_tensors(response_mask, logps=logps, ref_logps=ref_logps)
    if scores.shape != response_mask.shape[:1]:
        raise ValueError(f"scores must be [b] = {list(response_mask.shape[:1])}, got {list(scores.shape)}")
    mask = response_mask.float()
    if (mask.sum(-1) == 0).any():
        raise ValueError("every row of response_mask needs at least one token to carry its score")
    rewards = -kl_coef * kl_estimate(logps.float(), ref_logps.float(), kl_estimator) * mask
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask * positions).argmax(-1)  # [b], index of the last response token
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores.float()
    return rewards


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, response_mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438, Eq. 16).

    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, ``returns = A + V``,
    run backwards over the masked tokens only (positions outside the mask are skipped, as verl does, so
    ``V`` after the last response token is 0). The caller whitens ``A`` (:func:`masked_whiten`).

    Args:
        rewards: ``[b, t]`` float per-token rewards (:func:`kl_penalized_rewards`).
        values: ``[b, t]`` float, the value head's estimates at sampling time.
        response_mask: ``[b, t]``, 1 on the response tokens.
        gamma: discount. Default 1 (TRL, verl).
        lam: GAE's lambda. Default 0.95.

    Returns:
        ``(advantages, returns)``, each ``[b, t]`` float32, 0 outside the mask; no grad.

    Raises:
        ValueError: on mismatched shapes.
    """
    _check_token_tensors(response_mask, rewards=rewards, values=values)
    mask, rewards, values = response_mask.float(), rewards.float(), values.float()
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        m = mask[:, t]
        advantages[:, t] = advantage * m
        next_value = values[:, t] * m + next_value * (1 - m)
        next_advantage = advantage * m + next_advantage * (1 - m)
    return advantages, (advantages + values) * mask


def masked_whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``values`` to zero mean and unit variance over the masked positions (TRL's, verl's).

    ``(x - mean) / sqrt(var + eps)`` with the mean and Bessel-corrected variance taken over ``mask``;
    ``shift_mean=False`` adds the mean back (used to whiten rewards without moving them).

    Args:
        values: ``[b, t]`` float (advantages or rewards).
        mask: ``[b, t]``, 1 where the statistics are taken.
        shift_mean: whether the result has zero mean. Default True.
        eps: added to the variance. Default 1e-8.

    Returns:
        ``[b, t]`` float32, 0 outside the mask.

    Raises:
        ValueError: on mismatched shapes, or fewer than two masked positions (no variance).
    """
    _check_token_tensors(mask, values=values)
    mask = mask.float()
    n = mask.sum()
    if n < 2:
        raise ValueError(f"masked_whiten needs at least 2 masked positions, got {int(n)}")
    values = values.float()
    mean = (values * mask).sum() / n
    var = (((values - mean) * mask) ** 2).sum() / (n - 1)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def value_loss(
    vpreds: Tensor,
    values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    *,
    cliprange_value: float = 0.2,
    num_items: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO's clipped value loss (OpenAI baselines' ppo2; TRL's and verl's ``cliprange_value``).

    ``0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)``, averaged over the masked tokens (over
    ``num_items`` tokens when given, for gradient accumulation as in ``"dapo"``).

    Args:
        vpreds: ``[b, t]`` float, the value head's current predictions (with grad).
        values: ``[b, t]`` float, its predictions at sampling time.
        returns: ``[b, t]`` float, the targets (:func:`gae`).
        response_mask: ``[b, t]``, 1 on the response tokens.
        cliprange_value: ``c``. Default 0.2.
        num_items: the accumulated batch's token count; None: this batch's.

    Returns:
        ``(loss, clip_fraction)``: scalar loss, and the detached fraction of masked tokens where the clipped
        term was the larger.

    Raises:
        ValueError: on mismatched shapes.
    """
    _check_token_tensors(response_mask, vpreds=vpreds, values=values, returns=returns)
    mask = response_mask.to(vpreds.dtype)
    vpreds_clipped = torch.clamp(vpreds, values - cliprange_value, values + cliprange_value)
    unclipped, clipped = (vpreds - returns) ** 2, (vpreds_clipped - returns) ** 2
    loss = 0.5 * _token_mean(torch.max(unclipped, clipped), mask, num_items)
    clip_fraction = _token_mean((clipped > unclipped).to(mask.dtype), mask).detach()
    return loss, clip_fraction


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy in nats of each position's categorical distribution: ``[b, t, v] -> [b, t]`` float32.

    ``H = logsumexp(z) - sum softmax(z) z``, computed in float32.
    """
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def entropy_bonus(
    entropy: Tensor, response_mask: Tensor, *, coef: float, num_items: Tensor | float | None = None
) -> Tensor:
    """The term ``-coef * mean_t H_t`` to add to the loss (PPO's entropy bonus, Schulman et al. 2017, Eq. 9).

    Args:
        entropy: ``[b, t]`` float, :func:`entropy_from_logits` of the policy's logits (with grad).
        response_mask: ``[b, t]``, 1 on the response tokens.
        coef: the bonus weight (e.g. 0.01).
        num_items: the accumulated batch's token count; None: this batch's.

    Returns:
        Scalar; negative for a positive ``coef``, so minimising the loss raises the entropy.

    Raises:
        ValueError: on mismatched shapes.
    """
    _check_token_tensors(response_mask, entropy=entropy)
    return -coef * _token_mean(entropy, response_mask.to(entropy.dtype), num_items)


@dataclass
class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. 2019 (arXiv:1909.08593, Sec. 2; TRL's, verl's).

    ``e = clip(KL / target - 1, -0.2, 0.2)``, ``kl_coef <- kl_coef * (1 + e * n_steps / horizon)``: the
    coefficient rises while the measured KL is above ``target`` and falls while below. Its state is its
    fields (``dataclasses.asdict`` saves it for an exact resume).

    Attributes:
        kl_coef: the current coefficient ``beta`` (TRL: ``init_kl_coef`` 0.2).
        target: the KL to hold, in nats per sequence (paper: 6).
        horizon: the number of samples over which the error is corrected (paper: 10000).
    """

    kl_coef: float
    target: float
    horizon: int

    def __post_init__(self) -> None:
        if self.target <= 0 or self.horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {self.target}, {self.horizon}")

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adjust ``kl_coef`` to the KL measured over the last ``n_steps`` samples; returns the new value."""
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.kl_coef *= 1 + error * n_steps / self.horizon
        return self.kl_coef
