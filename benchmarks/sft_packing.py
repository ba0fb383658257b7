"""Padding waste of packed vs padded SFT batches, and our SFT step vs TRL's ``SFTTrainer`` (tokens/s).

Run: ``uv run --group bench python benchmarks/sft_packing.py [--steps 12] [--repeats 5] [--batch-size 32]``.

1. Waste on the embedded instruction set (``data/instructions`` train shards, tokenized with
   ``data/tokenizer``): batches of ``batch_size`` conversations in a seeded order, either padded to the
   longest conversation of the batch (one row each) or packed best-fit-decreasing into rows of
   ``max_length`` tokens (:func:`mmfuse.training.data.chat.pack_examples`). Waste = pad slots / slots.
2. Throughput on the text-only WordNet conversations, the same work on both sides: the same tiny Llama
   (random init, seed 0), tokenizer and token ids (checked), the same conversations in the same order,
   ``batch_size`` of them per optimizer step, loss on the assistant tokens (TRL: conversational
   prompt-completion data, ``completion_only_loss``), float32 weights and compute, no activation
   checkpointing, fused AdamW with the same hyper-parameters and weight-decay groups, clipping at the
   same norm, a constant learning rate; both start from the same loss on the first batch (checked).
   Ours is the SFT stage (:class:`InstructionTuning` on a text-only :class:`MultimodalLM`): packed
   rows through the core attention dispatch, the LM head run on the assistant positions only. TRL's
   ``SFTTrainer`` runs in its two layouts: padded (its default collator) and ``padding_free`` (one
   flattened row; without flash-attention, transformers' SDPA path builds a block-diagonal causal
   mask from the restarting ``position_ids``, so sequences stay apart, as the equal losses show). Its
   fused LM head scores every position on CPU (the compact path is Triton's). TRL's defaults on this
   CPU (``bf16=True`` autocast, emulated here, and ``gradient_checkpointing=True``) are overridden,
   and its effective settings are printed as the trainer holds them.

   A step is collation or packing, forward, backward, clipping, optimizer step and zero_grad; its
   rate counts real (non-pad) tokens; the first ``warmup`` steps of each run are not timed. Runs
   alternate (ours, TRL padded, TRL padding-free, ours, ...) ``repeats`` times so that drifting load
   hits all alike. Printed: each side's median step rate over all rounds and its per-round medians,
   and the ratio of ours to TRL's faster layout (also per round). ``--threads`` sets both sides'
   torch threads; OpenMP's waiting threads sleep (``OMP_WAIT_POLICY=PASSIVE`` unless set otherwise).
"""

# ruff: noqa: E402
from __future__ import annotations

import os

# Set before torch loads OpenMP: waiting threads sleep instead of spinning. On a machine shared with other
# jobs the spinning default stalls every parallel op, on both sides alike (a [1024, 128] x [128, 384]
# matmul on 2 threads under load: median 32 ms spinning, 1.4 ms passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import random
import statistics
import time

import lightning as L
import torch
from _peer import LM, TOKENIZER, StepTimer, interleaved, settings_line, train_records, trl_settings

from mmfuse.core.functional import shift_labels
from mmfuse.core.model import MultimodalLM, build_language_model
from mmfuse.core.text import content_text, load_tokenizer, tokenize_chat
from mmfuse.training.data.chat import ChatExample, pack_examples, pad_examples
from mmfuse.training.stages.sft import InstructionTuning

#: optimiser and clipping of both sides (the SFT stage's betas, weight decay and clipping norm).
LR, BETAS, EPS, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-3, (0.9, 0.95), 1e-8, 0.01, 1.0


def conversations() -> list[dict]:
    """Every training record (``messages``, ``kinds``) of the instruction shards."""
    return [record for _, record in train_records("instructions")]


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


