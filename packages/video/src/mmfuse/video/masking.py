"""Tube masking: FLIP patch dropout in which every frame of a clip keeps the same patches.

Dropping a random half of the patches before the image tower's blocks halves their cost (FLIP,
Li et al. 2023, Sec. 3). Drawing the dropped patches independently per frame would let a video
model fill a hole in one frame from the same place in its neighbours; a *tube* (the same spatial
positions in every frame, VideoMAE's tube masking, Tong et al. 2022, Sec. 3.3) removes the same
patch everywhere in time, so nothing leaks and the temporal model compares like with like.

Shape letters: n frames (all clips together), s patches, d width, c clips.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class TubePatchDropout(nn.Module):
    """Drop-in for open_clip's ``PatchDropout`` (a ViT's ``visual.patch_dropout`` slot).

    ``forward(x [n, 1 + s, d]) -> [n, 1 + s_keep, d]``: the class token (first) is kept, then
    ``s_keep = max(1, int(s * (1 - prob)))`` patches (open_clip's count), in their spatial order.
    Identity in eval mode. Inside ``with module.tubes(frames_per_clip)``, the frames of each clip
    (consecutive rows of ``x``) keep the same patch positions; outside it, every row draws its own
    (plain FLIP, e.g. when the tower encodes images).

    Args:
        prob: fraction of patches dropped, in ``[0, 1)``.

    Raises:
        ValueError: if ``prob`` is outside ``[0, 1)``.
    """

    def __init__(self, prob: float) -> None:
        super().__init__()
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"tube mask ratio must be in [0, 1), got {prob}")
        self.prob = prob
        self._frames_per_clip: Tensor | None = None

    @contextlib.contextmanager
    def tubes(self, frames_per_clip: Tensor) -> Iterator[None]:
        """Group the rows of the next forward calls into clips of ``frames_per_clip`` ``[c]`` int rows."""
        self._frames_per_clip = frames_per_clip
        try:
            yield
        finally:
            self._frames_per_clip = None

    def forward(self, x: Tensor) -> Tensor:
        """``[n, 1 + s, d] -> [n, 1 + s_keep, d]`` in training, unchanged in eval.

        Raises:
            ValueError: inside :meth:`tubes`, if the clip sizes do not add up to ``n``.
        """
        if not self.training or self.prob == 0.0:
            return x
        cls_token, patches = x[:, :1], x[:, 1:]
        n, s, d = patches.shape
        groups = (
            self._frames_per_clip if self._frames_per_clip is not None else torch.ones(n, dtype=torch.long)
        )
        groups = groups.to(x.device)
        if int(groups.sum()) != n:
            raise ValueError(f"clips of {groups.tolist()} frames do not add up to the {n} frames encoded")
        num_keep = max(1, int(s * (1 - self.prob)))
        keep = torch.rand(len(groups), s, device=x.device).topk(num_keep, dim=1).indices.sort(dim=1).values
        keep = keep.repeat_interleave(groups, dim=0)  # [c, s_keep] -> [n, s_keep]
        kept = patches.gather(1, keep[:, :, None].expand(n, num_keep, d))  # [n, s_keep, d]
        return torch.cat([cls_token, kept], dim=1)


__all__ = ["TubePatchDropout"]
