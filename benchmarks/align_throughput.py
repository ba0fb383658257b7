"""Images/s of mmfuse's alignment training step vs open_clip's own, measured in one run.

Both sides get the same architecture (the config of ``training/configs/align/image_text.yaml``),
the same batches decoded once from the embedded shards, fp32 (or ``--precision bf16`` autocast),
AdamW with the same hyper-parameters, and the same number of threads. A step is forward, loss,
backward, optimiser step, zero_grad; open_clip's is ``CLIP.forward`` + ``ClipLoss`` + the
``torch.optim.AdamW`` of ``open_clip_train/main.py`` (its ``train_one_epoch`` inner step without the
GradScaler), ours is ``ContrastiveAlignment``'s ``embed_media`` / ``embed_text`` / loss with
label-positive groups + the same AdamW.
Steps alternate between the two so drifting machine load hits both alike.

    uv run python benchmarks/align_throughput.py --steps 30
"""

from __future__ import annotations

import argparse
import contextlib
import math
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()

    cfg = yaml.safe_load(open(CONFIG))["model"]["init_args"]
    vision = cfg["media_encoder"]["init_args"]
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
    theirs_loss = open_clip.ClipLoss()
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

    elapsed = {"mmfuse": 0.0, "open_clip": 0.0}
    steps = {"mmfuse": step_ours, "open_clip": step_theirs}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step(batches[i % len(batches)])
            if i >= args.warmup:
                elapsed[name] += time.perf_counter() - start
    images = args.steps * args.batch_size
    rate = {name: images / seconds for name, seconds in elapsed.items()}
    print(
        f"threads={torch.get_num_threads()} batch={args.batch_size} steps={args.steps} "
        f"precision={args.precision}"
    )
    for name in steps:
        print(f"{name:>10}: {rate[name]:8.1f} images/s")
    print(f"ratio mmfuse / open_clip = {rate['mmfuse'] / rate['open_clip']:.3f}")


if __name__ == "__main__":
    main()
