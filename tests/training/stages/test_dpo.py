"""DPO stage: loss values at step 0, one forward with one media encoding per pair, the reference
cache (equal to the live copy, for image, audio and video; refused on a fingerprint mismatch),
accumulation, and an exact resume through ``mmfuse fit``."""

import copy
import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pairs import cast_media, colour_pairs, embedded_pairs, fit_config, three_tower_model, transforms
from tiny_lm import tiny_model

from mmfuse.core.data import ShardedStream, expand_urls
from mmfuse.training.cli import cli_main
from mmfuse.training.data.preference import PreferenceDataModule, PreferenceDecoder, collate_pairs
from mmfuse.training.stages.dpo import DirectPreferenceOptimization
from mmfuse.training.stages.reference import CachedReference, FrozenReference, weights_fingerprint
from mmfuse.vision import ImageTransform

BETA = 0.1
STRATEGY = SimpleNamespace(
    root_device=torch.device("cpu"), is_global_zero=True, barrier=lambda name=None: None
)


def _examples(model, url: str, transforms: dict) -> list:
    decoder = PreferenceDecoder(model.tokenizer, transforms, max_length=96)
    stream = ShardedStream(expand_urls(url), decoder, batch_size=64, train=False, shuffle_buffer=0)
    return cast_media([e for b in stream for e in b["chat"]], model.lm.dtype)


@pytest.fixture(scope="module")
def colour_url(tmp_path_factory) -> str:
    return str(colour_pairs(tmp_path_factory.mktemp("pairs") / "pairs.tar.gz", 5))


def _batch(stage, url: str, n: int = 5) -> dict:
    examples = _examples(stage.model, url, {"image": ImageTransform(image_size=8)})[:n]
    return collate_pairs(examples, stage.tokenizer.pad_token_id)


@pytest.mark.parametrize(
    "loss_type, zero",
    [("sigmoid", math.log(2)), ("robust", math.log(2)), ("hinge", 1.0), ("ipo", (1 / (2 * BETA)) ** 2),
     ("apo_zero", 1.0), ("nca_pair", 2 * math.log(2))],
)  # fmt: skip
def test_at_step_zero_the_policy_is_the_reference_and_each_loss_is_its_zero_ratio_value(
    loss_type, zero, colour_url
):
    stage = DirectPreferenceOptimization(tiny_model(), beta=BETA, loss_type=loss_type).train()
    assert not stage.reference.training and not any(p.requires_grad for p in stage.reference.parameters())
    batch = _batch(stage, colour_url)
    out, _ = stage.pair_outputs(batch, "train")
    torch.testing.assert_close(out.losses, torch.full((5,), zero, dtype=out.losses.dtype))
    metrics = stage.pair_metrics(out, torch.zeros(10))
    assert metrics["rewards/margins"] == 0 and metrics["rewards/accuracies"] == 0  # ties are not accuracies


def test_simpo_is_reference_free_and_length_normalised(colour_url):
    stage = DirectPreferenceOptimization(tiny_model(), beta=2.0, loss_type="simpo", simpo_gamma=0.5)
    assert stage.reference is None
    batch = _batch(stage, colour_url)
    out, logps = stage.pair_outputs(batch, "train")
    average = logps / batch["completion_mask"].sum(-1)  # [2b] per-token average log-probs
    chosen, rejected = average.chunk(2)
    torch.testing.assert_close(out.losses, -torch.nn.functional.logsigmoid(2.0 * (chosen - rejected) - 0.5))


def test_one_concatenated_forward_equals_separate_forwards_and_encodes_the_media_once(
    colour_url, monkeypatch
):
    stage = DirectPreferenceOptimization(tiny_model())
    batch = _batch(stage, colour_url)
    calls = []
    for model in (stage.model, stage.reference.model):  # count the policy's and the reference's tower calls
        tower, forward = model.towers["image"], model.towers["image"].forward_features
        monkeypatch.setattr(
            tower,
            "forward_features",
            lambda f=forward, **kw: calls.append(len(kw["pixel_values"])) or f(**kw),
        )
    _, logps = stage.pair_outputs(batch, "train")
    assert calls == [5, 5]  # five pairs, ten rows: one tower call over the five images per model
    for rows in (slice(0, 5), slice(5, 10)):  # chosen rows alone, rejected rows alone
        alone = stage.model.sequence_logps(
            batch["input_ids"][rows], batch["completion_mask"][rows], batch["media"],
            attention_mask=batch["attention_mask"][rows],
        )  # fmt: skip
        torch.testing.assert_close(logps[rows], alone)


def _datamodule(model, train: str, val: str, transforms: dict) -> PreferenceDataModule:
    return PreferenceDataModule(train, val, transforms=transforms, max_length=96, val_batch_size=3,
                                tokenizer=model.tokenizer, num_workers=0)  # fmt: skip


def test_cached_reference_logps_equal_the_frozen_copy_for_image_audio_and_video_pairs(tmp_path):
    url = str(embedded_pairs(tmp_path / "pairs.tar.gz", per_modality=2))
    model = three_tower_model(dtype=torch.float32)
    cache = CachedReference(tmp_path / "ref.pt", weights_fingerprint(model))
    cache.prepare(model, _datamodule(model, url, url, transforms()), STRATEGY)
    live = FrozenReference(model)
    examples = _examples(model, url, transforms())
    assert sorted({m for e in examples for m, _ in e.media}) == ["audio", "image", "video"]
    batch = collate_pairs(
        examples[::-1], model.tokenizer.pad_token_id
    )  # another order and padding than the pass
    for split in ("train", "val"):
        torch.testing.assert_close(
            cache.logps(batch, split), live.logps(batch, split).float(), rtol=0, atol=1e-5
        )


