"""mmfuse.vision: image decoding and transforms (-> ``pixel_values``) and the open_clip image tower."""

from mmfuse.vision.encoder import OpenClipVisionEncoder
from mmfuse.vision.transform import ImageTransform, RandomZoomOut, decode_image, normalize

__all__ = ["ImageTransform", "OpenClipVisionEncoder", "RandomZoomOut", "decode_image", "normalize"]
