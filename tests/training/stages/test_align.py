import csv
import math
from pathlib import Path

import torch

from mmfuse.core.text import OpenClipTextEncoder
from mmfuse.training.cli import cli_main
from mmfuse.training.optim import adamw_param_groups, warmup_cosine
from mmfuse.training.stages.align import ContrastiveAlignment, positive_group_ids
from mmfuse.vision import OpenClipVisionEncoder

ROOT = Path(__file__).parents[3]


def _tiny_stage(**kwargs) -> ContrastiveAlignment:
    vision = OpenClipVisionEncoder(
        embed_dim=8, vision_cfg={"image_size": 8, "patch_size": 4, "width": 16, "layers": 1, "head_width": 8}
    )
    text = OpenClipTextEncoder(
        embed_dim=8, text_cfg={"context_length": 6, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}
    )
    return ContrastiveAlignment(vision, text, **kwargs)


def test_positive_groups_by_caption_or_meta_field():
    batch = {
        "text": ["a seven", "the number seven", "a seven", "an eagle"],
        "meta": [{"label": "seven"}, {"label": "seven"}, {"label": "seven"}, {}],
    }
    by_text = positive_group_ids(batch, "text").tolist()
    assert by_text[0] == by_text[2] and len({by_text[0], by_text[1], by_text[3]}) == 3
    by_label = positive_group_ids(batch, "label").tolist()
    assert by_label[0] == by_label[1] == by_label[2] != by_label[3]


def test_temperature_init_clamp_and_no_weight_decay():
    stage = _tiny_stage()
    assert math.isclose(stage.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        stage.logit_scale.fill_(10.0)
    stage.on_train_batch_end(None, {}, 0)
    assert math.isclose(stage.logit_scale.exp().item(), 100.0, rel_tol=1e-5)
    decay, no_decay = adamw_param_groups(stage, 0.1)
    assert any(p is stage.logit_scale for p in no_decay["params"])
    assert not any(p is stage.logit_scale for p in decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"])
    siglip = _tiny_stage(loss="siglip")
    assert (
        math.isclose(siglip.logit_scale.exp().item(), 10.0, rel_tol=1e-6)
        and siglip.logit_bias.item() == -10.0
    )


def test_warmup_cosine_schedule_values():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(lrs[9], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert math.isclose(lrs[14], 0.1)


def test_cli_fit_smoke_on_the_embedded_data(tmp_path):
    """`mmfuse fit` with the shipped config for a few steps: metrics and checkpoints appear."""
    cli_main(
        [
            "fit",
            "--config", str(ROOT / "training/configs/align/image_text.yaml"),
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "3",
            "--trainer.limit_val_batches", "2",
            "--trainer.log_every_n_steps", "1",
            "--trainer.check_val_every_n_epoch", "1",
            "--trainer.enable_progress_bar", "false",
            "--data.init_args.train_shards", str(ROOT / "data/image_text/train-{000000..000003}.tar.gz"),
            "--data.init_args.val_shards", str(ROOT / "data/image_text/val-{000000..000001}.tar.gz"),
            "--data.init_args.batch_size", "16",
        ]
    )  # fmt: skip
    rows = list(csv.DictReader(open(next(tmp_path.glob("**/metrics.csv")))))
    val = next(r for r in rows if r.get("val/zeroshot_top1"))
    assert 0.0 <= float(val["val/zeroshot_top1"]) <= 1.0
    assert float(val["val/i2t_r10"]) >= float(val["val/i2t_r1"])
    assert any(r.get("train/loss") for r in rows)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list(tmp_path.glob("**/config.yaml"))
