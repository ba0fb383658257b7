"""Rollouts of the online RL stages (GRPO, RLOO, PPO): sampling, the experience tensors, micro-batches.

One rollout is ``g`` sampled completions of each of ``p`` prompts, drawn by
:meth:`~mmfuse.core.model.MultimodalLM.generate` in eval mode (no dropout): the towers encode each
prompt's media once and its ``g`` samples share that encoding; temperature, top-k / top-p and the
token budget apply, completions stop at EOS and the completion mask covers the tokens up to and
including the first EOS. ``generate`` returns each sampled token's log-probability under
``softmax(logits / temperature)``; those are the ``old_logps``, equal to an independent eval-mode
forward over prompt + completion to 1e-5 in fp32, so the first update's ratio is 1 (with dropout
disabled in the policy) and its KL to an unchanged reference is 0. ``num_iterations`` updates reuse
them.

Row ``g * i + j`` of every row tensor is sample ``j`` of prompt ``i``; a rollout is split into
micro-batches of whole prompts (:meth:`Rollout.micro_batches`), so a group is never split, its
media are encoded once per forward and expanded to its rows (:func:`completion_forward`).

Micro-batch keys: ``input_ids``, ``attention_mask``, ``position_ids`` ``[n, s + t]`` (the prompt
left-padded, then the completion right-padded to the longest in the micro-batch); ``media`` (the
prompts' items) and ``media_index`` (modality -> ``[items of the rows]`` int64, prompt item of each
row's item); and the row tensors trimmed to ``t``: ``completion_ids``, ``response_mask``,
``old_logps`` and whatever a stage added (``advantages``, ``ref_logps``, ``values``, ``returns``).

Shape letters: p prompts, g samples per prompt, n = p * g rows, s prompt tokens, t completion tokens,
v vocabulary, d hidden size.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmfuse.core.functional import IGNORE_INDEX, token_logps
from mmfuse.core.generation import left_pad
from mmfuse.core.model import MultimodalLM, expand_items
from mmfuse.core.packing import position_ids_from_attention_mask
from mmfuse.training.data.chat import AnswerPrompt, collate_media
from mmfuse.training.rewards import RewardInputs


@dataclass
class Rollout:
    """``g`` completions of each of ``p`` prompts and their per-row tensors.

    Attributes:
        prompts: the ``p`` prompts.
        group_size: ``g``.
        completions: the ``n`` decoded completions, special tokens dropped.
        rows: name -> ``[n, ...]`` tensor; at least ``completion_ids`` ``[n, t]`` int64,
            ``response_mask`` ``[n, t]`` bool and ``old_logps`` ``[n, t]`` float32 (0 off the mask).
    """

    prompts: list[AnswerPrompt]
    group_size: int
    completions: list[str]
    rows: dict[str, Tensor]

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    def select(self, prompt_indices: Sequence[int]) -> Rollout:
        """The rollout of the prompts ``prompt_indices`` (their whole groups), in that order."""
        g = self.group_size
        rows = [i * g + j for i in prompt_indices for j in range(g)]
        index = torch.tensor(rows, dtype=torch.int64, device=self.rows["response_mask"].device)
        return Rollout([self.prompts[i] for i in prompt_indices], g, [self.completions[r] for r in rows],
                       {k: v[index] for k, v in self.rows.items()})  # fmt: skip

    @staticmethod
    def cat(rollouts: Sequence[Rollout]) -> Rollout:
        """Concatenate rollouts of one group size, their completions right-padded to the widest.

        Raises:
            ValueError: no rollout, different group sizes or different row keys.
        """
        if (
            not rollouts
            or len({r.group_size for r in rollouts}) != 1
            or len({tuple(r.rows) for r in rollouts}) != 1
        ):
            raise ValueError("Rollout.cat needs at least one rollout, all of one group size and row keys")
        width = max(r.rows["response_mask"].shape[1] for r in rollouts)
        pad = lambda x: F.pad(x, (0, width - x.shape[1])) if x.dim() == 2 else x  # noqa: E731
        rows = {k: torch.cat([pad(r.rows[k]) for r in rollouts]) for k in rollouts[0].rows}
        return Rollout([p for r in rollouts for p in r.prompts], rollouts[0].group_size,
                       [c for r in rollouts for c in r.completions], rows)  # fmt: skip

    def micro_batch(self, pad_token_id: int) -> dict[str, Any]:
        """The whole rollout as one micro-batch (module docstring), completions trimmed to the longest."""
        g, device = self.group_size, self.rows["response_mask"].device
        prompt_ids, prompt_mask = left_pad([p.input_ids for p in self.prompts], pad_token_id)  # [p, s]
        width = max(int(self.rows["response_mask"].sum(-1).max()), 1)
        rows = {k: v[:, :width] if v.dim() == 2 else v for k, v in self.rows.items()}
        attention_mask = torch.cat(
            [prompt_mask.to(device).repeat_interleave(g, 0), rows["response_mask"].long()], dim=1
        )  # [n, s + t]
        return {
            "input_ids": torch.cat(
                [prompt_ids.to(device).repeat_interleave(g, 0), rows["completion_ids"]], 1
            ),
            "attention_mask": attention_mask,
            "position_ids": position_ids_from_attention_mask(attention_mask),
            "media": collate_media([p.media for p in self.prompts]),
            "media_index": group_media_index(self.prompts, g, device),
            **rows,
        }

    def micro_batches(self, prompts_per_micro_batch: int, pad_token_id: int) -> list[dict[str, Any]]:
        """Micro-batches of ``prompts_per_micro_batch`` whole prompts (the last may hold fewer)."""
        step = prompts_per_micro_batch
        return [self.select(range(i, min(i + step, self.num_prompts))).micro_batch(pad_token_id)
                for i in range(0, self.num_prompts, step)]  # fmt: skip

    def reward_inputs(self, pad_token_id: int) -> RewardInputs:
        """What the rewards read (:class:`~mmfuse.training.rewards.RewardInputs`)."""
        g = self.group_size
        micro_batch = self.micro_batch(pad_token_id)
        per_row = lambda values: [v for v in values for _ in range(g)]  # noqa: E731
        mask = self.rows["response_mask"]
        media = {
            m: {k: v[micro_batch["media_index"][m]] for k, v in tensors.items()}
            for m, tensors in micro_batch["media"].items()
        }
        return RewardInputs(
            prompts=per_row(p.question for p in self.prompts),
            completions=list(self.completions),
            columns={
                "reference": per_row(p.reference for p in self.prompts),
                "kind": per_row(p.kind for p in self.prompts),
                "question": per_row(p.question for p in self.prompts),
                "completion_ids": [
                    ids[m].tolist() for ids, m in zip(self.rows["completion_ids"], mask, strict=True)
                ],
            },
            input_ids=micro_batch["input_ids"],
            attention_mask=micro_batch["attention_mask"],
            media=media,
        )


def group_media_index(
    prompts: Sequence[AnswerPrompt], group_size: int, device: Any = None
) -> dict[str, Tensor]:
    """Modality -> ``[items of the n rows]`` int64: which prompt item each row's item is.

    The prompts' items are stacked prompt after prompt (:func:`~mmfuse.training.data.chat.collate_media`);
    row ``g * i + j`` reads prompt ``i``'s items, so the index repeats each prompt's item range ``g`` times.
    """
    index: dict[str, list[int]] = defaultdict(list)
    offsets: Counter[str] = Counter()
    for prompt in prompts:
        for modality, count in Counter(m for m, _ in prompt.media).items():
            index[modality] += list(range(offsets[modality], offsets[modality] + count)) * group_size
            offsets[modality] += count
    return {m: torch.tensor(ids, dtype=torch.int64, device=device) for m, ids in index.items()}


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module.eval()`` inside, its previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@torch.no_grad()
def sample(
    model: MultimodalLM,
    prompts: Sequence[AnswerPrompt],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Rollout:
    """``group_size`` sampled completions of each prompt, in eval mode (module docstring).

    Args:
        model: the policy.
        prompts: prompts with their media on the model's device.
        group_size: samples per prompt ``g``.
        max_new_tokens: token budget per completion.
        temperature, top_p, top_k, generator: see :func:`mmfuse.core.generation.decode`.

    Returns:
        A :class:`Rollout` with ``completion_ids``, ``response_mask`` and ``old_logps``.

    Raises:
        ValueError: no prompt.
    """
    if not prompts:
        raise ValueError("sample needs at least one prompt")
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad([p.input_ids for p in prompts], model.tokenizer.pad_token_id)
    with eval_mode(model):
        out = model.generate(
            input_ids.to(device), attention_mask.to(device), collate_media([p.media for p in prompts]),
            max_new_tokens=max_new_tokens, num_return_sequences=group_size, do_sample=True,
            temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
        )  # fmt: skip
    completions = model.tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    rows = {
        "completion_ids": out.completion_ids,
        "response_mask": out.completion_mask,
        "old_logps": out.logps,
    }
    return Rollout(list(prompts), group_size, completions, rows)


def completion_forward(
    model: MultimodalLM, micro_batch: dict[str, Any], *, temperature: float = 1.0, hidden_states: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Logits (and last hidden states) at the completion positions of a micro-batch.

    The towers run once over the prompts' items; :func:`~mmfuse.core.model.expand_items` repeats each
    encoding for the prompt's ``g`` rows. Only the last ``t + 1`` positions reach the LM head
    (transformers' ``logits_to_keep``).

    Returns:
        ``logits`` ``[n, t, v]`` float32 divided by ``temperature``, where position ``i`` scores
        completion token ``i``; and, with ``hidden_states``, the final hidden states ``[n, t, d]`` of
        the same positions (a value head's input), else None.
    """
    encoded = model.encode_media(micro_batch["media"])
    encoded = {m: expand_items(out, micro_batch["media_index"][m]) for m, out in encoded.items()}
    t = micro_batch["response_mask"].shape[1]
    out = model.fused(
        input_ids=micro_batch["input_ids"], media=encoded, attention_mask=micro_batch["attention_mask"],
        position_ids=micro_batch["position_ids"], use_cache=False, logits_to_keep=t + 1,
        output_hidden_states=hidden_states,
    )  # fmt: skip
    logits = out.logits[:, :-1].float() / temperature  # [n, t + 1, v] -> [n, t, v]: i scores token i
    hidden = out.hidden_states[-1][:, -(t + 1) : -1] if hidden_states else None  # [n, s + t, d] -> [n, t, d]
    return logits, hidden


