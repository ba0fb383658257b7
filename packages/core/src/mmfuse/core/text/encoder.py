"""The open_clip text tower behind the :class:`~mmfuse.core.encoders.MediaEncoder` contract.

Architectures are data (:mod:`mmfuse.core.openclip`): a model config name or literal ``text_cfg``.
"""

from __future__ import annotations

from open_clip.model import _build_text_tower
from torch import Tensor

from mmfuse.core.encoders import EncoderOutput, MediaEncoder
from mmfuse.core.openclip import pretrained_tower_state, resolve_tower_config


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
        self.embed_dim, cfg = resolve_tower_config(model_name, "text_cfg", text_cfg, embed_dim)
        cfg["output_tokens"] = True
        self.text = _build_text_tower(self.embed_dim, cfg)
        self.hidden_size = cfg.get("width", 512)
        self.pad_id = self.text.pad_id
        if pretrained:
            state = pretrained_tower_state(
                model_name, pretrained, lambda k: not k.startswith(("visual.", "logit_"))
            )
            self.text.load_state_dict(state, strict=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        pooled, _ = self.text(input_ids)
        return pooled

    def forward_features(self, input_ids: Tensor) -> EncoderOutput:
        pooled, tokens = self.text(input_ids)
        return EncoderOutput(hidden_states=tokens, attention_mask=input_ids != self.pad_id, pooled=pooled)


__all__ = ["OpenClipTextEncoder"]
