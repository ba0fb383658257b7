"""Int8 weight quantisation (torchao) against float32 on CPU: size, tokens per second, held-out accuracy.

    uv run python benchmarks/int8.py exports/sft --questions 128 --repeats 3

The exported model (``mmfuse export``) answers the first ``--questions`` held-out questions of the
validation shards (every assistant turn of each conversation, :func:`answer_prompts`) greedily in
batches of ``--batch_size``, with the KV cache, up to ``--max_new_tokens`` tokens; the rows of the
table are float32, torchao int8 weight-only and torchao int8 dynamic (activations quantised too), see
:mod:`mmfuse.training.quantize`. Timing: each repeat runs every variant once, in an order rotated per
repeat (interleaved, so drift in the load of a shared machine hits all alike); tokens per second =
generated tokens (up to and incl. EOS) / wall time of the answering, median over repeats (min-max
given). Size: bytes of ``torch.save(state_dict)``. Accuracy: exact match of the stripped answer with
the reference (as ``GenerationEval``), and the share of answers identical to float32's.
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time

import torch
import webdataset as wds

from mmfuse.core.generation import left_pad
from mmfuse.core.model import MultimodalLM
from mmfuse.training.data.chat import AnswerPrompt, ChatDecoder, answer_prompts, collate_media
from mmfuse.training.export import load_transforms
from mmfuse.training.quantize import quantize_int8


def held_out_prompts(
    model: MultimodalLM, directory: str, shards: str, n: int, max_length: int
) -> list[AnswerPrompt]:
    """The first ``n`` answer prompts of the validation shards, decoded with the export's transforms."""
    decoder = ChatDecoder(model.tokenizer, load_transforms(directory), max_length)
    prompts: list[AnswerPrompt] = []
    for sample in wds.WebDataset(shards, shardshuffle=False):
        prompts += answer_prompts(decoder(sample, train=False)["chat"], model.tokenizer)
        if len(prompts) >= n:
            break
    return prompts[:n]


def answer(model: MultimodalLM, prompts: list[AnswerPrompt], batch_size: int, max_new_tokens: int):
    """Greedy answers and the number of generated tokens."""
    answers, tokens = [], 0
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        input_ids, attention_mask = left_pad([p.input_ids for p in batch], model.tokenizer.pad_token_id)
        out = model.generate(input_ids, attention_mask, collate_media([p.media for p in batch]) or None,
                             max_new_tokens=max_new_tokens)  # fmt: skip
        tokens += int(out.completion_mask.sum())
        answers += [
            a.strip() for a in model.tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
        ]
    return answers, tokens


def state_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="an export directory (mmfuse export)")
    parser.add_argument("--val_shards", default="data/instructions/val-{000000..000001}.tar.gz")
    parser.add_argument("--questions", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--max_length", type=int, default=128, help="tokens kept per conversation")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    fp32 = MultimodalLM.from_pretrained(args.directory)
    prompts = held_out_prompts(fp32, args.directory, args.val_shards, args.questions, args.max_length)
    variants = {"float32": fp32}
    for mode in ("weight_only", "dynamic"):
        variants[f"int8 {mode} (torchao)"] = quantize_int8(copy.deepcopy(fp32), mode)
    names = list(variants)
    rates: dict[str, list[float]] = {name: [] for name in names}
    answers: dict[str, list[str]] = {}
    with torch.inference_mode():
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                start = time.perf_counter()
                answers[name], tokens = answer(variants[name], prompts, args.batch_size, args.max_new_tokens)
                rates[name].append(tokens / (time.perf_counter() - start))

    print(f"{len(prompts)} held-out questions of {args.val_shards}, batch {args.batch_size}, "
          f"<= {args.max_new_tokens} new tokens, {args.repeats} interleaved repeats, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")  # fmt: skip
    print("| model | size (MB) | tokens/s, median (min-max) | exact match | same answer as float32 |")
    print("|---|---|---|---|---|")
    for name in names:
        correct = sum(a == p.reference for a, p in zip(answers[name], prompts, strict=True))
        same = sum(a == b for a, b in zip(answers[name], answers["float32"], strict=True))
        r = rates[name]
        print(f"| {name} | {state_bytes(variants[name]) / 1e6:.2f} | {statistics.median(r):.1f} "
              f"({min(r):.1f}-{max(r):.1f}) | {correct / len(prompts):.3f} ({correct}/{len(prompts)}) | "
              f"{same / len(prompts):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
