import open_clip
import pytest
import torch

from mmfuse.core.text import OpenClipTextEncoder
from mmfuse.vision import OpenClipVisionEncoder

EMBED = 32
VISION = {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}
TEXT = {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def test_towers_equal_open_clip_clip_with_the_same_weights():
    reference = open_clip.CLIP(EMBED, VISION, TEXT).eval()
    vision = OpenClipVisionEncoder(embed_dim=EMBED, vision_cfg=VISION).eval()
    text = OpenClipTextEncoder(embed_dim=EMBED, text_cfg=TEXT).eval()
    state = reference.state_dict()
    vision.visual.load_state_dict(
        {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    )
    text.text.load_state_dict({k: v for k, v in state.items() if not k.startswith(("visual.", "logit_"))})
    pixel_values = torch.randn(3, 3, 16, 16)
    input_ids = open_clip.get_tokenizer("ViT-B-32", context_length=12)(["a cat", "a dog on a mat", "x"])
    with torch.no_grad():
        torch.testing.assert_close(vision(pixel_values), reference.encode_image(pixel_values))
        torch.testing.assert_close(text(input_ids), reference.encode_text(input_ids))


def test_features_shapes_and_text_mask():
    vision = OpenClipVisionEncoder(embed_dim=EMBED, vision_cfg=VISION)
    pixel_values = torch.randn(2, 3, 16, 16)
    features = vision.forward_features(pixel_values=pixel_values)
    assert features.hidden_states.shape == (2, 4, 32)  # (16 / 8)^2 patches, CLS pooled away
    assert torch.equal(features.pooled, vision(pixel_values=pixel_values))  # fusion reads it too
    text = OpenClipTextEncoder(embed_dim=EMBED, text_cfg=TEXT)
    input_ids = open_clip.get_tokenizer("ViT-B-32", context_length=12)(["a cat"])
    out = text.forward_features(input_ids=input_ids)
    assert torch.equal(out.pooled, text(input_ids=input_ids))
    assert out.hidden_states.shape == (1, 12, 32)
    assert out.attention_mask.tolist() == [[True] * 4 + [False] * 8]  # <sot> a cat <eot>


def test_named_config_and_errors():
    tower = OpenClipVisionEncoder(model_name="ViT-B-32", vision_cfg={"layers": 1, "image_size": 64})
    assert tower.embed_dim == 512 and tower.hidden_size == 768
    with pytest.raises(ValueError, match="unknown open_clip model config"):
        OpenClipVisionEncoder(model_name="no-such-model")
    with pytest.raises(ValueError, match="give model_name"):
        OpenClipTextEncoder(embed_dim=8)
