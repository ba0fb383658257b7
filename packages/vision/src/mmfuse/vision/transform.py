"""Image decoding and transforms: encoded bytes -> ``pixel_values``.

The normalisation constants are open_clip's (``OPENAI_DATASET_MEAN/STD``), so a tower initialised
from an open_clip ``pretrained`` checkpoint sees inputs scaled as in its training.
"""

from __future__ import annotations

import io

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes (PNG, JPEG, WebP ...) to RGB; transparency is composited on white.

    Raises:
        PIL.UnidentifiedImageError / OSError: for corrupt or truncated data.
    """
    image = Image.open(io.BytesIO(data))
    image.load()  # decode now, so a truncated file raises here and not later in a transform
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def normalize() -> v2.Normalize:
    """open_clip's normalisation: ``(x - OPENAI_DATASET_MEAN) / OPENAI_DATASET_STD`` per channel."""
    return v2.Normalize(mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)


class RandomZoomOut:
    """torchvision's ``v2.RandomZoomOut`` with the image's own background as the fill.

    With probability ``p`` the image is placed at a random position on a canvas whose sides are
    ``r`` times its own, ``r ~ U(side_range)``, filled with the colour of its top-left pixel (a
    digit's black, a photo's white), so the object shrinks and the background stays as it was.
    Random draws come from ``torch``'s generator, which Lightning seeds per data worker.

    Raises:
        ValueError: for a ``side_range`` not within ``1 <= min <= max``.
    """

    def __init__(self, side_range: tuple[float, float] = (1.0, 4.0), p: float = 0.5) -> None:
        if not 1.0 <= side_range[0] <= side_range[1]:
            raise ValueError(f"side_range must satisfy 1 <= min <= max, got {side_range}")
        self.side_range, self.p = side_range, p

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(()).item() >= self.p:
            return image
        low, high = self.side_range
        ratio = low + (high - low) * torch.rand(()).item()
        w, h = image.size
        canvas = Image.new(image.mode, (round(w * ratio), round(h * ratio)), image.getpixel((0, 0)))
        left = int(torch.randint(canvas.width - w + 1, ()).item())
        top = int(torch.randint(canvas.height - h + 1, ()).item())
        canvas.paste(image, (left, top))
        return canvas


class ImageTransform:
    """Media transform for images: bytes -> ``{"pixel_values": [3, image_size, image_size] float32}``.

    Eval: resize the shorter side to ``image_size`` (bicubic, antialiased), centre crop.
    Train: optionally :class:`RandomZoomOut`, then ``RandomResizedCrop(image_size,
    scale=crop_scale)``, as open_clip's train transform (no flip: flipping changes the meaning of
    digits and of motion directions).

    Args:
        image_size: output side in pixels.
        crop_scale: ``(min, max)`` area fraction of the random crop in training.
        zoom_out: ``side_range`` of a :class:`RandomZoomOut` applied to half the training images,
            so a tower also learns objects smaller than the frame (e.g. the sprites of the
            embedded motion clips); None: no zoom-out.
    """

    extensions = ("png", "jpg", "jpeg", "webp")

    def __init__(
        self,
        image_size: int = 224,
        crop_scale: tuple[float, float] = (0.8, 1.0),
        zoom_out: tuple[float, float] | None = None,
    ) -> None:
        self.image_size = image_size
        to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), normalize()]
        interp = v2.InterpolationMode.BICUBIC
        self.eval_transform = v2.Compose(
            [v2.Resize(image_size, interpolation=interp), v2.CenterCrop(image_size), *to_tensor]
        )
        zoom = [] if zoom_out is None else [RandomZoomOut(zoom_out)]
        self.train_transform = v2.Compose(
            [*zoom, v2.RandomResizedCrop(image_size, scale=crop_scale, interpolation=interp), *to_tensor]
        )

    def __call__(self, data: bytes, *, train: bool) -> dict[str, Tensor]:
        image = decode_image(data)
        transform = self.train_transform if train else self.eval_transform
        return {"pixel_values": transform(image)}
