"""The SFT config's towers and media features match the alignment configs whose checkpoints it loads."""

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
ALIGNMENT = {"image": "image_text", "audio": "audio_text", "video": "video_text"}
FEATURES = ("sample_rate", "clip_seconds", "n_fft", "hop_length", "n_mels", "image_size", "size", "sampler")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("modality", sorted(ALIGNMENT))
def test_sft_tower_loads_its_alignment_checkpoint(modality):
    sft = _load(CONFIGS / "sft" / "embedded.yaml")
    align = _load(CONFIGS / "align" / f"{ALIGNMENT[modality]}.yaml")
    assert sft["model"]["init_args"][f"{modality}_encoder"] == align["model"]["init_args"]["media_encoder"]
    sft_media = sft["data"]["init_args"][modality]["init_args"]
    align_media = align["data"]["init_args"]["media"]["init_args"]
    assert {k: sft_media.get(k) for k in FEATURES} == {k: align_media.get(k) for k in FEATURES}
    paths = _load(CONFIGS / "sft" / "from_align.yaml")["model"]["init_args"]["encoder_checkpoints"]
    assert paths[modality] == f"runs/align/{ALIGNMENT[modality]}/checkpoints/last.ckpt"
    assert paths[modality].startswith(align["trainer"]["default_root_dir"] + "/")
