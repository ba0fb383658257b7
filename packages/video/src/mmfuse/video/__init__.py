"""mmfuse.video: clip decoding and frame sampling (-> ``pixel_values_videos``), the video tower."""

from mmfuse.video.decode import VideoDecodeError, open_video
from mmfuse.video.encoder import VideoEncoder
from mmfuse.video.masking import TubePatchDropout
from mmfuse.video.sampling import FpsSampler, SegmentSampler, UniformSampler
from mmfuse.video.temporal import TemporalTransformer
from mmfuse.video.transform import VideoTransform

__all__ = [
    "FpsSampler",
    "SegmentSampler",
    "TemporalTransformer",
    "TubePatchDropout",
    "UniformSampler",
    "VideoDecodeError",
    "VideoEncoder",
    "VideoTransform",
    "open_video",
]
