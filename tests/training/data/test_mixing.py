"""Weighted mixing of several sources: observed ratios, a curriculum, logging and exact resume."""

import json

import pytest
from shards import write_shard

from mmfuse.core.data import weight_at
from mmfuse.training.data.base import ShardedDataModule, ShardSource


def _decode(sample, *, train):
    return {"source": json.loads(sample["json"])["source"]}


class Tagged(ShardedDataModule):
    """Samples that say which source they came from."""

    def decoder(self):
        return _decode


def _source(tmp_path, name, shards=2, per_shard=20):
    for s in range(shards):
        samples = [{"__key__": f"{name}{s}-{i}", "json": json.dumps({"source": name}).encode()}
                   for i in range(per_shard)]  # fmt: skip
        write_shard(tmp_path / f"{name}-{s:06d}.tar", samples)
    return str(tmp_path / f"{name}-{{000000..{shards - 1:06d}}}.tar")


def _observed(loader):
    counts, mixes = {}, []
    for batch in loader:
        for name in batch["source"]:
            counts[name] = counts.get(name, 0) + 1
        mixes.append(batch["mix"])
        assert sum(batch["mix"].values()) == len(batch["source"])
    return counts, mixes


def test_observed_ratios_over_10000_samples_are_within_2_percent(tmp_path):
    sources = [ShardSource(_source(tmp_path, "a"), 0.6), ShardSource(_source(tmp_path, "b"), 0.3),
               ShardSource(_source(tmp_path, "c"), 0.1)]  # fmt: skip
    data = Tagged(sources, batch_size=100, num_samples=10_000, num_workers=2)
    counts, _ = _observed(data.train_dataloader())
    total = sum(counts.values())
    assert total == 10_000
    for name, weight in zip("abc", (0.6, 0.3, 0.1), strict=True):
        assert abs(counts[name] / total - weight) < 0.02, (name, counts)


def test_a_curriculum_follows_its_schedule(tmp_path):
    curriculum = [[0, 1.0], [50, 0.0]]  # from all "a" at step 0 to none at step 50
    sources = [
        ShardSource(_source(tmp_path, "a"), curriculum, "a"),
        ShardSource(_source(tmp_path, "b"), 0.5, "b"),
    ]
    data = Tagged(sources, batch_size=200, num_samples=20_000, num_workers=0)
    _, mixes = _observed(data.train_dataloader())
    share = [m.get("a", 0) / 200 for m in mixes]
    for step in (0, 25, 49, 75):
        expected = weight_at(curriculum, step) / (weight_at(curriculum, step) + 0.5)
        assert abs(share[step] - expected) < 0.12, (step, share[step], expected)
    assert share[0] > 0.55 and share[75] == 0.0


def test_weight_schedules_are_piecewise_linear_and_checked():
    assert weight_at(0.3, 10) == 0.3
    assert weight_at([[10, 1.0], [20, 3.0]], 0) == 1.0
    assert weight_at([[10, 1.0], [20, 3.0]], 15) == 2.0
    assert weight_at([[10, 1.0], [20, 3.0]], 99) == 3.0
    with pytest.raises(ValueError, match="increasing steps"):
        weight_at([[20, 1.0], [10, 3.0]], 0)


def test_a_resumed_mix_continues_with_the_same_draws(tmp_path):
    sources = [
        {"shards": _source(tmp_path, "a"), "weight": 0.5},
        {"shards": _source(tmp_path, "b"), "weight": 0.5},
    ]
    data = Tagged(sources, batch_size=10, num_samples=200, num_workers=2, shuffle_buffer=8)
    loader = data.train_dataloader()
    whole = [b["source"] for b in loader]
    first = iter(loader)
    seen = [next(first)["source"] for _ in range(7)]
    state = loader.state_dict()
    resumed = Tagged(
        sources, batch_size=10, num_samples=200, num_workers=2, shuffle_buffer=8
    ).train_dataloader()
    resumed.load_state_dict(state)
    assert seen + [b["source"] for b in resumed] == whole
    _, mixes = _observed(Tagged(sources, batch_size=10, num_samples=200).train_dataloader())
    assert set().union(*mixes) == {"source0", "source1"}  # unnamed sources are named by position