class Ours:
    """Our SFT step: :class:`InstructionTuning` on a text-only :class:`MultimodalLM` of the same LM.

    Packing (:func:`pack_examples`), the stage's token-normalised accumulation (its ``nll`` through
    the core attention dispatch), clipping, and the stage's AdamW (``configure_optimizers``). No
    fusion block is inserted (``cross_attn_every_n_layers`` beyond the depth), so the LM is TRL's.
    """

    def __init__(self, batches: list[list[ChatExample]], max_length: int) -> None:
        self.batches, self.max_length = batches, max_length
        torch.manual_seed(0)
        model = MultimodalLM(LM, TOKENIZER, cross_attn_every_n_layers=LM["num_hidden_layers"] + 1)
        self.stage = InstructionTuning(
            model,
            lr=LR,
            betas=BETAS,
            eps=EPS,
            weight_decay=WEIGHT_DECAY,
            max_grad_norm=MAX_GRAD_NORM,
            warmup_steps=0,
            min_lr_ratio=1.0,
        ).train()
        # the stage's own optimiser under a float32 Trainer (attached, not fitted); warmup 0 and
        # min_lr_ratio 1 make its schedule constant, as TRL's
        quiet = dict(
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
        )
        self.stage.trainer = L.Trainer(accelerator="cpu", precision="32-true", max_epochs=-1,
                                       max_steps=len(batches), **quiet)  # fmt: skip
        self.optimizer = self.stage.configure_optimizers()["optimizer"]

    def settings(self) -> dict:
        lm = self.stage.model.lm
        return {
            "dtype": str(next(lm.parameters()).dtype), "autocast": torch.is_autocast_enabled("cpu"),
            "activation_checkpointing": lm.is_activation_checkpointing,
            "attn_implementation": lm.config._attn_implementation, "fusion_blocks": len(
                self.stage.model.fused._fused_layers),
            "optimizer": type(self.optimizer).__name__,
            **{k: self.optimizer.defaults[k] for k in ("lr", "betas", "eps", "fused", "foreach")},
            "weight_decay": [g["weight_decay"] for g in self.optimizer.param_groups],
            "max_grad_norm": self.stage.hparams.max_grad_norm,
            "layout": f"packed best-fit-decreasing into {self.max_length}-token rows",
        }  # fmt: skip

    def micro_batch(self, batch: list[ChatExample]) -> dict:
        return pack_examples(batch, self.max_length, self.stage.tokenizer.pad_token_id)

    def first_loss(self) -> float:
        with torch.no_grad():
            nll, count = self.stage.nll(self.micro_batch(self.batches[0]))
        return float(nll / count)

    def step(self, batch: list[ChatExample]) -> None:
        micro_batch = self.micro_batch(batch)
        total = torch.tensor(float(self.stage.loss_units(micro_batch)))
        self.stage.accumulate([micro_batch], total, 1, lambda loss: loss.backward())
        torch.nn.utils.clip_grad_norm_(self.stage.parameters(), self.stage.hparams.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, warmup: int) -> list[float]:
        """Tokens per second of each step after the first ``warmup``."""
        rates = []
        for i, batch in enumerate(self.batches):
            start = time.perf_counter()
            self.step(batch)
            if i >= warmup:
                rates.append(sum(len(e.input_ids) for e in batch) / (time.perf_counter() - start))
        return rates


class Trl:
    """TRL's ``SFTTrainer`` on the same model, data, order and batch size, in its best settings here."""

    def __init__(self, tokenizer, records: list[dict], batch_size: int, steps: int, padding_free: bool,
                 max_length: int) -> None:  # fmt: skip
        import datasets
        from transformers import PrinterCallback
        from trl import SFTConfig, SFTTrainer

        datasets.disable_progress_bars()

        flat = [[{"role": m["role"], "content": content_text(m["content"])} for m in r["messages"]]
                for r in records]  # fmt: skip
        rows = [{"prompt": m[:1], "completion": m[1:]} for m in flat]
        torch.manual_seed(0)
        model = build_language_model(LM, len(tokenizer))
        model.set_attn_implementation("sdpa")
        config = SFTConfig(
            output_dir="/tmp/sft_packing_trl", max_steps=steps, per_device_train_batch_size=batch_size,
            learning_rate=LR, adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS,
            weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM, lr_scheduler_type="constant",
            warmup_steps=0, optim="adamw_torch_fused", bf16=False, fp16=False,
            activation_checkpointing=False, padding_free=padding_free, packing=False,
            # padding_free without packing does not truncate: max_length must be None (every
            # conversation is checked to fit max_length, so neither side truncates)
            max_length=None if padding_free else max_length, completion_only_loss=True,
            train_sampling_strategy="sequential", logging_strategy="no", save_strategy="no", report_to=[],
            dataloader_num_workers=0, use_cpu=True, seed=0, disable_tqdm=True,
        )  # fmt: skip
        self.timer = timer = StepTimer()
        self.trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                                  processing_class=tokenizer, callbacks=[timer])  # fmt: skip
        self.trainer.remove_callback(PrinterCallback)  # its end-of-training summary line
        collate = self.trainer.data_collator
        self.batches: list[dict] = []  # every collated batch, in order
        self.collate_seconds: list[float] = []

        def timed_collate(features):
            start = time.perf_counter()
            batch = collate(features)
            self.collate_seconds.append(time.perf_counter() - start)
            self.batches.append(batch)
            return batch

        self.trainer.data_collator = timed_collate

    def settings(self) -> dict:
        """The settings the trainer runs with, read back from it (not from what was passed)."""
        trainer = self.trainer
        return trl_settings(trainer) | {
            "activation_checkpointing": trainer.args.activation_checkpointing,
            "model.is_activation_checkpointing": trainer.model.is_activation_checkpointing,
            "padding_free": trainer.padding_free, "packing": trainer.args.packing,
            "completion_only_loss": trainer.completion_only_loss,
        }  # fmt: skip

    def first_batch(self) -> dict:
        batch = self.trainer.data_collator([self.trainer.train_dataset[i] for i in range(
            self.trainer.args.per_device_train_batch_size)])  # fmt: skip
        self.batches.clear()
        self.collate_seconds.clear()
        return batch

    def first_loss(self) -> float:
        with torch.no_grad():
            return float(self.trainer.compute_loss(self.trainer.model, dict(self.first_batch())))

    def run(self, warmup: int) -> list[float]:
        """Tokens per second of each step after the first ``warmup`` (its collation included)."""
        self.trainer.train()
        steps = range(warmup, self.trainer.args.max_steps)  # the loader may collate one batch ahead
        return [
            _real_tokens(self.batches[i]) / (self.timer.seconds[i] + self.collate_seconds[i]) for i in steps
        ]


