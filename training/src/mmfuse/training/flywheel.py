"""``mmfuse flywheel``: preference pairs from a checkpoint's own samples, judged (the RLAIF data flywheel).

For every assistant turn of the prompt shards (chat shards, as SFT reads them: webdataset tars or
JSONL), the model samples ``k`` answers (:meth:`~mmfuse.core.model.MultimodalLM.generate` with
``num_return_sequences=k, do_sample=True``: the prompt's media encoded once for its k samples), a
judge scores them, and the best and the worst answer become a pair of a new preference shard (the
format of :mod:`mmfuse.training.data.preference`, the prompt's media copied in), with the judge's
scores in the record (``"scores": {"judge", "chosen", "rejected", "samples"}``). A prompt whose
best and worst answers score the same gives no pair. Judges:

* ``exact``: 1 when the answer equals the reference turn (surrounding whitespace stripped), else 0
  (:class:`~mmfuse.training.callbacks.generation.GenerationEval`'s rule);
* ``reward``: the scalar of a :class:`~mmfuse.training.stages.reward.RewardModeling` checkpoint
  (``--reward-ckpt``; its model has the ``--config``'s architecture);
* ``module:function``: any callable with TRL's reward-function signature, ``function(prompts,
  completions, **kwargs) -> list[float]`` on conversational ``prompts`` (message lists) and
  ``completions`` (``[{"role": "assistant", "content": text}]``), with the columns ``reference`` and
  ``kind`` as keyword lists.

The model is the LM stage of ``--config`` (the SFT configs) with ``init_from=--ckpt``. SFT, then
the flywheel, then DPO on the embedded data::

    SFT="--config training/configs/sft/embedded.yaml --config training/configs/sft/from_align.yaml"
    uv run mmfuse fit $SFT
    uv run mmfuse flywheel $SFT --ckpt runs/sft/from_align/checkpoints/last.ckpt \\
        --prompts 'data/instructions/train-{000000..000003}.tar.gz' --num-samples 4 --judge exact \\
        --out runs/flywheel/train-000000.tar.gz
    uv run mmfuse fit --config training/configs/dpo/embedded.yaml \\
        --data.init_args.train_shards runs/flywheel/train-000000.tar.gz --model.init_args.ref_logps_cache null
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import track

from mmfuse.core.data import SkipCounter, expand_urls, shards_to_samples
from mmfuse.core.generation import left_pad
from mmfuse.core.text import media_parts
from mmfuse.training.data.chat import ChatDecoder, answer_prompts, collate_media, media_bytes
from mmfuse.training.data.preference import collate_completions, tokenize_completion, write_preference_shard

#: ``judge(prompts, answers) -> scores``: ``len(prompts)`` lists of k answers in, k scores each out.
Judge = Callable[[Sequence["Prompt"], Sequence[Sequence[str]]], list[list[float]]]


@dataclass
class Prompt:
    """One assistant turn to answer: its conversation so far, what the model reads, what the shard keeps."""

    key: str
    messages: list[dict[str, Any]]
    kind: str
    reference: str
    input_ids: torch.Tensor
    media: list[tuple[str, dict[str, torch.Tensor]]]
    members: dict[str, bytes]


def _member(
    sample: dict[str, Any], part: dict[str, Any], index: int, record: dict[str, Any]
) -> tuple[str, bytes]:
    """``({modality}_{index}.{ext}, bytes)`` of a prompt's media part, wherever the shard keeps it."""
    modality = part["type"]
    data = media_bytes(sample, part, index, record)  # raises when the part has no bytes anywhere
    member = next((k for k in sample if k.startswith(f"{modality}_{index}.")), None)
    if member is not None:
        ext = member.partition(".")[2]
    else:
        ext = Path(part.get("path", part.get(modality)) or record[f"{modality}s"][index]).suffix.lstrip(".")
    return f"{modality}_{index}.{ext}", data


def read_prompts(
    shards: str, decoder: ChatDecoder, kinds: set[str] | None, skips: SkipCounter
) -> Iterator[Prompt]:
    """Every assistant turn (of ``kinds``, or all) of the chat shards as a :class:`Prompt`; a sample that
    does not decode is skipped and counted by ``skips``."""
    for sample in shards_to_samples(({"url": u} for u in expand_urls(shards)), skips):
        try:
            record, example = json.loads(sample["json"]), decoder(sample, train=False)["chat"]
            turns = [i for i, m in enumerate(example.messages) if m["role"] == "assistant"]
            for turn, answer in zip(turns, answer_prompts(example, decoder.tokenizer), strict=True):
                if kinds is not None and answer.kind not in kinds:
                    continue
                messages = [_media_as_members(m) for m in example.messages[:turn]]
                seen: Counter[str] = Counter()
                members = {}
                for part in media_parts(example.messages[:turn]):
                    name, data = _member(sample, part, seen[part["type"]], record)
                    members[name] = data
                    seen[part["type"]] += 1
                key = re.sub(r"[^a-z0-9_-]+", "-", f"{example.key}-{turn}".lower())
                yield Prompt(
                    key, messages, answer.kind, answer.reference, answer.input_ids, answer.media, members
                )
        except Exception as exn:  # noqa: BLE001 - any decoding failure is a bad sample
            skips(exn, sample.get("__key__", "?"))