def test_a_cache_built_for_other_weights_or_other_data_is_refused(tmp_path, colour_url):
    model = tiny_model(dtype=torch.float32)
    image = {"image": ImageTransform(image_size=8)}
    data = _datamodule(model, colour_url, colour_url, image)
    fingerprint = weights_fingerprint(model)
    CachedReference(tmp_path / "ref.pt", fingerprint).prepare(model, data, STRATEGY)

    other_model = copy.deepcopy(model)
    next(other_model.parameters()).data.mul_(1.01)
    with pytest.raises(ValueError, match="computed for reference weights"):
        CachedReference(tmp_path / "ref.pt", weights_fingerprint(other_model)).prepare(
            other_model, data, STRATEGY
        )

    more = _datamodule(model, str(colour_pairs(tmp_path / "more.tar.gz", 6)), colour_url, image)
    with pytest.raises(ValueError, match="computed for data"):
        CachedReference(tmp_path / "ref.pt", fingerprint).prepare(model, more, STRATEGY)

    cache = CachedReference(tmp_path / "ref.pt", fingerprint)
    cache.prepare(model, data, STRATEGY)
    resized = _examples(model, colour_url, {"image": ImageTransform(image_size=16)})  # another transform
    with pytest.raises(ValueError, match="decodes differently"):
        cache.logps(collate_pairs(resized, model.tokenizer.pad_token_id), "train")

    with pytest.raises(RuntimeError, match="no longer the reference"):  # no file, and the policy has moved
        CachedReference(tmp_path / "missing.pt", fingerprint).prepare(other_model, data, STRATEGY)


def test_two_micro_batches_accumulate_to_the_gradient_of_one_batch(colour_url):
    stage = DirectPreferenceOptimization(tiny_model())
    examples = _examples(stage.model, colour_url, {"image": ImageTransform(image_size=8)})
    pad = stage.tokenizer.pad_token_id
    for param in stage.model.parameters():  # move the policy away from the reference: non-zero log-ratios
        param.data.add_(torch.randn_like(param) * 0.01)

    def gradients(micro_batches):
        stage.zero_grad()
        total = torch.tensor(float(sum(stage.loss_units(mb) for mb in micro_batches)), dtype=torch.float64)
        stage.accumulate(micro_batches, total, 1, lambda loss: loss.backward())
        return {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}

    split = gradients([collate_pairs(examples[:2], pad), collate_pairs(examples[2:], pad)])
    whole = gradients([collate_pairs(examples, pad)])
    assert whole.keys() == split.keys() and not any(n.startswith("reference.") for n in whole)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], msg=name)


def _losses(run: Path, version: int) -> dict[int, float]:
    rows = csv.DictReader(open(run / "lightning_logs" / f"version_{version}" / "metrics.csv"))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


@pytest.mark.slow  # three tiny fits through the CLI, one in a fresh process: 2-4 min on 2 shared cores
def test_a_cached_reference_fit_resumes_exactly(tmp_path):
    train = str(colour_pairs(tmp_path / "train.tar.gz", 24))
    val = str(colour_pairs(tmp_path / "val.tar.gz", 6, offset=24))
    stage = "mmfuse.training.stages.dpo.DirectPreferenceOptimization"
    full = tmp_path / "full"
    cli_main(
        [
            "fit",
            "--config",
            str(fit_config(stage, full, train, val, ref_logps_cache=str(tmp_path / "ref.pt"))),
        ]
    )
    halves = tmp_path / "halves"
    config = str(fit_config(stage, halves, train, val, ref_logps_cache=str(tmp_path / "ref.pt")))
    probes = Path(__file__).parents[1]  # tests/training/probes.py: KillAtStep
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(probes), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run(
        [sys.executable, "-c", "from mmfuse.training.cli import main; main()", "fit", f"--config={config}",
         "--checkpoint.every_n_train_steps=2", "--trainer.callbacks+=probes.KillAtStep",
         "--trainer.callbacks.step=3"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[
        -3000:
    ]  # kill -9 mid-epoch, after step 2's checkpoint
    cli_main(
        ["fit", "--config", config, "--checkpoint.every_n_train_steps=2", "--ckpt_path=last"]
    )  # the same command

    assert (tmp_path / "ref.pt").exists()
    full_losses, first, second = _losses(full, 0), _losses(halves, 0), _losses(halves, 1)
    assert sorted(full_losses) == [0, 1, 2, 3] and sorted(first) == [0, 1, 2] and sorted(second) == [2, 3]
    assert full_losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0
    assert {**first, **second} == pytest.approx(full_losses, rel=1e-6)
    full_state = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    resumed_state = torch.load(halves / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for name, value in full_state.items():
        torch.testing.assert_close(resumed_state[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_a_few_steps_raise_the_chosen_answers_over_the_rejected_ones(colour_url):
    stage = DirectPreferenceOptimization(tiny_model(dtype=torch.float32), beta=0.5)
    batch = _batch(stage, colour_url)
    optimizer = torch.optim.Adam([p for p in stage.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(4):
        optimizer.zero_grad()
        loss, _ = stage.micro_batch_loss(batch)
        (loss / 5).backward()
        optimizer.step()
    with torch.no_grad():
        out, _ = stage.pair_outputs(batch, "train")
    assert out.losses.mean() < 0.5 * math.log(2) and (out.chosen_rewards > out.rejected_rewards).all()
