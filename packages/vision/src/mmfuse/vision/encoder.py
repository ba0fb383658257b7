"""The open_clip image tower behind the :class:`~mmfuse.core.encoders.MediaEncoder` contract.

Architectures are data (:mod:`mmfuse.core.openclip`): a model config name or literal ``vision_cfg``.
"""

from __future__ import annotations

from open_clip.model import _build_vision_tower
from torch import Tensor

from mmfuse.core.encoders import EncoderOutput, MediaEncoder
from mmfuse.core.openclip import pretrained_tower_state, resolve_tower_config


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
        self.embed_dim, cfg = resolve_tower_config(model_name, "vision_cfg", vision_cfg, embed_dim)
        cfg.update(patch_dropout=patch_dropout or cfg.get("patch_dropout", 0.0), output_tokens=True)
        self.visual = _build_vision_tower(self.embed_dim, cfg)
        self.hidden_size = cfg.get("width", 768)
        if pretrained:
            state = pretrained_tower_state(model_name, pretrained, lambda k: k.startswith("visual."))
            self.visual.load_state_dict({k.removeprefix("visual."): v for k, v in state.items()})

    def forward(self, pixel_values: Tensor) -> Tensor:
        pooled, _ = self.visual(pixel_values)
        return pooled

    def forward_features(self, pixel_values: Tensor) -> EncoderOutput:
        pooled, tokens = self.visual(pixel_values)
        return EncoderOutput(hidden_states=tokens, pooled=pooled)


__all__ = ["OpenClipVisionEncoder"]
