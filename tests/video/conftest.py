import sys
from pathlib import Path

# Video test helpers (video_bytes.py) import as top-level modules under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).parent))
