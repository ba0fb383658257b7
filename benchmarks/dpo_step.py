"""Our DPO step vs TRL's ``DPOTrainer``: optimizer steps/s with a live and with a precomputed reference.

Run: ``OMP_NUM_THREADS=1 uv run --group bench python benchmarks/dpo_step.py [--steps 10] [--warmup 2]
[--repeats 4] [--batch-size 16] [--max-length 128]``.

Both sides train the same tiny text-only Llama (the embedded configs', random init, seed 0, no fusion
blocks; the equal reference log-probs of every pair show the weights and the scored tokens are the same)
on the same pairs in the same order: the embedded preference set's ``text/definition`` pairs
(``data/preferences`` train shards, a word's question with its gloss chosen and another word's gloss
rejected), ``batch_size`` pairs per optimizer step, rendered with the same chat template (the token ids,
attention masks and completion masks of the first batch are checked equal). The same loss (sigmoid DPO,
``beta`` 0.1), optimiser (fused AdamW, both sides' default, same betas and epsilon, no weight decay, a
constant learning rate), clipping at norm 1, precision (float32 weights and compute, no gradient
checkpointing: TRL 1.16 defaults to bf16 and checkpointing) and maximum length (no pair is longer, so
neither side truncates). TRL's ``padding_free`` is off: 1.16 disables it for DPO (it warns and falls
back to padding). Its effective settings are printed as the trainer holds them, and both sides' first
step loss (ln 2 = 0.693147: the policy is the reference).

Two settings, each on both sides:

* live reference: a frozen eval-mode copy scores every pair in each step (ours:
  :class:`~mmfuse.training.stages.reference.FrozenReference`; TRL: a copy passed as ``ref_model``, which
  it puts in eval mode and runs under ``no_grad``);
* precomputed reference log-probs: one pass over the pairs before training (ours: ``ref_logps_cache``,
  :class:`~mmfuse.training.stages.reference.CachedReference`, in ``on_fit_start``; TRL:
  ``precompute_ref_log_probs=True``, in the trainer's constructor), timed apart from the steps, each pass in
  batches of ``batch_size`` pairs.

One step = the policy's (and a live reference's) one concatenated chosen + rejected forward, the loss,
backward, clipping, the optimizer step and zero_grad, with each trainer's per-step hooks and metrics;
fetching and collating the batch happen before the timer starts on both sides. Ours is the DPO stage's
``training_step`` under a Lightning ``Trainer`` (fed by :class:`PreferenceDataModule`, as ``mmfuse fit``
does); TRL's is ``DPOTrainer``'s step. Runs alternate (ours live, TRL live, ours precomputed, TRL
precomputed, then again) ``repeats`` times, each on a fresh model; the first ``warmup`` steps of a run are
not timed. Printed: each side's median steps/s over all timed steps, per-round medians, the ratio ours /
TRL per setting, and the median precompute pass.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from _peer import LM, TOKENIZER, StepTimer, Timer, interleaved, settings_line, train_records, trl_settings
from torch import Tensor

from mmfuse.core.model import MultimodalLM, build_language_model
from mmfuse.core.text import content_text, load_tokenizer
from mmfuse.training.data.preference import (
    PreferenceDataModule,
    PreferenceDecoder,
    PreferenceExample,
    collate_pairs,
    write_preference_shard,
)
from mmfuse.training.stages.dpo import DirectPreferenceOptimization

#: loss and optimiser of both sides (TRL's default DPO learning rate; the DPO stage's betas and epsilon).
BETA, LR, BETAS, EPS, MAX_GRAD_NORM = 0.1, 1e-6, (0.9, 0.95), 1e-8, 1.0
KIND = "text/definition"


def text_pairs(n: int) -> list[tuple[str, dict]]:
    """The first ``n`` text pairs of the preference train shards: (sample key, record)."""
    out = []
    for key, record in train_records("preferences"):
        if record["kind"] == KIND:
            out.append((key, record))
            if len(out) == n:
                return out
    raise ValueError(f"fewer than {n} {KIND} pairs in the preference shards")


class Ours:
    """Our DPO stage on a text-only :class:`MultimodalLM`, fed by :class:`PreferenceDataModule`."""

    def __init__(self, shard: Path, args: argparse.Namespace, cache: Path | None) -> None:
        torch.manual_seed(0)
        model = MultimodalLM(LM, TOKENIZER, cross_attn_every_n_layers=LM["num_hidden_layers"] + 1)
        self.stage = DirectPreferenceOptimization(
            model, beta=BETA, loss_type="sigmoid", ref_logps_cache=None if cache is None else str(cache),
            lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0, warmup_steps=0, min_lr_ratio=1.0,
            max_grad_norm=MAX_GRAD_NORM,
        )  # fmt: skip
        self.data = PreferenceDataModule(
            str(shard), max_length=args.max_length, batch_size=args.batch_size,
            val_batch_size=args.batch_size, num_workers=0, shuffle_buffer=0,
        )  # fmt: skip
        self.args, self.cache = args, cache
        self.losses: list[float] = []
        self.precompute = None if cache is None else Timer(self.stage.reference, "_build")

    def settings(self) -> dict:
        lm, trainer = self.stage.model.lm, self.trainer
        optimizer = trainer.optimizers[0]
        return {
            "dtype": str(next(lm.parameters()).dtype), "precision": trainer.precision,
            "activation_checkpointing": lm.is_activation_checkpointing,
            "attn_implementation": lm.config._attn_implementation,
            "fusion_blocks": len(self.stage.model.fused._fused_layers),
            "reference": type(self.stage.reference).__name__, "optimizer": type(optimizer).__name__,
            **{k: optimizer.defaults[k] for k in ("lr", "betas", "eps", "fused")},
            "weight_decay": [g["weight_decay"] for g in optimizer.param_groups],
            "max_grad_norm": self.stage.hparams.max_grad_norm, "beta": self.stage.hparams.beta,
            "loss_type": self.stage.hparams.loss_type, "max_length": self.data.max_length,
            "batch_size": self.data.batch_size, "num_workers": self.data.num_workers,
        }  # fmt: skip

    def run(self) -> list[float]:
        """Steps per second of each step after the first ``warmup``."""
        seconds, losses = [], self.losses

        class Steps(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                self.start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                seconds.append(time.perf_counter() - self.start)
                losses.append(float(outputs["loss"]))

        self.trainer = L.Trainer(
            max_steps=self.args.steps, accelerator="cpu", devices=1, precision="32-true", logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, callbacks=[Steps()],
        )  # fmt: skip
        self.trainer.fit(self.stage, datamodule=self.data)
        return [1 / s for s in seconds[self.args.warmup :]]


class Trl:
    """TRL's ``DPOTrainer`` on the same model, pairs, order and batch size, in its best settings here."""

    def __init__(self, pairs: list[tuple[str, dict]], args: argparse.Namespace, precompute: bool) -> None:
        import datasets
        from transformers import PrinterCallback
        from trl import DPOConfig, DPOTrainer

        datasets.disable_progress_bars()
        tokenizer = load_tokenizer(TOKENIZER)
        flat = lambda messages: [{"role": m["role"], "content": content_text(m["content"])} for m in messages]
        rows = [{name: flat(r[name]) for name in ("prompt", "chosen", "rejected")} for _, r in pairs]
        torch.manual_seed(0)
        model = build_language_model(LM, len(tokenizer))
        model.set_attn_implementation("sdpa")
        config = DPOConfig(
            output_dir=tempfile.mkdtemp(prefix="dpo_step_trl_"), max_steps=args.steps,
            per_device_train_batch_size=args.batch_size, learning_rate=LR, adam_beta1=BETAS[0],
            adam_beta2=BETAS[1], adam_epsilon=EPS, weight_decay=0.0, max_grad_norm=MAX_GRAD_NORM,
            lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused", bf16=False, fp16=False,
            gradient_checkpointing=False, padding_free=False, max_length=args.max_length, beta=BETA,
            loss_type="sigmoid", precompute_ref_log_probs=precompute,
            precompute_ref_batch_size=args.batch_size, train_sampling_strategy="sequential",
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[],
            dataloader_num_workers=0, use_cpu=True, seed=0, disable_tqdm=True, disable_dropout=True,
        )  # fmt: skip
        self.timer, self.losses = StepTimer(), []
        self.precompute_seconds = 0.0
        inner = DPOTrainer._precompute_ref_logps

        def timed_precompute(trainer, *a, **kw):  # it runs inside the constructor
            start = time.perf_counter()
            try:
                return inner(trainer, *a, **kw)
            finally:
                self.precompute_seconds += time.perf_counter() - start

        DPOTrainer._precompute_ref_logps = timed_precompute
        try:
            self.trainer = DPOTrainer(
                # TRL rebuilds a missing reference from the model's hub name; this model is built in code
                model=model, ref_model=None if precompute else copy.deepcopy(model), args=config,
                train_dataset=datasets.Dataset.from_list(rows),
                processing_class=tokenizer, callbacks=[self.timer],
            )  # fmt: skip
        finally:
            DPOTrainer._precompute_ref_logps = inner
        self.trainer.remove_callback(PrinterCallback)
        compute_loss = self.trainer.compute_loss

        def recorded(*a, **kw):
            loss = compute_loss(*a, **kw)
            self.losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
            return loss

        self.trainer.compute_loss = recorded
        self.args = args

    def settings(self) -> dict:
        """The settings the trainer runs with, read back from it (not from what was passed)."""
        trainer = self.trainer
        return trl_settings(trainer) | {
            "model.is_gradient_checkpointing": trainer.model.is_gradient_checkpointing,
            "padding_free": trainer.padding_free, "precompute_ref_logps": trainer.precompute_ref_logps,
            "ref_model": None if trainer.ref_model is None else type(trainer.ref_model).__name__,
            "beta": trainer.beta, "loss_type": trainer.loss_types, "max_length": trainer.args.max_length,
        }  # fmt: skip

    def first_batch(self) -> dict:
        dataset = self.trainer.train_dataset
        return self.trainer.data_collator([dataset[i] for i in range(self.args.batch_size)])

    def run(self) -> list[float]:
        """Steps per second of each step after the first ``warmup``."""
        self.trainer.train()
        return [1 / s for s in self.timer.seconds[self.args.warmup :]]


