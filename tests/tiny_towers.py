"""The default configs' towers (training/configs/towers/*.yaml) shrunk to tiny sizes, for CLI tests."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 16, "layers": 1, "head_width": 8},
}


def tiny_model(stage_args: dict) -> None:
    """Replace ``stage_args["model"]`` (a ``MultimodalLM`` config, inline or a ``../models/*.yaml`` path
    relative to a stage config) with a tiny inline copy, in place."""
    model = stage_args["model"]
    if isinstance(model, str):
        model = yaml.safe_load((REPO / "training/configs/models" / Path(model).name).read_text())
    shrink(model["init_args"])
    stage_args["model"] = model


def shrink(model: dict) -> None:
    """Make a ``MultimodalLM``'s ``init_args`` (``lm``, ``towers`` naming the tower files) tiny, in place."""
    model["lm"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    towers = {
        m: yaml.safe_load((REPO / "training/configs/towers" / f"{m}.yaml").read_text())
        for m in model["towers"]
    }
    towers["image"]["init_args"] = TINY_VIT
    towers["video"]["init_args"]["frame_encoder"] = towers["image"]  # the video tower's frames: image.yaml
    towers["video"]["init_args"]["temporal"]["init_args"].update(width=16, num_layers=1, num_heads=2)
    towers["audio"]["init_args"].update(hidden_size=32, num_layers=1, num_heads=2, ffn_dim=64)
    model["towers"] = towers