def _real_tokens(batch: dict) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch["position_ids"].numel()  # padding-free: one row of real tokens only


def _trl_token_ids(batch: dict) -> list[int]:
    """The real token ids of a TRL batch, conversation after conversation."""
    if "attention_mask" in batch:
        return batch["input_ids"][batch["attention_mask"].bool()].tolist()
    return batch["input_ids"].flatten().tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the Trainer's device lines
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}), which is not timed")
    tokenizer = load_tokenizer(TOKENIZER)
    records = conversations()
    random.Random(0).shuffle(records)
    everything = examples(tokenizer, records, args.max_length)
    step = args.batch_size
    batches = [everything[i : i + step] for i in range(0, len(everything) - step + 1, step)]
    padded_waste, packed_waste = waste(batches, args.max_length, tokenizer.pad_token_id)
    print(f"padding waste over {len(batches)} batches of {step} conversations ({len(everything)} in all):")
    print(f"  padded to the longest in the batch: {padded_waste:.1%}")
    print(f"  packed best-fit-decreasing into {args.max_length}-token rows: {packed_waste:.1%}")

    text = [r for r in records if r["kinds"] == ["text/definition"]][: args.steps * step]
    text_batches = [examples(tokenizer, text[i * step : (i + 1) * step], None) for i in range(args.steps)]
    too_long = sum(len(e.input_ids) > args.max_length for b in text_batches for e in b)
    if too_long:
        raise SystemExit(
            f"{too_long} conversations exceed --max-length {args.max_length}: the sides would differ"
        )

    def trl(padding_free: bool) -> Trl:
        return Trl(tokenizer, text, step, args.steps, padding_free, args.max_length)

    sides = {
        "ours": lambda: Ours(text_batches, args.max_length),
        "TRL padded": lambda: trl(False),
        "TRL padding-free": lambda: trl(True),
    }
    ours_ids = [i for e in text_batches[0] for i in e.input_ids.tolist()]
    print(f"\ntext-only SFT: {step} conversations per step, {args.steps} steps ({args.warmup} untimed), "
          f"{sum(len(e.input_ids) for b in text_batches for e in b):,} real tokens per run, "
          f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}); effective "
          "settings and first-batch loss:")  # fmt: skip
    for name, make in sides.items():
        side = make()
        same_ids = ours_ids if name == "ours" else _trl_token_ids(side.first_batch())
        print(f"  {name}: loss {side.first_loss():.6f}, same token ids as ours: {same_ids == ours_ids}")
        print(f"    {settings_line(side.settings())}")

    print(f"\n{args.repeats} interleaved rounds (each a fresh model and optimizer):")
    runs = {name: lambda make=make: make().run(args.warmup) for name, make in sides.items()}
    results = interleaved(runs, args.repeats)
    medians = {name: statistics.median(r for run in runs_ for r in run) for name, runs_ in results.items()}
    print(f"median over all timed steps ({args.repeats} x {args.steps - args.warmup}); per-round medians:")
    for name, runs_ in results.items():
        rounds = ", ".join(f"{statistics.median(run):,.0f}" for run in runs_)
        print(f"  {name:>16}: {medians[name]:7,.0f} tokens/s   ({rounds})")
    best = max((name for name in medians if name != "ours"), key=medians.get)
    pairs = [
        statistics.median(o) / statistics.median(t)
        for o, t in zip(results["ours"], results[best], strict=True)
    ]
    print(f"ratio ours / {best} (TRL's faster layout): {medians['ours'] / medians[best]:.2f}"
          f"   (per round: {', '.join(f'{r:.2f}' for r in pairs)})")  # fmt: skip


if __name__ == "__main__":
    main()
