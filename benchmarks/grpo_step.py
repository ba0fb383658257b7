"""Our GRPO step vs TRL's ``GRPOTrainer`` (no vLLM): steps/s and the share of time spent generating.

Run: ``OMP_NUM_THREADS=1 uv run --group bench python benchmarks/grpo_step.py [--steps 8] [--repeats 4]
[--prompts 4] [--group-size 8] [--max-new-tokens 16]`` (one thread: on a CPU shared with other jobs,
two threads ran the tiny model 8-25x slower than one).

Both sides train the same tiny text-only Llama (the embedded configs', random init, same seed, no fusion
blocks) on the same prompts (the embedded instruction set's text questions, rendered with the same chat
template: the token ids are checked equal), with the same group size, token budget, sampling
(temperature 1, no top-k / top-p), reward (:class:`~mmfuse.training.rewards.ExactMatch`, run by TRL
through its reward-function signature), loss (``"dapo"``, ``beta`` 0, one iteration), optimiser (fused
AdamW, both sides' default, constant learning rate, clipping at 1) and precision (fp32, no gradient
checkpointing: TRL 1.16 defaults to bf16 and checkpointing; its effective settings are printed). One
step = sampling ``prompts x group_size`` completions, scoring, one optimiser step. Ours is the GRPO
stage's ``training_step`` under a Lightning ``Trainer``; TRL's is ``GRPOTrainer``'s step. Runs alternate
(ours, TRL, TRL, ours, ...), each on a fresh model; a run's first step is warm-up, not timed. Printed:
the median step time of each (steps/s), the ratio ours / TRL, and the share of step time spent in the
model's ``generate`` for both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import lightning as L
import torch
from _peer import LM, TOKENIZER, Timer, train_records

from mmfuse.core.model import MultimodalLM, build_language_model
from mmfuse.core.text import content_text, load_tokenizer, render_chat, tokenize_chat
from mmfuse.training.data.chat import AnswerPrompt
from mmfuse.training.rewards import ExactMatch
from mmfuse.training.stages.grpo import GRPO

LR = 1e-5


def questions(n: int) -> list[tuple[str, str]]:
    """The first ``n`` text questions of the training shards: (question, reference answer)."""
    out = []
    for _, record in train_records("instructions"):
        if record["kinds"] == ["text/definition"]:
            user, answer = record["messages"]
            out.append((content_text(user["content"]), content_text(answer["content"])))
            if len(out) == n:
                return out
    raise ValueError(f"fewer than {n} text questions in the instruction shards")


def prompt_ids(tokenizer, question: str) -> torch.Tensor:
    """Our prompt: the question as a user turn with the generation prompt."""
    messages = [{"role": "user", "content": question}]
    return tokenize_chat(tokenizer, messages, add_generation_prompt=True).input_ids


def ours(pairs: list[tuple[str, str]], args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Step times and generation times of our GRPO stage (Lightning ``Trainer``, one step per batch)."""
    torch.manual_seed(0)
    model = MultimodalLM(LM, TOKENIZER, cross_attn_every_n_layers=LM["num_hidden_layers"] + 1)  # text-only
    stage = GRPO(
        model, [ExactMatch()], group_size=args.group_size, max_new_tokens=args.max_new_tokens,
        micro_batch_size=args.prompts, loss_type="dapo", beta=0.0, lr=LR, weight_decay=0.0, warmup_steps=0,
        min_lr_ratio=1.0, max_grad_norm=1.0,
    )  # fmt: skip
    prompts = [AnswerPrompt(prompt_ids(model.tokenizer, q), [], "text/definition", a, q) for q, a in pairs]
    step = args.prompts
    batches = [{"prompts": prompts[i : i + step], "num_skipped": 0} for i in range(0, len(prompts), step)]
    generation = Timer(model, "generate")
    steps, generating = [], []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start, self.generated = time.perf_counter(), generation.seconds

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.append(time.perf_counter() - self.start)
            generating.append(generation.seconds - self.generated)

    trainer = L.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, precision="32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[StepTimer()],
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)
    trainer.fit(stage, train_dataloaders=loader)
    return steps[1:], generating[1:]


