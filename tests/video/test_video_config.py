"""The video-text alignment config through the ``mmfuse`` CLI: it parses, fits, validates, checkpoints."""

from pathlib import Path

import pytest
import torch

from mmfuse.core.checkpoint import load_media_encoder_state
from mmfuse.training.cli import cli_main
from mmfuse.video import VideoEncoder

REPO = Path(__file__).parents[2]
CONFIG = REPO / "training/configs/align/video_text.yaml"
MEANPOOL = REPO / "training/configs/align/video_text_meanpool.yaml"
SHARDS = [
    f"--data.init_args.train_shards={REPO}/data/video_text/train-{{000000..000003}}.tar.gz",
    f"--data.init_args.val_shards={REPO}/data/video_text/val-{{000000..000001}}.tar.gz",
]


def test_mean_pool_baseline_config_drops_the_temporal_model():
    main = cli_main([f"--config={CONFIG}", *SHARDS], run=False)
    assert (
        isinstance(main.model.media_encoder, VideoEncoder) and main.model.media_encoder.temporal is not None
    )
    baseline = cli_main([f"--config={CONFIG}", f"--config={MEANPOOL}", *SHARDS], run=False)
    assert baseline.model.media_encoder.temporal is None


@pytest.mark.slow
def test_video_config_fits_validates_and_checkpoints(tmp_path):
    cli = cli_main(
        ["fit", f"--config={CONFIG}", *SHARDS, f"--trainer.default_root_dir={tmp_path}",
         "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
         "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
         "--data.init_args.batch_size=8", "--data.init_args.num_workers=0"]
    )  # fmt: skip
    top1 = float(cli.trainer.callback_metrics["val/direction_top1"])
    assert 0.0 <= top1 <= 1.0 and cli.trainer.global_step == 2
    # A real Lightning checkpoint reads with weights_only=True; the frame tower of a video run loads
    # into a fresh image tower (e.g. to start a longer run, or an image run, from it).
    checkpoint = next((tmp_path / "checkpoints").glob("last*.ckpt"))
    frame_state = load_media_encoder_state(checkpoint, prefix="media_encoder.frame_encoder.")
    video = cli.model.media_encoder
    assert frame_state.keys() == video.frame_encoder.state_dict().keys()
    for name, tensor in video.frame_encoder.state_dict().items():
        torch.testing.assert_close(frame_state[name], tensor)
