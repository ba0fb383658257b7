"""Padding waste of packed vs padded SFT batches, and our SFT step vs TRL's ``SFTTrainer`` (tokens/s).

Run: ``uv run --group bench python benchmarks/sft_packing.py [--steps 10] [--batch-size 32]``.

1. Waste on the embedded instruction set (``data/instructions`` train shards, tokenized with
   ``data/tokenizer``): batches of ``batch_size`` conversations in a seeded order, either padded to the
   longest conversation of the batch (one row each) or packed best-fit-decreasing into rows of
   ``max_length`` tokens (:func:`mmfuse.training.data.chat.pack_examples`). Waste = pad slots / slots.
2. Throughput on the text-only WordNet conversations with the same tiny Llama (random init, same
   seed), the same tokenizer, loss on the assistant tokens (TRL: conversational prompt-completion
   data, ``completion_only_loss``), ``batch_size`` conversations per optimizer step, AdamW, fp32 on
   the CPU: ours packs the batch into rows attending through the core dispatch (no padding); TRL pads
   (its default collator). tokens/s counts real (non-pad) tokens; the first ``warmup`` steps of each
   are not timed. Prints the ratio ours / TRL.
"""

from __future__ import annotations

import argparse
import json
import random
import tarfile
import time
from pathlib import Path

import torch

from mmfuse.core.functional import IGNORE_INDEX, shift_labels, token_logps
from mmfuse.core.model import LM_KEYS, build_language_model
from mmfuse.core.text import content_text, load_tokenizer, tokenize_chat
from mmfuse.training.data.chat import ChatExample, pack_examples, pad_examples

REPO = Path(__file__).resolve().parents[1]
LM = dict(
    model_type="llama", hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=2, pad_token_id=3,
    tie_word_embeddings=True,
)  # fmt: skip


def conversations() -> list[dict]:
    """Every training record (``messages``, ``kinds``) of the instruction shards."""
    records = []
    for path in sorted((REPO / "data" / "instructions").glob("train-*.tar.gz")):
        with tarfile.open(path) as tar:
            records += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    return records


def examples(tokenizer, records: list[dict], max_length: int) -> list[ChatExample]:
    out = []
    for record in records:
        chat = tokenize_chat(tokenizer, record["messages"], max_length=max_length)
        out.append(ChatExample(chat.input_ids, shift_labels(chat.labels), [], record["messages"]))
    return out


def waste(batches: list[list[ChatExample]], max_length: int, pad_id: int) -> tuple[float, float]:
    """Pad share of the token slots: (padded batches, packed batches)."""
    real = padded = packed = 0
    for batch in batches:
        real += sum(len(e.input_ids) for e in batch)
        padded += pad_examples(batch, pad_id)["input_ids"].numel()
        packed += pack_examples(batch, max_length, pad_id)["input_ids"].numel()
    return 1 - real / padded, 1 - real / packed


def ours(tokenizer, batches: list[list[ChatExample]], max_length: int, warmup: int) -> float:
    """Real tokens per second of our SFT step (pack, forward through the core dispatch, backward, step)."""
    torch.manual_seed(0)
    model = build_language_model(LM, len(tokenizer)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens, elapsed = 0, 0.0
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        micro_batch = pack_examples(batch, max_length, tokenizer.pad_token_id)
        logits = model(
            input_ids=micro_batch["input_ids"], **{k: micro_batch[k] for k in LM_KEYS if k in micro_batch}
        ).logits
        labels = micro_batch["shift_labels"]
        loss = -token_logps(logits, labels).sum() / (labels != IGNORE_INDEX).sum().clamp_min(1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            elapsed += time.perf_counter() - start
            tokens += sum(len(e.input_ids) for e in batch)
    return tokens / elapsed


def trl(tokenizer, records: list[dict], batch_size: int, max_length: int, steps: int, warmup: int) -> float:
    """Real tokens per second of TRL's ``SFTTrainer`` on the same model, data and batch size."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.elapsed, self.tokens, self.start = 0.0, 0, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > warmup:
                self.elapsed += time.perf_counter() - self.start

    flat = [
        [{"role": m["role"], "content": content_text(m["content"])} for m in r["messages"]] for r in records
    ]
    rows = [{"prompt": m[:1], "completion": m[1:]} for m in flat]
    torch.manual_seed(0)
    model = build_language_model(LM, len(tokenizer))
    model.config._attn_implementation = "sdpa"
    config = SFTConfig(
        output_dir="/tmp/sft_packing_trl", max_steps=steps, per_device_train_batch_size=batch_size,
        max_length=max_length, learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0,
        logging_strategy="no", save_strategy="no", report_to=[], dataloader_num_workers=0, use_cpu=True,
        completion_only_loss=True, packing=False, seed=0,
    )  # fmt: skip
    timer = Timer()
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[timer])  # fmt: skip
    collate, real_tokens = trainer.data_collator, []

    def counting_collate(features):
        batch = collate(features)
        real_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collate
    trainer.train()
    return sum(real_tokens[warmup:steps]) / timer.elapsed  # the loader may collate one batch ahead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}), which is not timed")
    tokenizer = load_tokenizer(str(REPO / "data" / "tokenizer"))
    records = conversations()
    random.Random(0).shuffle(records)
    everything = examples(tokenizer, records, args.max_length)
    step = args.batch_size
    batches = [everything[i : i + step] for i in range(0, len(everything) - step + 1, step)]
    padded_waste, packed_waste = waste(batches, args.max_length, tokenizer.pad_token_id)
    print(f"padding waste over {len(batches)} batches of {step} conversations ({len(everything)} in all):")
    print(f"  padded to the longest in the batch: {padded_waste:.1%}")
    print(f"  packed best-fit-decreasing into {args.max_length}-token rows: {packed_waste:.1%}")

    text = [r for r in records if r["kinds"] == ["text/definition"]]
    text_batches = [
        examples(tokenizer, text[i * step : (i + 1) * step], args.max_length) for i in range(args.steps)
    ]
    ours_tps = ours(tokenizer, text_batches, args.max_length, args.warmup)
    trl_tps = trl(tokenizer, text[: args.steps * step], step, args.max_length, args.steps, args.warmup)
    print(f"text-only SFT, {step} conversations per step, {args.steps - args.warmup} timed steps, "
          f"{torch.get_num_threads()} threads:")  # fmt: skip
    print(f"  ours {ours_tps:,.0f} tokens/s   TRL SFTTrainer {trl_tps:,.0f} tokens/s")
    print(f"  ratio ours / TRL: {ours_tps / trl_tps:.2f}")


if __name__ == "__main__":
    main()
