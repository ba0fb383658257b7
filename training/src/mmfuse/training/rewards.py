"""Rewards of the online RL stages, chosen in the config and combined with weights.

A reward scores ``b`` completions (a prompt's ``g`` samples consecutive) and gives one float per
completion, or NaN (``None`` from a function) where it does not apply. :func:`combine` weighs them as
TRL's ``GRPOTrainer`` does: ``reward = nansum_k(weight_k * reward_k)``, so a reward that does not
apply to a completion leaves the others to score it.

* :class:`ExactMatch`: 1 when the stripped completion equals the stripped reference answer (the
  criterion of :class:`~mmfuse.training.callbacks.generation.GenerationEval`), else 0: verifiable.
* :class:`FormatReward`: 1 when the stripped completion matches a regular expression (``re.fullmatch``).
* :class:`FunctionReward`: any ``module:function`` with **TRL's reward-function signature**
  ``fn(prompts, completions, **columns) -> list[float | None]``, so a TRL user's reward functions run
  unchanged. ``prompts`` are the question texts, ``completions`` the decoded completions (strings:
  TRL's standard, non-conversational format), and ``columns`` hold, one entry per completion,
  ``reference`` (the reference answer), ``kind`` (the question kind), ``question`` and
  ``completion_ids`` (``list[int]``, TRL's name); a function takes those it needs and ``**kwargs``.
* :class:`ModelReward`: a trained reward model behind the small :class:`SequenceScorer` interface
  (scores ``(prompt, completion)`` token sequences with their media at the last attended token, TRL's
  reward-model convention); :class:`RewardModelScorer` is the reward-modelling stage's model read from
  its checkpoint.

The first three are themselves callables with TRL's signature (``ExactMatch()(prompts, completions,
reference=...)``), so they also run inside TRL.

Shape letters: b completions, s tokens (prompt + completion).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mmfuse.core.model import MultimodalLM
from mmfuse.training.stages.reward import RewardModeling

Media = Mapping[str, Mapping[str, Tensor]]
TRLRewardFunction = Callable[..., Sequence[float | None]]


@dataclass
class RewardInputs:
    """What the rewards see for ``b`` completions.

    Attributes:
        prompts: the question text of each completion's prompt (``b`` strings).
        completions: the decoded completions, special tokens dropped (``b`` strings).
        columns: name -> one value per completion: ``reference``, ``kind``, ``question``,
            ``completion_ids`` (TRL passes its dataset columns the same way).
        input_ids: ``[b, s]`` int64, the prompt (left-padded) followed by the completion.
        attention_mask: ``[b, s]`` int64, 1 on the prompt's and the completion's real tokens (the
            completion up to and including its first EOS).
        media: modality -> the transform tensors of each completion's prompt media, in the row-major
            placeholder order of ``input_ids`` (one copy per completion).
    """

    prompts: list[str]
    completions: list[str]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    input_ids: Tensor | None = None
    attention_mask: Tensor | None = None
    media: Media | None = None


class SequenceScorer:
    """A trained reward model: ``(input_ids [b, s], attention_mask [b, s], media) -> scores [b]`` float32.

    Each score is read at the sequence's last attended token (TRL's ``get_reward`` convention: the
    last non-pad token). ``media`` as :attr:`RewardInputs.media`. Gradient-free (called in eval mode).
    A subclass is named in configs (``class_path``); in Python any callable with this signature does.
    """

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, media: Media | None) -> Tensor:
        raise NotImplementedError


class Reward:
    """Base of the rewards: a name, a weight, and :meth:`score`.

    Args:
        weight: factor of this reward in the sum (:func:`combine`).
        name: the name its metrics are logged under (``rollout/rewards/<name>/mean``); a default per kind.
    """

    default_name = "reward"

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        self.weight, self.name = float(weight), name or self.default_name

    def score(self, inputs: RewardInputs) -> Tensor:
        """``[b]`` float32 rewards, NaN where this reward does not apply."""
        raise NotImplementedError


class TextReward(Reward):
    """A reward on decoded text, callable with TRL's reward-function signature."""

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        raise NotImplementedError

    def score(self, inputs: RewardInputs) -> Tensor:
        return as_rewards(self(inputs.prompts, inputs.completions, **inputs.columns), len(inputs.completions),
                          self.name)  # fmt: skip


class ExactMatch(TextReward):
    """1.0 when ``completion.strip() == reference.strip()``, else 0.0 (the ``reference`` column)."""

    default_name = "exact_match"

    def __call__(
        self, prompts: list[str], completions: list[str], reference: list[str] | None = None, **columns: Any
    ) -> list[float | None]:
        if reference is None:
            raise KeyError(f"reward {self.name!r} needs a 'reference' column; columns are {sorted(columns)}")
        return [float(c.strip() == r.strip()) for c, r in zip(completions, reference, strict=True)]


class FormatReward(TextReward):
    """1.0 when the stripped completion matches ``pattern`` in full (``re.fullmatch``), else 0.0.

    Args:
        pattern: a Python regular expression, e.g. ``"[a-z ,'-]+"`` (one line of words), or
            ``"<think>.*?</think><answer>.*?</answer>"`` with ``flags`` ``re.DOTALL``.
        flags: ``re`` flags as an int (``re.DOTALL`` is 16).
        weight, name: see :class:`Reward`.

    Raises:
        re.error: an invalid ``pattern``.
    """

    default_name = "format"

    def __init__(self, pattern: str, flags: int = 0, weight: float = 1.0, name: str | None = None) -> None:
        super().__init__(weight, name)
        self.pattern = re.compile(pattern, flags)

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        return [float(self.pattern.fullmatch(c.strip()) is not None) for c in completions]


