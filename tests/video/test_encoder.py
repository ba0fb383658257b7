import pytest
import torch
from torch import nn

from mmfuse.core.checkpoint import load_media_encoder_state
from mmfuse.core.encoders import MediaEncoder
from mmfuse.video import TemporalTransformer, TubePatchDropout, VideoEncoder
from mmfuse.video.temporal import TemporalSelfAttention, frame_differences
from mmfuse.vision import OpenClipVisionEncoder

VISION_CFG = {"image_size": 16, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16}  # 16 patches


def frame_tower() -> OpenClipVisionEncoder:
    return OpenClipVisionEncoder(embed_dim=24, vision_cfg=VISION_CFG)


def clips(lengths: list[int], t: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``[b, t, 3, 16, 16]`` clips and the ``[b, t]`` mask of ``lengths`` real frames."""
    pixel_values_videos = torch.randn(
        len(lengths), t, 3, 16, 16, generator=torch.Generator().manual_seed(seed)
    )
    return pixel_values_videos, torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("tokens,s,d", [("frame", 1, 24), ("patch", 16, 32)])
def test_shapes(tokens, s, d):
    encoder = VideoEncoder(
        frame_tower(), TemporalTransformer(d, num_layers=1, num_heads=2, max_frames=6), tokens, 20
    )
    x, mask = clips([6, 2, 4])
    out = encoder.forward_features(x, mask)
    assert out.hidden_states.shape == (3, 6 * s, d)
    assert out.attention_mask.tolist()[1] == [True] * (2 * s) + [False] * (4 * s)
    assert encoder(x, mask).shape == (3, 20)
    torch.testing.assert_close(out.pooled, encoder(x, mask))  # fusion reads the aligned embedding too
    assert (encoder.hidden_size, encoder.embed_dim) == (d, 20)
    assert VideoEncoder(frame_tower(), tokens=tokens).embed_dim == d  # no projection


class CountingTower(MediaEncoder):
    """Records how many images it encodes; embeds an image as its per-channel mean."""

    input_names = ("pixel_values",)
    hidden_size = embed_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.seen.append(pixel_values.shape[0])
        return pixel_values.mean(dim=(2, 3))


def test_only_real_frames_are_encoded_and_mean_pool_is_their_mean():
    tower = CountingTower()
    x, mask = clips([6, 2, 4])
    embeds = VideoEncoder(tower)(x, mask)
    assert tower.seen == [12]
    torch.testing.assert_close(embeds[1], x[1, :2].mean(dim=(0, 2, 3)))


@pytest.mark.parametrize("tokens,differences", [("frame", False), ("patch", False), ("patch", True)])
def test_padded_frames_change_nothing(tokens, differences):
    width = 24 if tokens == "frame" else 32
    temporal = TemporalTransformer(width, 2, 2, max_frames=8, frame_differences=differences)
    encoder = VideoEncoder(frame_tower(), temporal, tokens, 20).eval()
    x, mask = clips([4, 4], t=4)
    padded = torch.cat([x, 100 * torch.randn(2, 4, 3, 16, 16)], dim=1)  # 4 garbage padded frames
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(encoder(padded, padded_mask), encoder(x, mask))


def test_mean_pool_is_blind_to_frame_order_and_the_temporal_model_is_not():
    torch.manual_seed(0)
    x, mask = clips([5, 5], t=5)
    reverse = x.flip(1)
    mean_pool = VideoEncoder(frame_tower()).eval()
    torch.testing.assert_close(mean_pool(reverse, mask), mean_pool(x, mask))
    temporal = VideoEncoder(frame_tower(), TemporalTransformer(24, 1, 2, max_frames=5)).eval()
    # At initialisation the order effect is small (see mmfuse.video.temporal) but far above float noise.
    assert (temporal(reverse, mask) - temporal(x, mask)).abs().max() > 1e-5


def test_frame_differences_only_between_consecutive_real_frames():
    x = torch.tensor([1.0, 3.0, 6.0, 10.0])[None, :, None]  # [1, 4, 1]
    mask = torch.tensor([[True, True, True, False]])
    assert frame_differences(x, mask).flatten().tolist() == [0.0, 2.0, 3.0, 0.0]
    mask = torch.tensor([[True, False, True, True]])
    assert frame_differences(x, mask).flatten().tolist() == [0.0, 0.0, 0.0, 4.0]


def test_attention_over_one_real_frame_returns_its_value():
    attn = TemporalSelfAttention(8, num_heads=2)
    x = torch.randn(1, 3, 8)
    out = attn(x, torch.tensor([[True, False, False]]))
    v = attn.qkv(attn.norm(x))[..., 16:]  # [q | k | v] columns of the fused projection
    torch.testing.assert_close(out, attn.out(v[:, :1]).expand(1, 3, 8))  # softmax over one key is 1


def test_tube_dropout_keeps_the_same_patches_in_every_frame_of_a_clip():
    torch.manual_seed(0)
    dropout = TubePatchDropout(0.5).train()
    x = torch.arange(17.0)[None, :, None].expand(7, 17, 2)  # token j carries the value j; token 0 is CLS
    with dropout.tubes(torch.tensor([3, 4])):
        kept = dropout(x)[:, :, 0]
    assert kept.shape == (7, 9) and (kept[:, 0] == 0).all()  # CLS + int(16 * 0.5) patches
    assert all((row == kept[0]).all() for row in kept[:3]) and all((row == kept[3]).all() for row in kept[3:])
    assert not (kept[0] == kept[3]).all()
    assert (kept[:, 1:].diff(dim=1) > 0).all()  # spatial order kept
    plain = dropout(x)[:, :, 0]  # outside tubes: FLIP, independent per image
    assert len({tuple(row.tolist()) for row in plain}) > 1
    assert dropout.eval()(x).shape == (7, 17, 2)
    with pytest.raises(ValueError, match="do not add up"), dropout.train().tubes(torch.tensor([3, 3])):
        dropout(x)


def test_tube_masking_in_the_video_encoder():
    encoder = VideoEncoder(frame_tower(), tokens="patch", tube_mask_ratio=0.75)
    x, mask = clips([6, 3])
    assert encoder.train().forward_features(x, mask).hidden_states.shape == (2, 6 * 4, 32)
    assert encoder.eval().forward_features(x, mask).hidden_states.shape == (2, 6 * 16, 32)
    with pytest.raises(ValueError, match="open_clip ViT"):
        VideoEncoder(CountingTower(), tube_mask_ratio=0.5)


def test_frame_tower_weights_load_from_an_alignment_checkpoint(tmp_path):
    image_tower, text_layer = frame_tower(), nn.Linear(2, 2)
    state = {f"media_encoder.{k}": v for k, v in image_tower.state_dict().items()}
    state |= {f"text_encoder.{k}": v for k, v in text_layer.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {"lr": 1e-3}}, tmp_path / "last.ckpt")
    encoder = VideoEncoder(frame_tower(), frame_checkpoint=tmp_path / "last.ckpt")
    for name, tensor in image_tower.state_dict().items():
        torch.testing.assert_close(encoder.frame_encoder.state_dict()[name], tensor)
    with pytest.raises(KeyError, match="no tensor under 'audio_encoder.'"):
        load_media_encoder_state(tmp_path / "last.ckpt", prefix="audio_encoder.")


def test_a_frozen_frame_tower_gets_no_gradient_and_the_temporal_model_does():
    encoder = VideoEncoder(frame_tower(), TemporalTransformer(32), tokens="patch", freeze_frame_encoder=True)
    x, mask = clips([6, 3])
    encoder(x, mask).square().sum().backward()
    assert all(p.grad is None for p in encoder.frame_encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.temporal.parameters())


def test_temporal_width_must_match_the_tokens():
    with pytest.raises(ValueError, match="temporal width 32 != frame token width 24"):
        VideoEncoder(frame_tower(), TemporalTransformer(32), tokens="frame")
    with pytest.raises(ValueError, match="exceed the 4 temporal position embeddings"):
        TemporalTransformer(8, max_frames=4)(torch.zeros(1, 5, 8), torch.ones(1, 5, dtype=torch.bool))
