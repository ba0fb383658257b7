"""The video tower: an image tower applied to every real frame, then a temporal model.

Shape letters: b clips, t frames (padded), n real frames of the batch, s tokens per frame
(1 for frame tokens, the patches for patch tokens), d width, e ``embed_dim``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from mmfuse.core.checkpoint import load_media_encoder_state
from mmfuse.core.encoders import EncoderOutput, MediaEncoder, masked_mean_pool
from mmfuse.video.masking import TubePatchDropout
from mmfuse.video.temporal import TemporalTransformer


class VideoEncoder(MediaEncoder):
    """Frame tower + temporal model behind the ``MediaEncoder`` contract.

    Reads ``pixel_values_videos`` ``[b, t, c, h, w]`` and ``frame_mask`` ``[b, t]`` bool (from
    :class:`~mmfuse.video.transform.VideoTransform`). Only real frames go through the frame
    tower (as one batch of ``n`` images); padded frames cost nothing and are masked everywhere.

    Per frame the tower gives either one token, its pooled embedding (``tokens="frame"``: the
    frame embedding CLIP4Clip and ViViT's factorised encoder pool over time), or its patch tokens
    (``tokens="patch"``: ``forward_features``, for fusion with a language model). ``temporal``
    mixes each token position across time (see :mod:`mmfuse.video.temporal`); without it the
    clip embedding is the mean over frames, the bag-of-frames baseline, blind to frame order.

    * ``forward_features`` -> ``hidden_states`` ``[b, t * s, d]`` (frame-major: frame 0's tokens
      first) and ``attention_mask`` ``[b, t * s]`` bool (False on padded frames);
    * ``forward`` -> ``[b, e]``: the masked mean of those tokens, projected when ``embed_dim`` is
      given (not L2-normalised).

    Args:
        frame_encoder: an image ``MediaEncoder`` with one input (e.g.
            :class:`mmfuse.vision.OpenClipVisionEncoder`).
        temporal: the temporal model; its ``width`` must equal ``d``. None: mean over frames.
        tokens: ``"frame"`` (``d`` = the frame tower's ``embed_dim``) or ``"patch"`` (``d`` = its
            ``hidden_size``).
        embed_dim: width of the pooled embedding; None keeps ``d`` with no projection (so a
            frame tower aligned with text stays aligned).
        tube_mask_ratio: fraction of patches dropped in training, the same ones in every frame
            of a clip (:class:`~mmfuse.video.masking.TubePatchDropout`); needs an open_clip ViT,
            whose ``visual.patch_dropout`` slot it takes.
        frame_checkpoint: a Lightning checkpoint of an image-text alignment whose
            ``media_encoder.*`` weights are loaded into ``frame_encoder`` (strictly).
        freeze_frame_encoder: keep the frame tower's weights fixed (``requires_grad=False``), as
            open_clip's ``--lock-image`` and LiT (Zhai et al. 2022): only the temporal model and
            the projection learn, and no backward runs through the frames.

    Raises:
        ValueError: for a frame tower with other than one input, a temporal width that is not
            ``d``, an unknown ``tokens``, or tube masking without an open_clip ViT.
    """

    input_names = ("pixel_values_videos", "frame_mask")

    def __init__(
        self,
        frame_encoder: MediaEncoder,
        temporal: TemporalTransformer | None = None,
        tokens: Literal["frame", "patch"] = "frame",
        embed_dim: int | None = None,
        tube_mask_ratio: float = 0.0,
        frame_checkpoint: str | Path | None = None,
        freeze_frame_encoder: bool = False,
    ) -> None:
        super().__init__()
        if len(frame_encoder.input_names) != 1:
            raise ValueError(f"the frame encoder must read one input, not {frame_encoder.input_names}")
        if tokens not in ("frame", "patch"):
            raise ValueError(f"tokens must be 'frame' or 'patch', got {tokens!r}")
        if frame_checkpoint is not None:
            frame_encoder.load_state_dict(load_media_encoder_state(frame_checkpoint))
        frame_encoder.requires_grad_(not freeze_frame_encoder)
        self.frame_encoder = frame_encoder
        self.tokens = tokens
        self.hidden_size = frame_encoder.embed_dim if tokens == "frame" else frame_encoder.hidden_size
        if temporal is not None and temporal.width != self.hidden_size:
            raise ValueError(f"temporal width {temporal.width} != {tokens} token width {self.hidden_size}")
        self.temporal = temporal
        self.embed_dim = embed_dim or self.hidden_size
        self.proj = nn.Identity() if embed_dim is None else nn.Linear(self.hidden_size, embed_dim, bias=False)
        if tube_mask_ratio > 0:
            visual = getattr(frame_encoder, "visual", None)
            if not hasattr(visual, "patch_dropout"):
                raise ValueError(
                    "tube masking needs an open_clip ViT frame encoder (a visual.patch_dropout slot)"
                )
            visual.patch_dropout = TubePatchDropout(tube_mask_ratio)

    def _tubes(self, frames_per_clip: Tensor) -> contextlib.AbstractContextManager:
        dropout = getattr(getattr(self.frame_encoder, "visual", None), "patch_dropout", None)
        return (
            dropout.tubes(frames_per_clip)
            if isinstance(dropout, TubePatchDropout)
            else contextlib.nullcontext()
        )

    def _frame_tokens(self, frames: Tensor) -> Tensor:
        """``[n, c, h, w]`` real frames -> ``[n, s, d]`` tokens."""
        inputs = {self.frame_encoder.input_names[0]: frames}
        if self.tokens == "frame":
            return self.frame_encoder(**inputs)[:, None, :]  # [n, e_frame] -> [n, 1, d]
        return self.frame_encoder.forward_features(**inputs).hidden_states

    def forward_features(self, pixel_values_videos: Tensor, frame_mask: Tensor) -> EncoderOutput:
        """``[b, t, c, h, w]`` and ``[b, t]`` bool -> ``[b, t * s, d]``, ``[b, t * s]`` bool and the
        clip embedding ``pooled`` ``[b, e]`` (projected mean of the real tokens)."""
        b, t = frame_mask.shape
        with self._tubes(frame_mask.sum(dim=1)):
            tokens = self._frame_tokens(pixel_values_videos[frame_mask])  # [n, s, d], clip-major order
        s, d = tokens.shape[1:]
        grid = tokens.new_zeros(b, t, s, d)
        grid[frame_mask] = tokens  # [n, s, d] -> [b, t, s, d], zeros on padded frames
        if self.temporal is not None:
            sequences = grid.transpose(1, 2).reshape(b * s, t, d)  # [b, t, s, d] -> [b * s, t, d]
            mixed = self.temporal(sequences, frame_mask.repeat_interleave(s, dim=0))  # mask [b * s, t]
            grid = mixed.view(b, s, t, d).transpose(1, 2)  # [b * s, t, d] -> [b, t, s, d]
        attention_mask = frame_mask[:, :, None].expand(b, t, s).reshape(b, t * s)
        hidden_states = grid.reshape(b, t * s, d)
        pooled = self.proj(masked_mean_pool(hidden_states, attention_mask))
        return EncoderOutput(hidden_states, attention_mask, pooled)

    def forward(self, pixel_values_videos: Tensor, frame_mask: Tensor) -> Tensor:
        """``[b, t, c, h, w]`` and ``[b, t]`` bool -> ``[b, e]`` clip embeddings (not normalised)."""
        return self.forward_features(pixel_values_videos, frame_mask).pooled


__all__ = ["VideoEncoder"]