def trl(pairs: list[tuple[str, str]], args: argparse.Namespace, report: Callable[[dict], None] | None):
    """Step times and generation times of TRL's ``GRPOTrainer`` on the same model, prompts and reward."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = load_tokenizer(TOKENIZER)
    torch.manual_seed(0)
    model = build_language_model(LM, len(tokenizer))
    model.config._attn_implementation = "sdpa"
    rows = [
        {"prompt": render_chat(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True),
         "reference": a}
        for q, a in pairs
    ]  # fmt: skip
    exact = ExactMatch()

    def exact_match(prompts, completions, **columns):  # TRL names a reward function by __name__
        return exact(prompts, completions, **columns)

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="grpo_step_trl_"), max_steps=args.steps,
        per_device_train_batch_size=args.prompts * args.group_size, num_generations=args.group_size,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, beta=0.0,
        loss_type="dapo", num_iterations=1, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch_fused", bf16=False,
        gradient_checkpointing=False, use_cpu=True, disable_dropout=True, shuffle_dataset=False,
        dataloader_num_workers=0, logging_strategy="no", save_strategy="no", report_to=[], seed=0,
    )  # fmt: skip
    steps, generating = [], []
    generation = Timer(model, "generate")

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start, self.generated = time.perf_counter(), generation.seconds

        def on_step_end(self, args, state, control, **kwargs):
            steps.append(time.perf_counter() - self.start)
            generating.append(generation.seconds - self.generated)

    trainer = GRPOTrainer(model=model, reward_funcs=[exact_match], args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          callbacks=[StepTimer()])  # fmt: skip
    if report is not None:
        report(trainer)
    trainer.train()
    return steps[1:], generating[1:]


def peer_settings(trainer) -> None:
    """Print TRL's effective settings and check its prompt ids equal ours."""
    a = trainer.args
    names = ("bf16", "fp16", "gradient_checkpointing", "optim", "loss_type", "beta", "num_generations",
             "per_device_train_batch_size", "generation_batch_size", "steps_per_generation", "num_iterations",
             "max_completion_length", "temperature", "top_p", "top_k", "scale_rewards", "disable_dropout",
             "use_vllm", "learning_rate", "lr_scheduler_type", "max_grad_norm")  # fmt: skip
    print("TRL effective settings: " + ", ".join(f"{n}={getattr(a, n)}" for n in names))
    parameter = next(trainer.model.parameters())
    print(f"TRL model: dtype {parameter.dtype}, attention {trainer.model.config._attn_implementation}, "
          f"gradient checkpointing on the model: {trainer.model.is_gradient_checkpointing}")  # fmt: skip


def check_same_prompts(pairs: list[tuple[str, str]]) -> None:
    """Raise unless TRL's tokenization of the rendered prompts gives our prompt ids."""
    tokenizer = load_tokenizer(TOKENIZER)
    for q, _ in pairs:
        ours_ids = prompt_ids(tokenizer, q).tolist()
        trl_ids = tokenizer(text=render_chat(tokenizer, [{"role": "user", "content": q}], True))["input_ids"]
        assert ours_ids == trl_ids, (q, ours_ids, trl_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=4, help="runs of each, interleaved")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    pairs = questions(args.steps * args.prompts)
    check_same_prompts(pairs)
    print(f"{args.prompts} prompts x {args.group_size} completions per step, <= {args.max_new_tokens} new"
          f" tokens, {args.steps} steps per run ({args.steps - 1} timed), {args.repeats} runs each,"
          f" interleaved; torch threads {torch.get_num_threads()}")  # fmt: skip
    times: dict[str, tuple[list[float], list[float]]] = {"ours": ([], []), "TRL": ([], [])}
    for repeat in range(args.repeats):
        order = ("ours", "TRL") if repeat % 2 == 0 else ("TRL", "ours")
        for name in order:
            report = peer_settings if repeat == 0 else None
            run = ours(pairs, args) if name == "ours" else trl(pairs, args, report)
            times[name][0].extend(run[0])
            times[name][1].extend(run[1])
            print(f"  run {repeat} {name}: median step {statistics.median(run[0]):.3f} s")
    medians = {}
    for name, (steps, generating) in times.items():
        medians[name] = statistics.median(steps)
        share = sum(generating) / sum(steps)
        print(f"{name}: median step {medians[name]:.3f} s = {1 / medians[name]:.3f} steps/s, "
              f"generating {share:.0%} of step time ({len(steps)} timed steps)")  # fmt: skip
    print(f"steps/s ratio ours / TRL: {medians['TRL'] / medians['ours']:.2f}")


if __name__ == "__main__":
    main()
