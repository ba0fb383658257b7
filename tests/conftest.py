import sys
from pathlib import Path

# PyAV before any test module imports decord: decord loads its FFmpeg 4.1 libraries globally and
# their libvpx would shadow PyAV's, so the video tests could not encode VP8/VP9 clips.
import av  # noqa: F401

# Test helper modules (tests/shards.py ...) import as top-level modules under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).parent))