def load_function(spec: str) -> TRLRewardFunction:
    """The callable named ``"package.module:function"`` (``:`` then attribute path, e.g. ``"m:Cls.fn"``).

    Raises:
        ValueError: ``spec`` without a single ``:``, or naming something not callable.
        ModuleNotFoundError: the module cannot be imported.
        AttributeError: the module has no such attribute.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute or ":" in attribute:
        raise ValueError(f"reward function must be 'module:function', got {spec!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AttributeError(f"reward function {spec!r}: {target!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"reward function {spec!r} is a {type(target).__name__}, not a callable")
    return target


class FunctionReward(TextReward):
    """Any callable with TRL's reward-function signature, named ``module:function`` in the config.

    Args:
        function: ``"module:function"`` (:func:`load_function`) or the callable itself.
        weight: see :class:`Reward`.
        name: default: the function's ``__name__`` (TRL's default too).

    Raises:
        see :func:`load_function`.
    """

    def __init__(
        self, function: str | TRLRewardFunction, weight: float = 1.0, name: str | None = None
    ) -> None:
        self.function = load_function(function) if isinstance(function, str) else function
        super().__init__(weight, name or getattr(self.function, "__name__", type(self.function).__name__))

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        return list(self.function(prompts=prompts, completions=completions, **columns))


class ModelReward(Reward):
    """A trained reward model's score of each completion (thin adapter over a :class:`SequenceScorer`).

    Args:
        scorer: the reward model, e.g. the reward-modelling stage's model loaded from its checkpoint.
        weight: see :class:`Reward`.
        name: default ``"reward_model"``.

    Raises:
        TypeError: ``scorer`` is not callable.
    """

    default_name = "reward_model"

    def __init__(self, scorer: SequenceScorer, weight: float = 1.0, name: str | None = None) -> None:
        if not callable(scorer):
            raise TypeError(
                f"ModelReward.scorer must be callable (SequenceScorer), got {type(scorer).__name__}"
            )
        super().__init__(weight, name)
        self.scorer = scorer

    @torch.no_grad()
    def score(self, inputs: RewardInputs) -> Tensor:
        if inputs.input_ids is None or inputs.attention_mask is None:
            raise ValueError(f"reward {self.name!r} reads token sequences: RewardInputs.input_ids is None")
        scores = self.scorer(inputs.input_ids, inputs.attention_mask, inputs.media)
        return as_rewards(scores.float().cpu().tolist(), len(inputs.completions), self.name)


class RewardModelScorer(SequenceScorer):
    """A :class:`SequenceScorer` from the reward-modelling stage's checkpoint (its model and score head).

    :meth:`~mmfuse.training.stages.reward.RewardModeling.rewards` of each sequence (its own media, one
    row each) in eval mode, without gradient; the model moves to the device of the inputs.

    Args:
        model: the reward model's architecture (the reward config's ``model``, e.g.
            ``training/configs/models/embedded.yaml``).
        checkpoint: the reward-modelling run's checkpoint (every ``model.*`` and ``score.*`` weight, read
            with ``weights_only=True``).

    Raises:
        KeyError: the checkpoint has no ``state_dict``.
        RuntimeError: its weights do not fit ``model`` and the score head.
    """

    def __init__(self, model: MultimodalLM, checkpoint: str) -> None:
        self.stage = RewardModeling(model)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if "state_dict" not in state:
            raise KeyError(f"reward model checkpoint {checkpoint} has no 'state_dict' (keys {sorted(state)})")
        self.stage.load_state_dict(state["state_dict"])
        self.stage.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, input_ids: Tensor, attention_mask: Tensor, media: Media | None) -> Tensor:
        self.stage.to(input_ids.device)
        micro_batch = {"input_ids": input_ids, "attention_mask": attention_mask, "media": media or {}}
        return self.stage.rewards(micro_batch, group_size=1)


def as_rewards(values: Sequence[float | None], expected: int, name: str) -> Tensor:
    """``[b]`` float32 from a reward's list, ``None`` -> NaN.

    Raises:
        ValueError: not ``expected`` values.
    """
    values = list(values)
    if len(values) != expected:
        raise ValueError(f"reward {name!r} returned {len(values)} values for {expected} completions")
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)


def combine(rewards: Sequence[Reward], inputs: RewardInputs) -> tuple[Tensor, Tensor]:
    """Every reward of ``inputs`` and their weighted sum (TRL's ``nansum`` over reward functions).

    Returns:
        ``(total [b], per_reward [b, k])`` float32 on the CPU; ``per_reward`` keeps NaN where a reward
        does not apply; ``total`` is 0 for a completion no reward applies to.

    Raises:
        ValueError: no reward, or a reward's output of the wrong length.
    """
    if not rewards:
        raise ValueError(
            "rewards is empty: give at least one reward (e.g. mmfuse.training.rewards.ExactMatch)"
        )
    table = torch.stack([r.score(inputs) for r in rewards], dim=1)  # [b, k]
    weights = torch.tensor([r.weight for r in rewards], dtype=torch.float32)
    return (table * weights).nansum(dim=1), table


__all__ = [
    "ExactMatch",
    "FormatReward",
    "FunctionReward",
    "ModelReward",
    "Reward",
    "RewardInputs",
    "RewardModelScorer",
    "SequenceScorer",
    "TextReward",
    "as_rewards",
    "combine",
    "load_function",
]
