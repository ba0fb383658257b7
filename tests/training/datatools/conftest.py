import sys
from pathlib import Path

# Test helpers import as top-level modules under --import-mode=importlib: datatools_media.py here,
# and the audio and video tests' encoders (audio_bytes.py; mmfuse.video.conformance).
here = Path(__file__).parent
for folder in (here, here.parents[1] / "audio", here.parents[1] / "video"):
    sys.path.insert(0, str(folder))
