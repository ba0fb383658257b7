import io

import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from mmfuse.vision import ImageTransform, RandomZoomOut, decode_image


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_eval_transform_shape_and_normalised_values():
    data = _png(Image.new("RGB", (40, 20), (255, 0, 128)))
    pixel_values = ImageTransform(image_size=16)(data, train=False)["pixel_values"]
    assert pixel_values.shape == (3, 16, 16) and pixel_values.dtype == torch.float32
    expected = [
        (v / 255 - m) / s
        for v, m, s in zip((255, 0, 128), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, strict=True)
    ]
    torch.testing.assert_close(pixel_values.mean(dim=(1, 2)), torch.tensor(expected), atol=2e-3, rtol=0)


def test_transparency_is_composited_on_white_and_gray_becomes_rgb():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(_png(rgba)).getpixel((0, 0)) == (255, 255, 255)
    gray = Image.new("L", (8, 8), 7)
    assert decode_image(_png(gray)).getpixel((3, 3)) == (7, 7, 7)


def test_train_transform_is_random_eval_is_not():
    data = _png(Image.radial_gradient("L").convert("RGB"))
    t = ImageTransform(image_size=32, crop_scale=(0.3, 0.5))
    torch.manual_seed(0)
    a, b = t(data, train=True)["pixel_values"], t(data, train=True)["pixel_values"]
    assert not torch.equal(a, b)
    assert torch.equal(t(data, train=False)["pixel_values"], t(data, train=False)["pixel_values"])


def test_zoom_out_places_the_image_whole_on_its_own_background():
    image = Image.new("RGB", (10, 6), (0, 0, 0))
    image.paste((200, 30, 90), (3, 2, 7, 5))  # an object inside a black background
    torch.manual_seed(0)
    zoomed = [RandomZoomOut(side_range=(2.0, 2.0), p=1.0)(image) for _ in range(8)]
    origins = set()
    for out in zoomed:
        assert out.size == (20, 12)
        pixels = torch.tensor(list(out.getdata())).view(12, 20, 3)
        ys, xs = torch.nonzero(pixels.sum(-1)).unbind(1)  # where the object landed
        top, left = int(ys.min()) - 2, int(xs.min()) - 3
        assert out.crop((left, top, left + 10, top + 6)).tobytes() == image.tobytes()
        assert len(ys) == 4 * 3  # nothing else but the background colour
        origins.add((top, left))
    assert len(origins) > 1  # random placement
    assert RandomZoomOut(p=0.0)(image) is image
    with pytest.raises(ValueError, match="side_range"):
        RandomZoomOut(side_range=(0.5, 2.0))


@pytest.mark.parametrize("data", [b"", b"garbage", _png(Image.new("RGB", (8, 8)))[:40]])
def test_corrupt_or_truncated_image_raises(data):
    with pytest.raises(OSError):
        ImageTransform(image_size=8)(data, train=False)
