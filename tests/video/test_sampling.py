import pytest
import torch

from mmfuse.video.sampling import FpsSampler, SegmentSampler, UniformSampler


def constant_rate(num_frames: int, fps: float) -> torch.Tensor:
    """``[n]`` float64 timestamps of a constant-rate clip: frame i at i / fps seconds."""
    return torch.arange(num_frames, dtype=torch.float64) / fps


@pytest.mark.parametrize(
    "num_frames,num_total,expected",
    [
        (4, 10, [0, 3, 6, 9]),  # floor(i * 9 / 3)
        (8, 16, [0, 2, 4, 6, 8, 10, 12, 15]),  # floor(i * 15 / 7)
        (3, 3, [0, 1, 2]),
        (8, 5, [0, 1, 2, 3, 4]),  # short clip: every frame, the transform pads
        (1, 10, [4]),  # middle frame
    ],
)
def test_uniform_indices(num_frames, num_total, expected):
    sampler = UniformSampler(num_frames)
    assert sampler(constant_rate(num_total, 25.0), train=True) == expected
    assert sampler(constant_rate(num_total, 25.0), train=False) == expected


def test_segment_eval_takes_the_middle_of_each_segment():
    # 10 frames in 4 segments: [0, 2) [2, 5) [5, 7) [7, 10); middles floor((2k + 1) * 10 / 8).
    assert SegmentSampler(4)(constant_rate(10, 25.0), train=False) == [1, 3, 6, 8]
    assert SegmentSampler(8)(constant_rate(16, 25.0), train=False) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert SegmentSampler(8)(constant_rate(6, 25.0), train=False) == [0, 1, 2, 3, 4, 5]


def test_segment_train_draws_each_frame_of_each_segment():
    sampler, generator = SegmentSampler(4), torch.Generator().manual_seed(0)
    draws = [sampler(constant_rate(10, 25.0), train=True, generator=generator) for _ in range(300)]
    seen = [sorted({d[k] for d in draws}) for k in range(4)]
    assert seen == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    again = torch.Generator().manual_seed(0)
    assert sampler(constant_rate(10, 25.0), train=True, generator=again) == draws[0]


def test_fps_keeps_the_rate_and_cuts_a_window():
    sampler = FpsSampler(fps=5, max_frames=4)
    # 100 frames at 25 fps: every 5th frame, 20 candidates; evaluation keeps the centred window.
    assert sampler(constant_rate(100, 25.0), train=False) == [40, 45, 50, 55]
    windows = {
        tuple(sampler(constant_rate(100, 25.0), train=True, generator=torch.Generator().manual_seed(s)))
        for s in range(200)
    }
    assert windows == {tuple(range(5 * j, 5 * j + 20, 5)) for j in range(17)}
    assert sampler(constant_rate(12, 25.0), train=False) == [0, 5, 10]  # short clip: fewer frames, same rate


def test_fps_non_integer_step_and_upsampling():
    assert FpsSampler(fps=4, max_frames=10)(constant_rate(30, 30.0), train=False) == [
        0,
        7,
        15,
        22,
    ]  # floor(j * 7.5)
    assert FpsSampler(fps=16, max_frames=10)(constant_rate(4, 8.0), train=False) == [
        0,
        1,
        2,
        3,
    ]  # no repeated frame


def test_fps_samples_a_variable_rate_clip_evenly_in_seconds():
    # Frames shown 100, 100, 25, 25, 25, 25, 200, 50, 50, 100, 100, 100 ms (a phone clip's jitter).
    starts_ms = [0, 100, 200, 225, 250, 275, 300, 500, 550, 600, 700, 800]
    timestamps = torch.tensor(starts_ms, dtype=torch.float64) / 1000
    # At 10 fps, times 0.0 .. 0.8 s; the frame on screen at 0.4 s is still frame 6 (shown from 0.3 s).
    assert FpsSampler(fps=10, max_frames=16)(timestamps, train=False) == [0, 1, 2, 6, 7, 9, 10, 11]
    # By index at the average rate (12 frames / 0.9 s = 13.3 fps) the burst of 25 ms frames would
    # be sampled as densely as the rest: floor(j * 1.33) = 0, 1, 2, 4, 5, 6, 8, 9, 10.
    by_index = FpsSampler(fps=10, max_frames=16)(constant_rate(12, 12 / 0.9), train=False)
    assert by_index == [0, 1, 2, 4, 5, 6, 8, 9, 10]


@pytest.mark.parametrize(
    "make", [lambda: UniformSampler(0), lambda: SegmentSampler(-1), lambda: FpsSampler(0, 4)]
)
def test_invalid_arguments_raise(make):
    with pytest.raises(ValueError, match="must be positive"):
        make()
