"""Images/s of mmfuse's alignment training step vs open_clip's own, measured in one run.

Both sides get the same architecture (the config of ``training/configs/align/image_text.yaml``),
the same batches decoded once from the embedded shards, fp32 (or ``--precision bf16`` autocast),
AdamW with the same hyper-parameters, and the same number of threads. A step is forward, loss,
backward, optimiser step, zero_grad; open_clip's is ``CLIP.forward`` + ``ClipLoss`` (with
``cache_labels=True``, as ``open_clip.create_loss`` builds it) + the ``torch.optim.AdamW`` of
``open_clip_train/main.py`` (its ``train_one_epoch`` inner step without the GradScaler), ours is
``ContrastiveAlignment``'s ``embed_media`` / ``embed_text`` / loss with label-positive groups + the
same AdamW. Neither side checkpoints activations or compiles. Both sides' effective settings are
printed, read back from the models, loss and optimisers. Steps alternate between the two, the
order flipping every step, so drifting machine load hits both alike; the median images/s per side
(with the quartiles) and the ratio of the medians are printed.

    uv run python benchmarks/align_throughput.py --steps 30
"""

# ruff: noqa: E402
from __future__ import annotations

import os

# Set before torch loads OpenMP: waiting threads sleep instead of spinning. On a machine shared with other
# jobs the spinning default stalls every parallel op, on both sides alike (a [1024, 128] x [128, 384]
# matmul on 2 threads under load: median 32 ms spinning, 1.4 ms passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import math
import statistics
import time

import open_clip
import torch
import yaml

from mmfuse.core.data import EpochLoader, MediaTextDecoder, ShardedStream, expand_urls
from mmfuse.core.text import OpenClipTextEncoder
from mmfuse.training.optim import adamw_param_groups
from mmfuse.training.stages.align import ContrastiveAlignment
from mmfuse.vision import ImageTransform, OpenClipVisionEncoder

CONFIG = "training/configs/align/image_text.yaml"


def load_batches(batch_size: int, n: int, image_size: int, context_length: int) -> list[dict]:
    decode = MediaTextDecoder(
        ImageTransform(image_size), open_clip.get_tokenizer("ViT-B-32", context_length=context_length)
    )
    urls = expand_urls("data/image_text/train-{000000..000003}.tar.gz")
    stream = ShardedStream(urls, decode, batch_size=batch_size, train=True, repeat=True)
    return list(EpochLoader(stream, num_batches=n, num_workers=0))


def settings(model: torch.nn.Module, optimizer: torch.optim.Optimizer, **extra) -> str:
    """One side's effective settings, read back from its model and optimiser."""
    checkpointing = any(getattr(m, "grad_checkpointing", False) for m in model.modules())
    values = {
        "dtype": next(model.parameters()).dtype, "grad_checkpointing": checkpointing,
        "parameters": sum(p.numel() for p in model.parameters()), "optimizer": type(optimizer).__name__,
        **{k: optimizer.defaults[k] for k in ("lr", "betas", "eps", "fused", "foreach")},
        "weight_decay": [g["weight_decay"] for g in optimizer.param_groups], **extra,
    }  # fmt: skip
    return ", ".join(f"{k}={v}" for k, v in values.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = yaml.safe_load(open(CONFIG))["model"]["init_args"]
    tower = cfg["media_encoder"]  # a path relative to the config (configs/towers/*.yaml) or inline
    if isinstance(tower, str):
        tower = yaml.safe_load(open(os.path.join(os.path.dirname(CONFIG), tower)))
    vision = tower["init_args"]
    text = cfg["text_encoder"]["init_args"]
    embed_dim = vision["embed_dim"]
    batches = load_batches(
        args.batch_size, 8, vision["vision_cfg"]["image_size"], text["text_cfg"]["context_length"]
    )

    torch.manual_seed(0)
    ours = ContrastiveAlignment(
        OpenClipVisionEncoder(**vision), OpenClipTextEncoder(**text), positives=cfg["positives"]
    )
    torch.manual_seed(0)
    theirs = open_clip.CLIP(embed_dim, vision["vision_cfg"], text["text_cfg"])
    theirs_loss = open_clip.ClipLoss(cache_labels=True)
    hyper = {"lr": 5e-4, "betas": (0.9, 0.98), "eps": 1e-6}
    opt_ours = torch.optim.AdamW(adamw_param_groups(ours, 0.1), **hyper)
    opt_theirs = torch.optim.AdamW(adamw_param_groups(theirs, 0.1), **hyper)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if args.precision == "bf16"
        else contextlib.nullcontext
    )

    def step_ours(batch: dict) -> None:
        with autocast():
            loss = ours._loss(ours.embed_media(batch), ours.embed_text(batch), batch)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        with torch.no_grad():
            ours.logit_scale.clamp_(0, math.log(100))

    def step_theirs(batch: dict) -> None:
        with autocast():
            image_features, text_features, logit_scale = theirs(batch["pixel_values"], batch["input_ids"])
            loss = theirs_loss(image_features, text_features, logit_scale)
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
        with torch.no_grad():
            theirs.logit_scale.clamp_(0, math.log(100))

    print(
        f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} "
        f"batch={args.batch_size} steps={args.steps} "
        f"(+{args.warmup} untimed) precision={args.precision}"
    )
    ours_loss = f"ContrastiveAlignment(loss={ours.hparams.loss!r}, positives={ours.hparams.positives!r})"
    print(f"    mmfuse: {settings(ours, opt_ours, loss=ours_loss)}")
    loss_flags = {k: getattr(theirs_loss, k) for k in ("local_loss", "gather_with_grad", "cache_labels")}
    print(f" open_clip: {settings(theirs, opt_theirs, loss=f'ClipLoss({loss_flags})')}")
    seconds: dict[str, list[float]] = {"mmfuse": [], "open_clip": []}
    steps = {"mmfuse": step_ours, "open_clip": step_theirs}
    for i in range(args.warmup + args.steps):
        order = list(steps) if i % 2 == 0 else list(steps)[::-1]
        for name in order:
            start = time.perf_counter()
            steps[name](batches[i % len(batches)])
            if i >= args.warmup:
                seconds[name].append(time.perf_counter() - start)
    rates = {name: [args.batch_size / s for s in times] for name, times in seconds.items()}
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        low, _, high = statistics.quantiles(r, n=4)
        print(f"{name:>10}: median {medians[name]:8.1f} images/s (quartiles {low:.1f}..{high:.1f})")
    per_step = statistics.median(o / t for o, t in zip(rates["mmfuse"], rates["open_clip"], strict=True))
    print(
        f"ratio mmfuse / open_clip = {medians['mmfuse'] / medians['open_clip']:.3f} "
        f"(median of per-step ratios {per_step:.3f})"
    )


if __name__ == "__main__":
    main()
