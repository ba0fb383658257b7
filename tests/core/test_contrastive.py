import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from mmfuse.core.losses import clip_loss, siglip_loss


def test_clip_loss_hand_computed_two_pairs():
    # Orthogonal unit embeddings, matched pairs: logits = scale * I, so each row's CE is
    # -log(e^s / (e^s + e^0)) = log(1 + e^-s), identical in both directions.
    x = torch.eye(2)
    s = 2.0
    assert clip_loss(x, x, s).item() == pytest.approx(math.log(1 + math.exp(-s)), abs=1e-6)


def test_clip_loss_matches_open_clip():
    torch.manual_seed(0)
    x, y = F.normalize(torch.randn(8, 16), dim=-1), F.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(14.3)
    torch.testing.assert_close(clip_loss(x, y, scale), ClipLoss()(x, y, scale))


def test_siglip_loss_hand_computed_and_matches_open_clip():
    x = torch.eye(2)
    s, b = 10.0, -10.0
    # positives: logit s + b = 0 -> -log sigmoid(0) = log 2; negatives: logit b -> -log sigmoid(10)
    expected = (2 * math.log(2) + 2 * math.log(1 + math.exp(b))) / 2
    assert siglip_loss(x, x, s, b).item() == pytest.approx(expected, abs=1e-6)
    torch.manual_seed(0)
    x, y = F.normalize(torch.randn(8, 16), dim=-1), F.normalize(torch.randn(8, 16), dim=-1)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    torch.testing.assert_close(siglip_loss(x, y, scale, bias), SigLipLoss()(x, y, scale, bias))


def test_group_ids_make_duplicate_captions_mutual_positives():
    # Rows 0 and 1 share a caption; with groups their target is uniform over both columns.
    torch.manual_seed(0)
    x, y = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(3, 4), dim=-1)
    ids = torch.tensor([5, 5, 9])
    logits = 3.0 * x @ y.T
    targets = torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    expected = (
        -(targets * logits.log_softmax(-1)).sum(-1).mean()
        - (targets * logits.T.log_softmax(-1)).sum(-1).mean()
    ) / 2
    torch.testing.assert_close(clip_loss(x, y, 3.0, group_ids=ids), expected)
    # without duplicates the groups change nothing
    torch.testing.assert_close(clip_loss(x, y, 3.0, group_ids=torch.arange(3)), clip_loss(x, y, 3.0))
    signs = torch.tensor([[1.0, 1, -1], [1, 1, -1], [-1, -1, 1]])
    expected_sig = -F.logsigmoid(signs * (3.0 * x @ y.T - 1.0)).sum() / 3
    torch.testing.assert_close(siglip_loss(x, y, 3.0, -1.0, group_ids=ids), expected_sig)