def completion_logps(logits: Tensor, micro_batch: dict[str, Any]) -> Tensor:
    """``[n, t]`` float32 log-probabilities of the completion tokens, 0 off ``response_mask``."""
    labels = micro_batch["completion_ids"].masked_fill(~micro_batch["response_mask"], IGNORE_INDEX)
    return token_logps(logits, labels)


@torch.no_grad()
def map_micro_batches(
    rollout: Rollout,
    fn: Callable[[dict[str, Any]], Tensor],
    prompts_per_micro_batch: int,
    pad_token_id: int,
) -> Tensor:
    """``fn`` (micro-batch -> ``[rows, t_micro]``) over the rollout, right-padded with 0 to ``[n, t]``."""
    width = rollout.rows["response_mask"].shape[1]
    parts = [fn(mb) for mb in rollout.micro_batches(prompts_per_micro_batch, pad_token_id)]
    return torch.cat([F.pad(x, (0, width - x.shape[1])) for x in parts])


def world_size() -> int:
    """Ranks of the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(x: Tensor) -> Tensor:
    """``[r, ...]`` of every rank, concatenated in rank order (each rank holds ``r`` rows)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def local_rows(x: Tensor, rank_rows: int) -> Tensor:
    """This rank's slice of a :func:`gather_rows` result."""
    rank = dist.get_rank() if world_size() > 1 else 0
    return x[rank * rank_rows : (rank + 1) * rank_rows]


def world_min(value: int, device: Any = None) -> int:
    """The smallest ``value`` over the ranks."""
    if world_size() == 1:
        return value
    x = torch.tensor(value, device=device)
    dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return int(x)


__all__ = [
    "Rollout",
    "completion_forward",
    "completion_logps",
    "eval_mode",
    "gather_rows",
    "group_media_index",
    "local_rows",
    "map_micro_batches",
    "sample",
    "world_min",
    "world_size",
]
