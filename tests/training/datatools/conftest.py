import sys
from pathlib import Path

# Test helpers (datatools_media.py) import as top-level modules under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).parent))