def _media_as_members(message: dict[str, Any]) -> dict[str, Any]:
    """The message with media parts reduced to ``{"type": modality}`` (their bytes become members)."""
    if isinstance(message["content"], str):
        return dict(message)
    content = [p if p["type"] == "text" else {"type": p["type"]} for p in message["content"]]
    return {**message, "content": content}


def exact_judge(prompts: Sequence[Prompt], answers: Sequence[Sequence[str]]) -> list[list[float]]:
    """1.0 where an answer equals its prompt's reference (stripped), else 0.0."""
    return [
        [float(a.strip() == p.reference) for a in group] for p, group in zip(prompts, answers, strict=True)
    ]


def reward_judge(stage: Any, max_length: int) -> Judge:
    """A judge scoring each answer with a :class:`~mmfuse.training.stages.reward.RewardModeling` stage."""

    @torch.no_grad()
    def judge(prompts: Sequence[Prompt], answers: Sequence[Sequence[str]]) -> list[list[float]]:
        k = len(answers[0])
        rows = [
            tokenize_completion(
                stage.tokenizer, p.messages, [{"role": "assistant", "content": group[j]}], max_length
            )
            for j in range(k)
            for p, group in zip(prompts, answers, strict=True)
        ]  # completion-major: row j * b + i
        micro_batch = collate_completions(rows, [p.media for p in prompts], stage.tokenizer.pad_token_id)
        rewards = (
            stage.rewards(_to(micro_batch, stage.device), group_size=k).view(k, -1).T
        )  # [k * b] -> [b, k]
        return rewards.tolist()

    return judge


def callable_judge(name: str) -> Judge:
    """A judge calling ``module:function`` with TRL's reward-function signature (module docstring).

    Raises:
        ValueError: ``name`` is not ``module:function``.
    """
    module, sep, function = name.partition(":")
    if not sep:
        raise ValueError(f"--judge {name!r}: use exact, reward or module:function")
    fn = getattr(importlib.import_module(module), function)

    def judge(prompts: Sequence[Prompt], answers: Sequence[Sequence[str]]) -> list[list[float]]:
        flat = [(p, a) for p, group in zip(prompts, answers, strict=True) for a in group]
        scores = fn(
            prompts=[p.messages for p, _ in flat],
            completions=[[{"role": "assistant", "content": a}] for _, a in flat],
            reference=[p.reference for p, _ in flat],
            kind=[p.kind for p, _ in flat],
        )
        k = len(answers[0])
        return [list(map(float, scores[i : i + k])) for i in range(0, len(flat), k)]

    return judge


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    media = {m: {k: v.to(device) for k, v in ts.items()} for m, ts in batch["media"].items()}
    return {**{k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}, "media": media}


def pair_sample(prompt: Prompt, answers: Sequence[str], scores: Sequence[float], judge: str) -> dict | None:
    """The best vs the worst answer as a preference sample (None when they score the same)."""
    best, worst = (
        max(range(len(scores)), key=scores.__getitem__),
        min(range(len(scores)), key=scores.__getitem__),
    )
    if scores[best] == scores[worst]:
        return None
    record = {
        "prompt": prompt.messages,
        "chosen": [{"role": "assistant", "content": answers[best].strip()}],
        "rejected": [{"role": "assistant", "content": answers[worst].strip()}],
        "kind": prompt.kind, "source": "flywheel", "reference": prompt.reference,
    }  # fmt: skip
    record["scores"] = {
        "judge": judge,
        "chosen": scores[best],
        "rejected": scores[worst],
        "samples": list(scores),
    }
    return {"__key__": prompt.key, "json": record, **prompt.members}


