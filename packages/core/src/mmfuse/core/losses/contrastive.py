"""Contrastive media-text losses that own their distributed gather.

Each rank scores its *local* embeddings against the *global* batch gathered from every rank with
gradients (open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``). The all-gather's
backward sums the gradient contributions of every rank, and DDP averages parameter gradients over
ranks, so the update equals that of one process holding the whole global batch (tested with two
gloo processes in ``tests/core/test_contrastive_ddp.py``).

Both losses accept ``group_ids``: samples that share an id are positives of each other (e.g. two
images of the digit seven captioned "a handwritten digit seven"). Plain InfoNCE would push such
duplicates apart and stall near ``ln(batch)``; with groups the target distribution of a row is
uniform over its positives (UniCL, Yang et al. 2022, Eq. 2), and SigLIP's label matrix is +1 on
every positive pair. Without ``group_ids`` both reduce exactly to the papers' losses.

Shape letters: b local batch, B global batch (b x world size), e embedding width.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.nn.functional import all_gather


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``[b, ...]`` from every rank into ``[B, ...]``; gradients flow back.

    Without an initialised process group it returns ``x``. All ranks must pass the same ``b``.
    """
    _, world_size = _world()
    if world_size == 1:
        return x
    return torch.cat(all_gather(x), dim=0)


def _gather_ids(ids: Tensor) -> Tensor:
    _, world_size = _world()
    if world_size == 1:
        return ids
    out = [torch.empty_like(ids) for _ in range(world_size)]
    dist.all_gather(out, ids)
    return torch.cat(out)


def _positives(
    local_ids: Tensor | None, global_ids: Tensor | None, b: int, offset: int, n: int, device
) -> Tensor:
    """``[b, B]`` bool: True where row i (local) and column j (global) are a positive pair."""
    if local_ids is None:
        return F.one_hot(torch.arange(b, device=device) + offset, n).bool()
    return local_ids[:, None] == global_ids[None, :]


def clip_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    *,
    group_ids: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, Fig. 3) over the global batch.

    Args:
        image_embeds: ``[b, e]`` L2-normalised media embeddings (image, audio or video).
        text_embeds: ``[b, e]`` L2-normalised text embeddings; row i pairs with image row i.
        logit_scale: the multiplier (``exp`` of the learnable log-temperature, <= 100), scalar.
        group_ids: optional ``[b]`` int64; equal ids are mutual positives (targets uniform over
            them, UniCL). None: each sample is its own only positive.

    Returns:
        Scalar float32: ``(CE(image->text) + CE(text->image)) / 2``, averaged over the local rows;
        its mean over ranks is the global-batch loss.
    """
    rank, _ = _world()
    b = image_embeds.shape[0]
    all_images, all_texts = gather_with_grad(image_embeds), gather_with_grad(text_embeds)
    all_ids = None if group_ids is None else _gather_ids(group_ids)
    logits_per_image = logit_scale * image_embeds @ all_texts.T  # [b, B]
    logits_per_text = logit_scale * text_embeds @ all_images.T  # [b, B]
    positives = _positives(group_ids, all_ids, b, rank * b, all_texts.shape[0], image_embeds.device)
    targets = positives.float() / positives.sum(-1, keepdim=True)  # [b, B], rows sum to 1
    loss_i2t = -(targets * logits_per_image.float().log_softmax(-1)).sum(-1).mean()
    loss_t2i = -(targets * logits_per_text.float().log_softmax(-1)).sum(-1).mean()
    return (loss_i2t + loss_t2i) / 2


def siglip_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float,
    *,
    group_ids: Tensor | None = None,
) -> Tensor:
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023, Algorithm 1) over the global batch.

    ``loss = -1/B * sum_ij log sigmoid(z_ij * (logit_scale * x_i . y_j + logit_bias))`` with
    ``z_ij = +1`` on positive pairs and ``-1`` elsewhere. Each rank scores its local images
    against all texts, so every pair is counted once over the ranks.

    Args:
        image_embeds: ``[b, e]`` L2-normalised media embeddings.
        text_embeds: ``[b, e]`` L2-normalised text embeddings.
        logit_scale: the multiplier (paper init 10), scalar.
        logit_bias: the bias (paper init -10), scalar.
        group_ids: optional ``[b]`` int64; equal ids are positive pairs.

    Returns:
        Scalar float32, normalised by the local batch size ``b`` (its mean over ranks is the
        paper's loss normalised by ``B``).
    """
    rank, _ = _world()
    b = image_embeds.shape[0]
    all_texts = gather_with_grad(text_embeds)
    all_ids = None if group_ids is None else _gather_ids(group_ids)
    logits = (logit_scale * image_embeds @ all_texts.T + logit_bias).float()  # [b, B]
    positives = _positives(group_ids, all_ids, b, rank * b, all_texts.shape[0], image_embeds.device)
    signs = positives.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / b
