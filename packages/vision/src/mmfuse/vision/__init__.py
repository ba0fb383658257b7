"""mmfuse.vision: image decoding and transforms (-> ``pixel_values``) and open_clip towers."""

from mmfuse.vision.clip import OpenClipTextEncoder, OpenClipVisionEncoder
from mmfuse.vision.transforms import ImageTransform, decode_image, normalize

__all__ = ["ImageTransform", "OpenClipTextEncoder", "OpenClipVisionEncoder", "decode_image", "normalize"]
