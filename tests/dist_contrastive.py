"""Worker processes of the two-process contrastive-gradient test (spawned: must be importable)."""

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmfuse.core.losses import clip_loss, siglip_loss

WORLD = 2
B_LOCAL = 4


def _model_and_data():
    torch.manual_seed(0)
    image_tower, text_tower = torch.nn.Linear(6, 5), torch.nn.Linear(7, 5)
    images, texts = torch.randn(WORLD * B_LOCAL, 6), torch.randn(WORLD * B_LOCAL, 7)
    group_ids = torch.tensor([0, 1, 2, 0, 3, 4, 1, 5])  # duplicates across ranks too
    return image_tower, text_tower, images, texts, group_ids


def _loss(name, image_tower, text_tower, images, texts, ids):
    x, y = F.normalize(image_tower(images), dim=-1), F.normalize(text_tower(texts), dim=-1)
    if name == "clip":
        return clip_loss(x, y, 10.0, group_ids=ids)
    return siglip_loss(x, y, 10.0, -5.0, group_ids=ids)


def _grads(*towers):
    return torch.cat([p.grad.flatten() for t in towers for p in t.parameters()])


def _worker(rank, port, name, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    image_tower, text_tower, images, texts, ids = _model_and_data()
    part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    _loss(name, image_tower, text_tower, images[part], texts[part], ids[part]).backward()
    grads = _grads(image_tower, text_tower)
    dist.all_reduce(grads)  # what DDP does: average of the ranks' gradients
    out[rank] = grads / WORLD
    dist.destroy_process_group()
