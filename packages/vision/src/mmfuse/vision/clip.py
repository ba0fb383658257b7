"""open_clip towers behind the :class:`~mmfuse.core.encoders.MediaEncoder` contract.

Architectures are data, as in open_clip: a tower is built from a model config name
(``model_name="ViT-B-32"``, any JSON under ``open_clip/model_configs``) or from literal
``vision_cfg`` / ``text_cfg`` dicts whose keys are the fields of open_clip's ``CLIPVisionCfg`` /
``CLIPTextCfg``. ``pretrained`` names an open_clip checkpoint tag (e.g. ``"laion2b_s34b_b79k"``);
it is downloaded from the hub, so CI never sets it.
"""

from __future__ import annotations

from typing import Any

import open_clip
from open_clip.model import _build_text_tower, _build_vision_tower
from torch import Tensor

from mmfuse.core.encoders import EncoderOutput, MediaEncoder


def _resolve(
    model_name: str | None, tower_key: str, cfg: dict | None, embed_dim: int | None
) -> tuple[int, dict]:
    if model_name is None:
        if cfg is None or embed_dim is None:
            raise ValueError(f"give model_name, or both embed_dim and {tower_key}")
        return embed_dim, dict(cfg)
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(f"unknown open_clip model config {model_name!r}; see open_clip.list_models()")
    return embed_dim or model_cfg["embed_dim"], {**model_cfg[tower_key], **(cfg or {})}


def _pretrained_state(model_name: str, pretrained: str, keep: Any) -> dict[str, Tensor]:
    model = open_clip.create_model(model_name, pretrained=pretrained)
    return {k: v for k, v in model.state_dict().items() if keep(k)}


class OpenClipVisionEncoder(MediaEncoder):
    """An open_clip vision tower (ViT, ResNet or timm) as a ``MediaEncoder`` over ``pixel_values``.

    ``forward(pixel_values [b, 3, h, w]) -> [b, embed_dim]``; ``forward_features`` returns the
    patch tokens ``[b, s_e, width]`` (ViT only). FLIP patch dropout (Li et al. 2023) is the
    config field ``patch_dropout`` (fraction of patches dropped, training only).

    Args:
        model_name: open_clip model config name; its ``embed_dim``/``vision_cfg`` are defaults.
        embed_dim: output width (overrides the config's).
        vision_cfg: ``CLIPVisionCfg`` fields (override the named config's).
        pretrained: open_clip pretrained tag for ``model_name`` (downloads weights).
        patch_dropout: shortcut for ``vision_cfg["patch_dropout"]``.
    """

    input_names = ("pixel_values",)

    def __init__(
        self,
        model_name: str | None = None,
        embed_dim: int | None = None,
        vision_cfg: dict | None = None,
        pretrained: str | None = None,
        patch_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim, cfg = _resolve(model_name, "vision_cfg", vision_cfg, embed_dim)
        cfg.update(patch_dropout=patch_dropout or cfg.get("patch_dropout", 0.0), output_tokens=True)
        self.visual = _build_vision_tower(self.embed_dim, cfg)
        self.hidden_size = cfg.get("width", 768)
        if pretrained:
            state = _pretrained_state(model_name, pretrained, lambda k: k.startswith("visual."))
            self.visual.load_state_dict({k.removeprefix("visual."): v for k, v in state.items()})

    def forward(self, pixel_values: Tensor) -> Tensor:
        pooled, _ = self.visual(pixel_values)
        return pooled

    def forward_features(self, pixel_values: Tensor) -> EncoderOutput:
        pooled, tokens = self.visual(pixel_values)
        return EncoderOutput(hidden_states=tokens, pooled=pooled)


class OpenClipTextEncoder(MediaEncoder):
    """An open_clip text transformer as a ``MediaEncoder`` over ``input_ids``.

    ``forward(input_ids [b, context_length] int64) -> [b, embed_dim]`` pooled at the EOT token
    (open_clip's ``text_global_pool``); ``forward_features`` returns all token states
    ``[b, context_length, width]`` with the mask of non-pad tokens.

    Args:
        model_name: open_clip model config name; its ``embed_dim``/``text_cfg`` are defaults.
        embed_dim: output width (overrides the config's).
        text_cfg: ``CLIPTextCfg`` fields (override the named config's).
        pretrained: open_clip pretrained tag for ``model_name`` (downloads weights).
    """

    input_names = ("input_ids",)

    def __init__(
        self,
        model_name: str | None = None,
        embed_dim: int | None = None,
        text_cfg: dict | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim, cfg = _resolve(model_name, "text_cfg", text_cfg, embed_dim)
        cfg["output_tokens"] = True
        self.text = _build_text_tower(self.embed_dim, cfg)
        self.hidden_size = cfg.get("width", 512)
        self.pad_id = self.text.pad_id
        if pretrained:
            state = _pretrained_state(
                model_name, pretrained, lambda k: not k.startswith(("visual.", "logit_"))
            )
            self.text.load_state_dict(state, strict=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        pooled, _ = self.text(input_ids)
        return pooled

    def forward_features(self, input_ids: Tensor) -> EncoderOutput:
        pooled, tokens = self.text(input_ids)
        return EncoderOutput(hidden_states=tokens, attention_mask=input_ids != self.pad_id, pooled=pooled)
