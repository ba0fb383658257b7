import os
from collections import Counter

import open_clip
import pytest
import torch
from shards import color_shards

from mmfuse.core.data import (
    EpochLoader,
    MediaTextDecoder,
    ShardedStream,
    assign_shards,
    count_samples,
    expand_urls,
)
from mmfuse.vision import ImageTransform


@pytest.fixture(scope="module")
def decode():
    return MediaTextDecoder(
        ImageTransform(image_size=8), open_clip.get_tokenizer("ViT-B-32", context_length=16)
    )


def test_expand_urls_brace_and_missing(tmp_path):
    url = color_shards(tmp_path, 3, 2)
    assert [os.path.basename(u) for u in expand_urls(url)] == [f"train-00000{i}.tar" for i in range(3)]
    assert expand_urls("pipe:cat a.tar::pipe:cat b.tar") == ["pipe:cat a.tar", "pipe:cat b.tar"]
    with pytest.raises(FileNotFoundError, match="train-000003.tar"):
        expand_urls(str(tmp_path / "train-{000002..000003}.tar"))


@pytest.mark.parametrize("world_size,num_workers", [(1, 1), (2, 2), (3, 2)])
def test_assign_shards_is_an_exact_partition(world_size, num_workers):
    urls = [f"shard-{i}" for i in range(13)]
    for epoch in range(3):
        got = [
            url
            for rank in range(world_size)
            for worker in range(num_workers)
            for url in assign_shards(urls, seed=7, epoch=epoch, rank=rank, world_size=world_size,
                                     worker=worker, num_workers=num_workers)
        ]  # fmt: skip
        assert sorted(got) == sorted(urls)


def test_shard_order_changes_between_epochs_and_is_seeded():
    urls = [f"shard-{i}" for i in range(8)]
    order = lambda seed, epoch: assign_shards(
        urls, seed=seed, epoch=epoch, rank=0, world_size=1, worker=0, num_workers=1
    )
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_too_few_shards_is_a_clear_error():
    with pytest.raises(ValueError, match="3 shards cannot feed 2 ranks x 2 workers"):
        assign_shards(["a", "b", "c"], seed=0, epoch=0, rank=1, world_size=2, worker=1, num_workers=2)


def test_stream_partitions_samples_over_ranks_and_workers(tmp_path, decode, monkeypatch):
    urls = expand_urls(color_shards(tmp_path, 4, 5))
    keys = []
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "2")
            stream = ShardedStream(urls, decode, batch_size=3, train=False, shuffle_buffer=0)
            keys += [k for batch in stream for k in batch["__key__"]]
    assert sorted(keys) == sorted(f"s{s}-{i:04d}" for s in range(4) for i in range(5))


def test_corrupt_sample_is_skipped_and_counted(tmp_path, decode):
    urls = expand_urls(color_shards(tmp_path, 2, 6, corrupt={"s0-0002", "s1-0005"}))
    batches = list(ShardedStream(urls, decode, batch_size=4, train=False, shuffle_buffer=0))
    assert [len(b["__key__"]) for b in batches] == [4, 4, 2]
    assert sum(b["num_skipped"] for b in batches) == 2
    assert not {"s0-0002", "s1-0005"} & {k for b in batches for k in b["__key__"]}
    assert batches[0]["pixel_values"].shape == (4, 3, 8, 8)
    assert batches[0]["input_ids"].shape == (4, 16) and batches[0]["input_ids"].dtype == torch.int64


def test_a_repeating_stream_that_decodes_nothing_raises_instead_of_looping(tmp_path, decode):
    everything = {f"s{s}-{i:04d}" for s in range(2) for i in range(3)}
    urls = expand_urls(color_shards(tmp_path, 2, 3, corrupt=everything))
    stream = ShardedStream(urls, decode, batch_size=2, train=True, shuffle_buffer=0, repeat=True)
    with pytest.raises(ValueError, match=r"decoded no sample \(last skipped: s[01]-0002: "):
        next(iter(stream))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epoch_length_is_exact_and_order_changes(tmp_path, decode, num_workers):
    urls = expand_urls(color_shards(tmp_path, 4, 10))
    assert count_samples(urls) == 40
    stream = ShardedStream(urls, decode, batch_size=4, train=True, seed=3, shuffle_buffer=8, repeat=True)
    loader = EpochLoader(stream, num_batches=9, num_workers=num_workers, seed=3)
    epochs = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == 9
        epochs.append([k for b in batches for k in b["__key__"]])
    assert epochs[0] != epochs[1]
    assert max(Counter(epochs[0]).values()) == 1  # 36 of 40 samples, none twice
    stream.set_epoch(0)
    assert [k for b in loader for k in b["__key__"]] == epochs[0]  # same seed, same order


def test_loader_gives_one_shard_to_one_worker_only(tmp_path, decode):
    urls = expand_urls(color_shards(tmp_path, 1, 8))  # e.g. one JSONL file
    stream = ShardedStream(urls, decode, batch_size=4, train=True, shuffle_buffer=0, repeat=True)
    keys = [k for b in EpochLoader(stream, num_batches=2, num_workers=2) for k in b["__key__"]]
    assert sorted(keys) == [f"s0-{i:04d}" for i in range(8)]


def test_loader_state_resumes_mid_epoch(tmp_path, decode):
    urls = expand_urls(color_shards(tmp_path, 4, 10))
    make = lambda: EpochLoader(
        ShardedStream(urls, decode, batch_size=4, train=True, seed=1, repeat=True),
        num_batches=8,
        num_workers=0,
        seed=1,
    )
    full = [b["__key__"] for b in make()]
    loader = make()
    it = iter(loader)
    head = [next(it)["__key__"] for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 3}
    resumed = make()
    resumed.load_state_dict(state)
    assert head + [b["__key__"] for b in resumed] == full
