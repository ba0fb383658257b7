"""open_clip architectures as data, shared by the open_clip towers (image: mmfuse.vision, text: here).

A tower is built from a model config name (``model_name="ViT-B-32"``, any JSON under
``open_clip/model_configs``) or from literal ``vision_cfg`` / ``text_cfg`` dicts whose keys are the
fields of open_clip's ``CLIPVisionCfg`` / ``CLIPTextCfg``. ``pretrained`` names an open_clip checkpoint
tag (e.g. ``"laion2b_s34b_b79k"``); it is downloaded from the hub, so CI never sets it.
"""

from __future__ import annotations

from typing import Any

import open_clip
from torch import Tensor


def resolve_tower_config(
    model_name: str | None, tower_key: str, cfg: dict | None, embed_dim: int | None
) -> tuple[int, dict]:
    """``(embed_dim, tower config)`` from an open_clip model config name and/or literal fields.

    Raises:
        ValueError: neither a name nor both ``embed_dim`` and ``cfg``, or an unknown name.
    """
    if model_name is None:
        if cfg is None or embed_dim is None:
            raise ValueError(f"give model_name, or both embed_dim and {tower_key}")
        return embed_dim, dict(cfg)
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip model config {model_name!r}; see open_clip.list_models()")
    return embed_dim or model_cfg["embed_dim"], {**model_cfg[tower_key], **(cfg or {})}


def pretrained_tower_state(model_name: str, pretrained: str, keep: Any) -> dict[str, Tensor]:
    """The tensors of an open_clip pretrained model whose names ``keep(name)`` accepts (downloads)."""
    model = open_clip.create_model(model_name, pretrained=pretrained)
    return {k: v for k, v in model.state_dict().items() if keep(k)}


__all__ = ["pretrained_tower_state", "resolve_tower_config"]
