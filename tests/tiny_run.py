"""A run directory as ``mmfuse fit`` leaves it, for a tiny MultimodalLM: checkpoint, config, metrics."""

from pathlib import Path

import torch
import yaml
from tiny_lm import tiny_init_args

from mmfuse.core.model import MultimodalLM

REPO = Path(__file__).resolve().parents[1]
IMAGE_TRANSFORM = {"class_path": "mmfuse.vision.ImageTransform", "init_args": {"image_size": 8}}


def write_run(root: Path, model: MultimodalLM, init_args: dict | None = None, step: int = 7, **extra) -> Path:
    """``root/checkpoints/last.ckpt`` with ``model``'s weights, ``root/lightning_logs/version_0/config.yaml``
    (an SFT stage on the embedded shards) and a ``metrics.csv``; returns the checkpoint."""
    config = {
        "model": {
            "class_path": "mmfuse.training.stages.sft.InstructionTuning",
            "init_args": {"model": {"class_path": "mmfuse.core.model.MultimodalLM",
                                    "init_args": init_args or tiny_init_args()}, "init_from": None},
        },
        "data": {
            "class_path": "mmfuse.training.data.ChatDataModule",
            "init_args": {"train_shards": str(REPO / "data/instructions/train-000000.tar.gz"),
                          "val_shards": str(REPO / "data/instructions/val-000000.tar.gz"),
                          "transforms": {"image": IMAGE_TRANSFORM}},
        },
        "ema_decay": None,
    }  # fmt: skip
    logs = root / "lightning_logs" / "version_0"
    logs.mkdir(parents=True)
    (logs / "config.yaml").write_text(yaml.safe_dump(config))
    (logs / "metrics.csv").write_text(
        "epoch,step,train/loss,val/exact_match/image/digit,val/perplexity\n0,6,2.5,,\n0,7,,0.375,11.5\n"
    )
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    checkpoint = root / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "global_step": step, "epoch": 0, "pytorch-lightning_version": "2.6.6",
                **extra}, checkpoint)  # fmt: skip
    return checkpoint
