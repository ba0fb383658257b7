"""The SFT configs name the alignment configs' own towers (one file each) and their media features."""

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
ALIGNMENT = {"image": "image_text", "audio": "audio_text", "video": "video_text"}
FEATURES = ("sample_rate", "clip_seconds", "n_fft", "hop_length", "n_mels", "image_size", "size", "sampler")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("modality", sorted(ALIGNMENT))
def test_sft_tower_is_the_alignment_tower_and_loads_its_checkpoint(modality):
    sft = _load(CONFIGS / "sft" / "embedded.yaml")
    align = _load(CONFIGS / "align" / f"{ALIGNMENT[modality]}.yaml")
    tower = sft["model"]["init_args"]["model"]["init_args"]["towers"][modality]
    assert tower == align["model"]["init_args"]["media_encoder"] == f"../towers/{modality}.yaml"
    assert (CONFIGS / "towers" / f"{modality}.yaml").is_file()
    sft_media = sft["data"]["init_args"]["transforms"][modality]["init_args"]
    align_media = align["data"]["init_args"]["media"]["init_args"]
    assert {k: sft_media.get(k) for k in FEATURES} == {k: align_media.get(k) for k in FEATURES}
    model = _load(CONFIGS / "sft" / "from_align.yaml")["model"]["init_args"]["model"]["init_args"]
    paths = model["tower_checkpoints"]
    assert paths[modality] == f"runs/align/{ALIGNMENT[modality]}/checkpoints/last.ckpt"
    assert paths[modality].startswith(align["trainer"]["default_root_dir"] + "/")


def test_the_towers_and_the_transforms_name_the_same_modalities():
    sft = _load(CONFIGS / "sft" / "embedded.yaml")
    assert set(sft["model"]["init_args"]["model"]["init_args"]["towers"]) == set(
        sft["data"]["init_args"]["transforms"]
    )
