"""Prompts with reference answers and media for the online RL stages (GRPO, RLOO, PPO).

The shards are chat shards (:mod:`mmfuse.training.data.chat`: webdataset tars or JSONL, TRL
messages with media parts), e.g. the embedded instruction set. Each conversation gives one prompt:
its last assistant turn, asked with everything before it (media included) and scored against that
turn's text (:func:`~mmfuse.training.data.chat.answer_prompts`, the prompts held-out evaluation asks).
A training batch is one rollout buffer, ``{"prompts": [AnswerPrompt, ...], "num_skipped": int}`` of
``batch_size`` prompts per rank; ``kinds`` restricts training to some question kinds (e.g. the
modalities where the SFT model is weakest; other conversations are filtered, not counted as skipped).
Validation batches are the chat module's (micro-batches with targets and the examples), so
:class:`~mmfuse.training.callbacks.generation.GenerationEval` and the held-out NLL work unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mmfuse.core.data import MediaTransform
from mmfuse.training.data.chat import AnswerPrompt, ChatDataModule, ChatDecoder, ChatExample, answer_prompts


def prompt_count(batch: dict[str, Any]) -> int:
    """Prompts of a training batch, conversations of a validation batch (``throughput.batch_size_fn``)."""
    return len(batch["prompts"] if "prompts" in batch else batch["examples"])


class PromptDecoder(ChatDecoder):
    """:class:`~mmfuse.training.data.chat.ChatDecoder` that, in training, keeps only some question kinds.

    A conversation is kept when the kind of its last assistant turn (``kinds`` of the record, ``"chat"``
    without) equals one of ``kinds`` or starts with ``<kind>/`` (so ``"audio"`` keeps every audio kind);
    others decode to None, which the stream leaves out. Validation keeps every conversation.
    """

    def __init__(self, tokenizer: Any, transforms: dict[str, MediaTransform], max_length: int,
                 kinds: Sequence[str]) -> None:  # fmt: skip
        super().__init__(tokenizer, transforms, max_length)
        self.kinds = tuple(kinds)

    def __call__(self, sample: dict[str, Any], *, train: bool) -> dict[str, ChatExample] | None:
        if train and self.kinds:
            kind = (json.loads(sample["json"]).get("kinds") or ["chat"])[-1]
            if not any(kind == k or kind.startswith(f"{k}/") for k in self.kinds):
                return None
        return super().__call__(sample, train=train)


class PromptDataModule(ChatDataModule):
    """Chat shards -> rollout buffers of prompts (training) and chat batches (validation).

    Args:
        train_shards: brace-notation chat shard URLs, ``::``-joined: webdataset tars or JSONL files.
        val_shards: the same for validation; None disables validation.
        transforms: modality -> media transform, one per modality of the data.
        max_length: tokens per conversation (longer ones are skipped and counted).
        batch_size: prompts per rollout buffer on each rank.
        val_batch_size: conversations per validation batch.
        kinds: train only on these question kinds or kind prefixes (:class:`PromptDecoder`); None: all.
            An epoch still counts every sample of the shards (set ``num_samples`` to shorten it).
        tokenizer, num_workers, shuffle_buffer, num_samples, resampled, seed: see
            :class:`~mmfuse.training.data.chat.ChatDataModule`.
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        transforms: dict[str, MediaTransform] | None = None,
        max_length: int = 256,
        batch_size: int = 16,
        val_batch_size: int = 64,
        kinds: list[str] | None = None,
        tokenizer: Any = None,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        num_samples: int | None = None,
        resampled: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            train_shards, val_shards, transforms=transforms, max_length=max_length, batch_size=batch_size,
            accumulate=1, packing=False, val_batch_size=val_batch_size, tokenizer=tokenizer,
            num_workers=num_workers, shuffle_buffer=shuffle_buffer, num_samples=num_samples,
            resampled=resampled, seed=seed,
        )  # fmt: skip
        self.kinds = list(kinds or [])

    def decoder(self) -> PromptDecoder:
        return PromptDecoder(self.tokenizer, self.transforms, self.max_length, self.kinds)

    def prompt(self, example: ChatExample) -> AnswerPrompt:
        """The prompt of a conversation: its last assistant turn (module docstring)."""
        return answer_prompts(example, self.tokenizer)[-1]

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if self.trainer is not None and not self.trainer.training:
            return super().on_before_batch_transfer(batch, dataloader_idx)
        return {"prompts": [self.prompt(e) for e in batch["chat"]], "num_skipped": batch["num_skipped"]}


__all__ = ["PromptDataModule", "PromptDecoder", "prompt_count"]