def decoded(pairs: list[tuple[str, dict]], max_length: int | None) -> list[PreferenceExample]:
    """The pairs as our data module decodes them."""
    decoder = PreferenceDecoder(load_tokenizer(TOKENIZER), {}, max_length)
    return [decoder({"__key__": k, "json": json.dumps(r)}, train=True)["chat"] for k, r in pairs]


def check_same_batch(ours: Ours, trl: Trl, pairs: list[tuple[str, dict]]) -> None:
    """Raise unless TRL's first collated batch has our token ids, attention mask and completion mask."""
    examples = decoded(pairs[: ours.args.batch_size], ours.data.max_length)
    mine, theirs = collate_pairs(examples, ours.stage.tokenizer.pad_token_id), trl.first_batch()
    for name in ("input_ids", "attention_mask", "completion_mask"):
        a, b = mine[name], theirs[name]
        if a.shape != b.shape or not torch.equal(a.long(), b.long()):
            raise SystemExit(f"the first batch's {name} differs: ours {tuple(a.shape)}, TRL {tuple(b.shape)}")


def reference_logps(ours: Ours, trl: Trl, pairs: list[tuple[str, dict]]) -> tuple[Tensor, Tensor]:
    """Both sides' precomputed reference log-probs of every pair, ``[n, 2]`` (chosen, rejected)."""
    table = ours.stage.reference.splits["train"]
    mine = table["logps"][[table["index"][key] for key, _ in pairs]]
    dataset = trl.trainer.train_dataset
    theirs = torch.tensor([dataset["ref_chosen_logps"], dataset["ref_rejected_logps"]]).T
    return mine, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}), which is not timed")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the Trainer's device lines
    warnings.filterwarnings("ignore", module="lightning|transformers")  # deprecations, SLURM hints
    os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's precompute progress bar
    pairs = text_pairs(args.steps * args.batch_size)
    workdir = Path(tempfile.mkdtemp(prefix="dpo_step_"))
    shard = workdir / "pairs.tar.gz"
    write_preference_shard(shard, [{"__key__": key, "json": record} for key, record in pairs])
    lengths = [len(ids) for e in decoded(pairs, None) for ids in (e.chosen_ids, e.rejected_ids)]
    if max(lengths) > args.max_length:
        raise SystemExit(f"a pair is {max(lengths)} tokens, over --max-length {args.max_length}: the sides"
                         " would truncate differently")  # fmt: skip
    print(f"text-only DPO: {args.batch_size} {KIND} pairs per step ({2 * args.batch_size} rows of"
          f" {min(lengths)}-{max(lengths)} tokens, mean {statistics.mean(lengths):.1f}), {args.steps} steps"
          f" per run ({args.warmup} untimed), torch threads {torch.get_num_threads()}")  # fmt: skip

    sides, precompute, caches = {}, {}, iter(range(10**6))

    def run(name: str) -> list[float]:
        live = name.endswith("live")
        if name.startswith("ours"):
            side = Ours(shard, args, None if live else workdir / f"ref_logps-{next(caches)}.pt")
        else:
            side = Trl(pairs, args, precompute=not live)
        rates = side.run()
        if not live:
            seconds = side.precompute.seconds if name.startswith("ours") else side.precompute_seconds
            precompute.setdefault(name, []).append(seconds)
        sides[name] = side
        return rates

    names = ("ours live", "TRL live", "ours precomputed", "TRL precomputed")
    print(f"\n{args.repeats} interleaved rounds (each run a fresh model and optimizer):")
    results = interleaved({name: lambda name=name: run(name) for name in names}, args.repeats, "steps/s", 2)

    print("\neffective settings (read back from each trainer) and first-step loss (ln 2 = 0.693147):")
    for name in names:
        print(f"  {name}: first-step loss {sides[name].losses[0]:.6f}")
        print(f"    {settings_line(sides[name].settings())}")
    check_same_batch(sides["ours live"], sides["TRL live"], pairs)
    mine, theirs = reference_logps(sides["ours precomputed"], sides["TRL precomputed"], pairs)
    print(f"same first batch (token ids, attention and completion masks): True; reference log-probs of all"
          f" {len(pairs)} pairs, ours vs TRL: max |diff| {(mine - theirs).abs().max():.2e}"
          f" (mean {mine.mean():.3f})")  # fmt: skip
    assert all(math.isclose(s.losses[0], math.log(2), abs_tol=1e-5) for s in sides.values())

    medians = {name: statistics.median(r for run in runs for r in run) for name, runs in results.items()}
    print(f"\nmedian over all timed steps ({args.repeats} x {args.steps - args.warmup} per side); per-round:")
    print(f"  {'reference':<12} {'ours steps/s':>12} {'TRL steps/s':>12} {'ratio':>6} {'target':>6}"
          "   per-round ratios")  # fmt: skip
    for setting, target in (("live", 1.3), ("precomputed", 1.6)):
        ours, trl = results[f"ours {setting}"], results[f"TRL {setting}"]
        rounds = [statistics.median(o) / statistics.median(t) for o, t in zip(ours, trl, strict=True)]
        ratio = medians[f"ours {setting}"] / medians[f"TRL {setting}"]
        print(f"  {setting:<12} {medians[f'ours {setting}']:>12.2f} {medians[f'TRL {setting}']:>12.2f}"
              f" {ratio:>6.2f} {target:>6.1f}   {', '.join(f'{r:.2f}' for r in rounds)}")  # fmt: skip
    for name, seconds in precompute.items():
        print(f"  precompute pass, {name.split()[0]}: median {statistics.median(seconds):.2f} s over"
              f" {len(pairs)} pairs (per round: {', '.join(f'{s:.2f}' for s in seconds)})")  # fmt: skip


if __name__ == "__main__":
    main()
