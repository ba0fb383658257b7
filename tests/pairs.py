"""Preference pairs for the tests: colour-square pairs, embedded-data pairs of every modality, a tiny
three-tower MultimodalLM, and a config for ``mmfuse fit`` of the pairwise stages."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import torch
import yaml
from shards import COLORS, png_bytes
from tiny_lm import LM, TOKENIZER

from mmfuse.audio import AudioEncoder, AudioTransform
from mmfuse.core.model import MultimodalLM
from mmfuse.training.data.preference import write_preference_shard
from mmfuse.video import TemporalTransformer, UniformSampler, VideoEncoder, VideoTransform
from mmfuse.vision import ImageTransform, OpenClipVisionEncoder

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What colour is it?"


def colour_record(colour: str, wrong: str) -> dict:
    """A pair: an image prompt, the colour chosen, another colour rejected."""
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": colour}],
            "rejected": [{"role": "assistant", "content": wrong}], "kind": "image/colour"}  # fmt: skip


def colour_pairs(path: Path, n: int, offset: int = 0) -> Path:
    """``n`` colour-square pairs (16 px PNG members) in one gzip tar shard at ``path``."""
    names = list(COLORS)
    samples = []
    for i in range(offset, offset + n):
        colour, wrong = names[i % len(names)], names[(i + 1 + i // len(names)) % len(names)]
        rgb = tuple(max(0, c - 5 * (i // len(names))) for c in COLORS[colour])  # every square differs
        samples.append(
            {
                "__key__": f"colour-{i:04d}",
                "json": colour_record(colour, wrong),
                "image_0.png": png_bytes(rgb),
            }
        )
    write_preference_shard(path, samples)
    return path


def embedded_pairs(path: Path, per_modality: int = 2) -> Path:
    """Pairs from the embedded instruction set: ``per_modality`` per media modality, rejected = another
    sample's answer of the same modality (the media bytes are the embedded ones)."""
    found: dict[str, list[tuple[str, dict, dict]]] = {"image": [], "audio": [], "video": []}
    with tarfile.open(REPO / "data/instructions/val-000000.tar.gz") as tar:
        members: dict[str, dict[str, bytes]] = {}
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(member).read()
    for key, sample in sorted(members.items()):
        media = [ext for ext in sample if ext != "json"]
        modality = media[0].split("_")[0] if media else None
        if modality in found and len(found[modality]) < per_modality + 1:
            found[modality].append((key, json.loads(sample["json"]), sample))
    samples = []
    for items in found.values():  # rejected: the next item's answer
        for (key, record, sample), (_, other, _) in zip(items[:-1], items[1:], strict=True):
            pair = {"prompt": record["messages"][:1], "chosen": record["messages"][1:],
                    "rejected": other["messages"][1:], "kind": record["kinds"][0]}  # fmt: skip
            samples.append({"__key__": key, "json": pair, **{k: v for k, v in sample.items() if k != "json"}})
    write_preference_shard(path, samples)
    return path


def cast_media(examples: list, dtype: torch.dtype) -> list:
    """The examples with their floating media tensors in ``dtype`` (the tests' fp64 models)."""
    for e in examples:
        e.media = [
            (m, {k: v.to(dtype) if v.is_floating_point() else v for k, v in ts.items()}) for m, ts in e.media
        ]
    return examples


def transforms() -> dict:
    """The embedded set's media transforms (sft/embedded.yaml's)."""
    return {
        "image": ImageTransform(image_size=32),
        "audio": AudioTransform(sample_rate=8000, clip_seconds=2.0, n_fft=200, hop_length=160, n_mels=40),
        "video": VideoTransform(sampler=UniformSampler(8), size=32),
    }


def three_tower_model(seed: int = 0, dtype: torch.dtype = torch.float64) -> MultimodalLM:
    """A tiny MultimodalLM reading the embedded set's image, audio and video, gates open."""
    torch.manual_seed(seed)
    vit = dict(image_size=32, patch_size=8, width=16, layers=1, head_width=8)
    audio = dict(
        embed_dim=16, n_mels=40, hidden_size=32, num_layers=1, num_heads=2, ffn_dim=64, max_positions=50
    )
    temporal = TemporalTransformer(16, num_layers=1, num_heads=2, max_frames=8)
    towers = {
        "image": OpenClipVisionEncoder(embed_dim=16, vision_cfg=vit),
        "audio": AudioEncoder(**audio),
        "video": VideoEncoder(
            OpenClipVisionEncoder(embed_dim=16, vision_cfg=vit), temporal, tokens="patch", embed_dim=16
        ),
    }
    model = MultimodalLM(LM, TOKENIZER, towers=towers, num_heads=2, head_dim=8)
    for layer in model.fused._fused_layers:
        layer.gated_xattn.attn_gate.data.fill_(0.5)
        layer.gated_xattn.ff_gate.data.fill_(0.5)
    return model.to(dtype).eval()


def fit_config(stage: str, root: Path, train: str, val: str, **stage_args) -> Path:
    """A tiny ``mmfuse fit`` config of ``stage`` (class path) on colour pairs; returns its path."""
    vit = dict(image_size=16, patch_size=8, width=16, layers=1, head_width=8)
    tower = {
        "class_path": "mmfuse.vision.OpenClipVisionEncoder",
        "init_args": {"embed_dim": 16, "vision_cfg": vit},
    }
    model = {"class_path": "mmfuse.core.model.MultimodalLM",
             "init_args": {"lm": LM, "tokenizer": TOKENIZER, "towers": {"image": tower}, "num_heads": 2,
                           "head_dim": 8}}  # fmt: skip
    image = {"class_path": "mmfuse.vision.ImageTransform", "init_args": {"image_size": 16}}
    config = {
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(root), "max_steps": 4, "max_epochs": 1, "accelerator": "cpu",
                    "devices": 1, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False},
        "checkpoint": {"monitor": None},
        "model": {"class_path": stage,
                  "init_args": {"model": model, "lr": 1e-3, "warmup_steps": 1, **stage_args}},
        "data": {"class_path": "mmfuse.training.data.PreferenceDataModule",
                 "init_args": {"train_shards": train, "val_shards": val, "max_length": 48, "batch_size": 2,
                               "accumulate": 2, "val_batch_size": 8, "num_workers": 0, "shuffle_buffer": 8,
                               "transforms": {"image": image}}},
    }  # fmt: skip
    path = root.parent / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


__all__ = [
    "cast_media",
    "colour_pairs",
    "colour_record",
    "embedded_pairs",
    "fit_config",
    "three_tower_model",
    "transforms",
]
