"""Preference losses: the DPO family and the Bradley-Terry loss of a reward model.

Pure functions of per-sequence scores; the stage computes them and reduces the per-pair losses
(usually ``.mean()``). Conventions match TRL 1.16 (``DPOTrainer._compute_loss``, ``CPOTrainer.cpo_loss``,
``RewardTrainer.compute_loss``), with TRL's names:

- ``*_logps`` are **sums** of the completion tokens' log-probabilities (prompt tokens excluded), so a
  log-ratio ``policy_chosen_logps - ref_chosen_logps`` is a sequence-level ``log pi/pi_ref``;
- ``chosen_lengths`` / ``rejected_lengths`` count those completion tokens; the length-normalised types
  (``ipo``, ``simpo``) and the RPO term divide by them;
- the implicit rewards are ``beta * (policy_logps - ref_logps)`` for every reference-based type (what
  TRL logs as ``rewards/chosen`` and ``rewards/rejected``, also for ``ipo``), and ``beta * policy_logps /
  lengths`` for the reference-free ``simpo`` (TRL's CPOTrainer).

Shape letters: b preference pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

PairLoss = Callable[[Tensor, Tensor, float, float], Tensor]


@dataclass(frozen=True)
class _LossType:
    """A DPO loss type: ``fn(chosen_scores, rejected_scores, beta, label_smoothing) -> [b]``.

    ``normalised``: the scores are divided by the completion lengths (lengths required).
    ``reference``: the scores are log-ratios to the reference model (else the policy's log-probs).
    ``smoothing``: the type reads ``label_smoothing`` (others refuse a non-zero value).
    """

    fn: PairLoss
    normalised: bool = False
    reference: bool = True
    smoothing: bool = False


def _sigmoid(chosen: Tensor, rejected: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # DPO (Rafailov et al. 2023, Eq. 7); with label_smoothing eps, conservative DPO (cDPO, Mitchell 2023):
    # -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d), d = chosen - rejected.
    logits = beta * (chosen - rejected)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _robust(chosen: Tensor, rejected: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # rDPO (Chowdhury et al. 2024, arXiv:2403.00409): the unbiased loss under label flips of rate eps,
    # (-(1 - eps) log sigmoid(beta d) + eps log sigmoid(-beta d)) / (1 - 2 eps).
    logits = beta * (chosen - rejected)
    flipped = label_smoothing * F.logsigmoid(-logits)
    return (-(1 - label_smoothing) * F.logsigmoid(logits) + flipped) / (1 - 2 * label_smoothing)


def _hinge(chosen: Tensor, rejected: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # SLiC's hinge on the normalised likelihood as RSO uses it (Liu et al. 2023, arXiv:2309.06657):
    # max(0, 1 - beta d); 1 / beta is the margin.
    return torch.relu(1 - beta * (chosen - rejected))


def _ipo(chosen: Tensor, rejected: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # IPO (Azar et al. 2023, arXiv:2310.12036, Eq. 17) with tau = beta: (d - 1 / (2 tau))^2, where d is
    # built from per-token average log-ratios (the normalisation TRL confirmed with the IPO authors).
    return (chosen - rejected - 1 / (2 * beta)) ** 2


def _apo_zero(chosen: Tensor, rejected: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # APO-zero (D'Oosterlinck et al. 2024, arXiv:2408.06266, Eq. 7): raise the chosen likelihood, lower the
    # rejected one, each on its own: (1 - sigmoid(beta c)) + sigmoid(beta r).
    return 1 - torch.sigmoid(beta * chosen) + torch.sigmoid(beta * rejected)


def _nca_pair(chosen: Tensor, rejected: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # NCA for pairs (Chen et al. 2024, arXiv:2402.05369, Sec. 4): absolute rather than relative likelihood,
    # -log sigmoid(beta c) - 1/2 log sigmoid(-beta c) - 1/2 log sigmoid(-beta r).
    c, r = beta * chosen, beta * rejected
    return -F.logsigmoid(c) - 0.5 * F.logsigmoid(-c) - 0.5 * F.logsigmoid(-r)


DPO_LOSS_TYPES: dict[str, _LossType] = {
    "sigmoid": _LossType(_sigmoid, smoothing=True),
    "robust": _LossType(_robust, smoothing=True),
    "hinge": _LossType(_hinge),
    "ipo": _LossType(_ipo, normalised=True),
    # SimPO (Meng et al. 2024, arXiv:2405.14734, Eq. 6): -log sigmoid(beta (c - r) - gamma) on per-token
    # average policy log-probs, no reference; the margin gamma enters as a shift of the rejected score.
    "simpo": _LossType(_sigmoid, normalised=True, reference=False, smoothing=True),
    "apo_zero": _LossType(_apo_zero),
    "nca_pair": _LossType(_nca_pair),
}


class DPOOutput(NamedTuple):
    """What :func:`dpo_loss` returns; unpacks like TRL's ``(losses, chosen_rewards, rejected_rewards)``."""

    losses: Tensor
    """``[b]`` float32, one loss per pair (RPO term included); reduce with ``.mean()``."""
    chosen_rewards: Tensor
    """``[b]`` float32, detached: the chosen answer's implicit reward (see the module docstring)."""
    rejected_rewards: Tensor
    """``[b]`` float32, detached: the rejected answer's implicit reward."""


def _check_lengths(name: str, lengths: Tensor | None, b: int, why: str) -> Tensor:
    if lengths is None:
        raise ValueError(f"{name} is required {why}: pass the number of completion tokens of each answer")
    if lengths.shape != (b,):
        raise ValueError(f"{name} must have shape [{b}] (one count per pair), got {list(lengths.shape)}")
    if (lengths < 1).any():
        raise ValueError(f"{name} must be >= 1 for every pair (an empty completion has no log-probs)")
    return lengths.float()


def _check_logps(**logps: Tensor | None) -> int:
    shapes = {name: tuple(x.shape) for name, x in logps.items() if x is not None}
    b_shape = shapes["policy_chosen_logps"]
    if len(b_shape) != 1:
        raise ValueError(f"policy_chosen_logps must be [b] sequence log-probs, got shape {list(b_shape)}")
    for name, shape in shapes.items():
        if shape != b_shape:
            raise ValueError(f"{name} has shape {list(shape)}, policy_chosen_logps has {list(b_shape)}")
    return b_shape[0]


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    simpo_gamma: float = 0.5,
    rpo_alpha: float | None = None,
) -> DPOOutput:
    """Per-pair losses of the DPO family, with the chosen and rejected implicit rewards.

    With ``c`` and ``r`` the chosen and rejected scores (sequence log-ratios ``policy_logps - ref_logps``,
    per-token averages for ``ipo``, per-token average policy log-probs for ``simpo``) and ``d = c - r``:

    - ``"sigmoid"``: DPO, ``-log sigmoid(beta d)`` (Rafailov et al. 2023, Eq. 7). With ``label_smoothing``
      eps > 0 it is conservative DPO (cDPO, Mitchell 2023): ``-(1-eps) log sigmoid(beta d) - eps log
      sigmoid(-beta d)``.
    - ``"robust"``: rDPO (Chowdhury et al. 2024), ``(-(1-eps) log sigmoid(beta d) + eps log sigmoid(-beta d))
      / (1 - 2 eps)``, unbiased under preference flips of rate eps.
    - ``"hinge"``: SLiC/RSO (Zhao et al. 2023; Liu et al. 2023), ``max(0, 1 - beta d)``.
    - ``"ipo"``: IPO (Azar et al. 2023, Eq. 17, ``tau = beta``), ``(d - 1/(2 beta))^2`` on per-token average
      log-ratios, so both lengths are required.
    - ``"simpo"``: SimPO (Meng et al. 2024, Eq. 6), reference-free and length-normalised:
      ``-log sigmoid(beta d - simpo_gamma)``; cDPO-smoothed, as in TRL's CPOTrainer, by ``label_smoothing``.
    - ``"apo_zero"``: APO-zero (D'Oosterlinck et al. 2024, Eq. 7), ``1 - sigmoid(beta c) + sigmoid(beta r)``.
    - ``"nca_pair"``: NCA (Chen et al. 2024), ``-log sigmoid(beta c) - (log sigmoid(-beta c) + log
      sigmoid(-beta r)) / 2``.

    RPO (Pang et al. 2024, arXiv:2404.19733, their DPO + NLL loss): ``rpo_alpha`` adds ``rpo_alpha * NLL`` to
    each pair's loss, the chosen answer's per-token negative log-likelihood under the policy,
    ``-policy_chosen_logps / chosen_lengths``. It needs no extra input: it reuses the summed log-probs and
    ``chosen_lengths``.
    TRL's ``loss_type=["sigmoid", "sft"], loss_weights=[1, alpha]`` averages the NLL over all chosen tokens
    of the batch instead; the two agree when the chosen answers have equal lengths.

    Args:
        policy_chosen_logps: ``[b]`` float32, the policy's summed completion log-probs of the chosen answers.
        policy_rejected_logps: ``[b]`` float32, same for the rejected answers.
        ref_chosen_logps: ``[b]`` float32, the frozen reference's (live or precomputed); ignored by
            ``"simpo"``, which accepts None.
        ref_rejected_logps: ``[b]`` float32, same for the rejected answers.
        beta: the inverse temperature (DPO's beta; IPO's tau; SimPO's beta, typically 2-10). Default 0.1.
        loss_type: one of :data:`DPO_LOSS_TYPES`. Default ``"sigmoid"``.
        label_smoothing: the assumed preference-flip probability eps in ``[0, 0.5)``, read by ``"sigmoid"``
            (cDPO), ``"robust"`` and ``"simpo"``. Default 0.
        chosen_lengths: ``[b]`` completion-token counts of the chosen answers (int or float), required by
            ``"ipo"``, ``"simpo"`` and ``rpo_alpha``.
        rejected_lengths: ``[b]``, same for the rejected answers, required by ``"ipo"`` and ``"simpo"``.
        simpo_gamma: SimPO's target reward margin gamma (TRL's ``simpo_gamma``). Default 0.5.
        rpo_alpha: weight of RPO's chosen-answer NLL term (TRL < 1.0's ``rpo_alpha``); None: no term.

    Returns:
        :class:`DPOOutput` ``(losses, chosen_rewards, rejected_rewards)``, each ``[b]``.

    Raises:
        ValueError: on an unknown ``loss_type``; a log-probs tensor that is not ``[b]`` or does not match
            the others; missing reference log-probs for a reference-based type; ``label_smoothing`` outside
            ``[0, 0.5)`` or non-zero for a type that ignores it; ``beta <= 0``; missing, mis-shaped or
            non-positive lengths where they are required.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {sorted(DPO_LOSS_TYPES)}, got {loss_type!r}")
    spec = DPO_LOSS_TYPES[loss_type]
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
    if label_smoothing and not spec.smoothing:
        raise ValueError(f"label_smoothing is not used by loss_type={loss_type!r}; leave it at 0")
    if spec.reference and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"ref_chosen_logps and ref_rejected_logps are required by loss_type={loss_type!r}")
    b = _check_logps(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )

    chosen, rejected = policy_chosen_logps.float(), policy_rejected_logps.float()
    if spec.reference:
        chosen, rejected = chosen - ref_chosen_logps.float(), rejected - ref_rejected_logps.float()
        chosen_rewards, rejected_rewards = beta * chosen.detach(), beta * rejected.detach()
    if spec.normalised:
        why = f"by loss_type={loss_type!r} (per-token average scores)"
        chosen = chosen / _check_lengths("chosen_lengths", chosen_lengths, b, why)
        rejected = rejected / _check_lengths("rejected_lengths", rejected_lengths, b, why)
    if not spec.reference:  # SimPO: the rewards are the length-normalised policy log-probs
        chosen_rewards, rejected_rewards = beta * chosen.detach(), beta * rejected.detach()
        rejected = rejected + simpo_gamma / beta  # beta (c - r) - gamma == beta (c - (r + gamma / beta))

    losses = spec.fn(chosen, rejected, beta, label_smoothing)
    if rpo_alpha is not None:
        lengths = _check_lengths("chosen_lengths", chosen_lengths, b, "by rpo_alpha (per-token chosen NLL)")
        losses = losses + rpo_alpha * (-policy_chosen_logps.float() / lengths)
    return DPOOutput(losses, chosen_rewards, rejected_rewards)


def reward_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | float | None = None,
    center_rewards_coefficient: float | None = None,
) -> Tensor:
    """Per-pair Bradley-Terry loss of a scalar reward model, TRL ``RewardTrainer``'s loss before its mean.

    ``-log sigmoid(r_chosen - r_rejected - margin)`` (Bradley & Terry 1952; Ouyang et al. 2022, Eq. 1; the
    margin as in Llama 2, Touvron et al. 2023, Eq. 2) plus ``center_rewards_coefficient * (r_chosen +
    r_rejected)^2``, which pulls the rewards towards zero mean (Eisenstein et al. 2023, arXiv:2312.09244,
    Eq. 2). The ``.mean()`` of the result is TRL's loss.

    Args:
        chosen_rewards: ``[b]`` float, the reward model's score of each chosen answer (read at its last
            real token).
        rejected_rewards: ``[b]`` float, same for the rejected answers.
        margin: ``[b]`` or scalar: how much the chosen answer must beat the rejected one by (e.g. a rating
            gap). None: 0.
        center_rewards_coefficient: weight of the centering term (TRL recommends 0.01). None: no term.

    Returns:
        ``[b]`` float32 per-pair losses.

    Raises:
        ValueError: if the reward tensors are not both ``[b]``, or ``margin`` is neither scalar nor ``[b]``.
    """
    if chosen_rewards.dim() != 1 or chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            "chosen_rewards and rejected_rewards must both be [b], got "
            f"{list(chosen_rewards.shape)} and {list(rejected_rewards.shape)}"
        )
    chosen, rejected = chosen_rewards.float(), rejected_rewards.float()
    logits = chosen - rejected
    if margin is not None:
        margin = torch.as_tensor(margin, dtype=torch.float32, device=chosen.device)
        if margin.dim() > 0 and margin.shape != chosen.shape:
            raise ValueError(f"margin must be a scalar or {list(chosen.shape)}, got {list(margin.shape)}")
        logits = logits - margin
    losses = -F.logsigmoid(logits)
    if center_rewards_coefficient is not None:
        losses = losses + center_rewards_coefficient * (chosen + rejected) ** 2
    return losses
