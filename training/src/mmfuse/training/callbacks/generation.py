"""Held-out evaluation of an instruction-tuned model: greedy exact match per question kind, perplexity.

For every assistant turn of every validation conversation, the conversation before it (with its
media) is the prompt; the model answers greedily with the KV cache, and the answer counts when it
equals the reference turn exactly (after stripping surrounding whitespace). Logged at the end of
each validation epoch:

* ``val/exact_match/<kind>`` (e.g. ``val/exact_match/image/digit``) and ``val/exact_match/<modality>``
  (every kind whose name starts with ``<modality>/``);
* ``val/majority/<kind>``: the share of the most common reference answer of that kind, the accuracy
  of the best constant answer on these very questions (an upper bound of the majority-answer
  baseline);
* ``val/perplexity``: ``exp(sum NLL / target tokens)`` over every validation target token.

Every answer is also written, one JSON object per line (``kind``, ``question``, ``reference``,
``answer``, ``correct``), to ``answers-epoch=<epoch>.jsonl`` in the trainer's log directory (as
lm-evaluation-harness's ``--log_samples``), so wrong answers can be read, not only counted.

With several ranks, each answers the questions of its own validation shard and the counts are
gathered (``torch.distributed.all_gather_object``) before the figures are computed, so every rank
logs the figures of the whole validation set.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mmfuse.core.generation import left_pad
from mmfuse.training.data.chat import answer_prompts, collate_media


class GenerationEval(Callback):
    """Exact match of greedy answers per question kind and perplexity on the validation set.

    Args:
        max_new_tokens: generation budget per answer.
        max_questions: answer at most this many questions per validation epoch and rank (the first);
            None for all. Perplexity always covers the whole set.
    """

    def __init__(self, max_new_tokens: int = 48, max_questions: int | None = None) -> None:
        self.max_new_tokens, self.max_questions = max_new_tokens, max_questions
        self._reset()

    def _reset(self) -> None:
        self.answers: list[dict[str, Any]] = []
        self.nll, self.tokens = 0.0, 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: Any,
        outputs: Any,
        batch: dict,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.nll += float(outputs["nll"])
        self.tokens += int(outputs["tokens"])
        budget = None if self.max_questions is None else self.max_questions - len(self.answers)
        prompts = [p for e in batch["examples"] for p in answer_prompts(e, pl_module.tokenizer)][:budget]
        if not prompts:
            return
        tokenizer, device = pl_module.tokenizer, pl_module.device
        input_ids, attention_mask = left_pad([p.input_ids for p in prompts], tokenizer.pad_token_id)
        media = {
            m: {k: v.to(device) for k, v in x.items()}
            for m, x in collate_media([p.media for p in prompts]).items()
        }
        out = pl_module.model.generate(
            input_ids.to(device), attention_mask.to(device), media, max_new_tokens=self.max_new_tokens
        )
        answers = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
        for prompt, answer in zip(prompts, answers, strict=True):
            self.record(prompt.kind, prompt.question, prompt.reference, answer, prompt.key)

    def record(self, kind: str, question: str, reference: str, answer: str, key: str = "") -> None:
        """Count one greedy ``answer`` (surrounding whitespace stripped) against its ``reference``.

        ``key`` names the item (sample key and turn) so that two runs' answers can be paired.
        """
        answer = answer.strip()
        self.answers.append({"key": key, "kind": kind, "question": question, "reference": reference,
                             "answer": answer, "correct": answer == reference})  # fmt: skip

    @property
    def references(self) -> dict[str, Counter[str]]:
        """Kind -> how often each reference answer was asked."""
        references: dict[str, Counter[str]] = defaultdict(Counter)
        for a in self.answers:
            references[a["kind"]][a["reference"]] += 1
        return references

    def state(self) -> dict[str, Any]:
        """This process's ``answers``, ``nll`` and ``tokens``."""
        return {"answers": self.answers, "nll": self.nll, "tokens": self.tokens}

    def merge(self, states: list[dict[str, Any]]) -> None:
        """Replace this process's answers and sums with those of ``states`` (one per rank), in order."""
        self._reset()
        for state in states:
            self.answers += state["answers"]
            self.nll += state["nll"]
            self.tokens += state["tokens"]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            states: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, self.state())
            self.merge(states)
        pl_module.log_dict(self.metrics())
        if trainer.is_global_zero and trainer.log_dir is not None and self.answers:
            self.write_answers(Path(trainer.log_dir) / f"answers-epoch={trainer.current_epoch}.jsonl")

    def write_answers(self, path: Path) -> None:
        """Every recorded answer as a JSON line (module docstring)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in self.answers))

    def item_outcomes(self) -> dict[str, dict[str, bool]]:
        """``val/exact_match/<kind or modality>`` -> item key -> correct (for ``mmfuse eval``)."""
        outcomes: dict[str, dict[str, bool]] = defaultdict(dict)
        for i, a in enumerate(self.answers):
            for name in {a["kind"], a["kind"].split("/")[0]}:  # "chat" has no modality prefix
                outcomes[f"val/exact_match/{name}"][a["key"] or str(i)] = a["correct"]
        return dict(outcomes)

    def metrics(self) -> dict[str, float]:
        """The figures of the module docstring from the current counts."""
        metrics = {"val/perplexity": torch.tensor(self.nll / max(self.tokens, 1)).exp().item()}
        for name, items in self.item_outcomes().items():
            metrics[name] = sum(items.values()) / len(items)
        for kind, references in self.references.items():
            metrics[f"val/majority/{kind}"] = references.most_common(1)[0][1] / references.total()
        return metrics
