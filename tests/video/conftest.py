import pytest
import torchcodec


@pytest.fixture(
    params=[
        "pyav",
        "decord",
        pytest.param(
            "torchcodec",
            marks=pytest.mark.skipif(
                torchcodec.ffmpeg_major_version is None, reason="no system FFmpeg libraries"
            ),
        ),
    ]
)
def backend(request) -> str:
    """Each video backend in turn (torchcodec only where the system FFmpeg libraries are)."""
    return request.param