def run(args: argparse.Namespace) -> Counter[str]:
    """Sample, judge and write the pairs; returns counts and mean scores."""
    from mmfuse.training.cli import cli_main
    from mmfuse.training.stages.reward import RewardModeling

    configs = [a for c in args.config for a in ("--config", c)]
    cli = cli_main([*configs, f"--model.init_args.init_from={args.ckpt}"], run=False)
    device = torch.device(args.device)
    stage, data = cli.model.eval().to(device), cli.datamodule
    model, tokenizer = stage.model, stage.tokenizer
    if args.judge == "exact":
        judge = exact_judge
    elif args.judge == "reward":
        reward = RewardModeling(copy.deepcopy(model))
        reward.load_state_dict(
            torch.load(args.reward_ckpt, map_location="cpu", weights_only=True)["state_dict"]
        )
        judge = reward_judge(reward.eval().to(device), data.max_length)
    else:
        judge = callable_judge(args.judge)
    decoder = ChatDecoder(tokenizer, data.transforms, data.max_length)
    skips, generator = SkipCounter(), torch.Generator(device).manual_seed(args.seed)
    prompts = read_prompts(args.prompts, decoder, set(args.kinds) if args.kinds else None, skips)
    samples, stats = [], Counter()
    batches = _batches(prompts, args.batch_size, args.max_prompts)
    for batch in track(batches, description="sampling and judging", total=_num_batches(args)):
        input_ids, attention_mask = left_pad([p.input_ids for p in batch], tokenizer.pad_token_id)
        inputs = _to({"input_ids": input_ids, "attention_mask": attention_mask,
                      "media": collate_media([p.media for p in batch])}, device)  # fmt: skip
        out = model.generate(
            inputs["input_ids"], inputs["attention_mask"], inputs["media"], do_sample=True,
            generator=generator, max_new_tokens=args.max_new_tokens, num_return_sequences=args.num_samples,
            temperature=args.temperature, top_p=args.top_p,
        )  # fmt: skip
        texts = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
        answers = [texts[i * args.num_samples : (i + 1) * args.num_samples] for i in range(len(batch))]
        for prompt, group, scores in zip(batch, answers, judge(batch, answers), strict=True):
            sample = pair_sample(prompt, group, scores, args.judge)
            stats["prompts"] += 1
            stats["pairs" if sample else "ties"] += 1
            if sample:
                samples.append(sample)
                stats[f"pairs {prompt.kind}"] += 1
                stats["sum chosen"] += sample["json"]["scores"]["chosen"]
                stats["sum rejected"] += sample["json"]["scores"]["rejected"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_preference_shard(args.out, samples)
    stats["skipped"] = skips.take()
    return stats


def _batches(prompts: Iterator[Prompt], size: int, limit: int | None) -> Iterator[list[Prompt]]:
    batch: list[Prompt] = []
    for i, prompt in enumerate(prompts):
        if limit is not None and i >= limit:
            break
        batch.append(prompt)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _num_batches(args: argparse.Namespace) -> int | None:
    return None if args.max_prompts is None else -(-args.max_prompts // args.batch_size)


def main(argv: Sequence[str] | None = None) -> None:
    """``mmfuse flywheel --config CFG --ckpt CKPT --prompts SHARDS --out OUT.tar.gz [...]``."""
    parser = argparse.ArgumentParser(prog="mmfuse flywheel", description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, help="an LM stage config (repeatable)")
    parser.add_argument("--ckpt", required=True, help="the checkpoint to sample from (an LM stage's)")
    parser.add_argument("--prompts", required=True, help="chat shards (brace notation, ::-joined)")
    parser.add_argument("--out", required=True, help="the preference shard to write (.tar.gz)")
    parser.add_argument("--judge", default="exact", help="exact | reward | module:function")
    parser.add_argument("--reward-ckpt", help="the RewardModeling checkpoint of --judge reward")
    parser.add_argument("--num-samples", type=int, default=4, help="answers sampled per prompt (k)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--max-prompts", type=int, default=None, help="stop after this many prompts")
    parser.add_argument("--kinds", nargs="*", help="only turns of these question kinds")
    parser.add_argument("--seed", type=int, default=0, help="the sampling RNG's seed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.num_samples < 2:
        parser.error("--num-samples must be >= 2 (a pair needs two answers)")
    if args.judge == "reward" and not args.reward_ckpt:
        parser.error("--judge reward needs --reward-ckpt")
    stats = run(args)
    pairs = max(stats["pairs"], 1)
    print(f"{stats['prompts']} prompts -> {stats['pairs']} pairs in {args.out} ({stats['ties']} ties dropped,"
          f" {stats['skipped']} samples skipped); mean score chosen {stats['sum chosen'] / pairs:.3f},"
          f" rejected {stats['sum rejected'] / pairs:.3f}")  # fmt: skip
    for name in sorted(k for k in stats if k.startswith("pairs ")):
        print(f"  {name.removeprefix('pairs ')}: {stats[name]}")


__all__ = [
    "Prompt",
    "callable_judge",
    "exact_judge",
    "main",
    "pair_sample",
    "read_prompts",
    "reward_judge",
    "run",
]
