"""Checks on the committed dataset under ``data/`` (built by ``scripts/build_data.py``).

The expected counts pin one build; a rebuild that changes them must update them here and in
``data/README.md``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import decord
import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "data"
MODALITIES = {"image_text": ("png", "jpg"), "audio_text": ("ogg",), "video_text": ("mp4",)}
SHARDS = {"train": 4, "val": 2}
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")

EXPECTED_COUNTS = {
    "image_text": {
        ("train", "digits"): 1535, ("train", "qabcs"): 272, ("train", "tuxpaint"): 672,
        ("val", "digits"): 262, ("val", "qabcs"): 44, ("val", "tuxpaint"): 112,
    },
    "audio_text": {
        ("train", "asterisk"): 413, ("train", "espeak"): 973, ("val", "asterisk"): 104, ("val", "espeak"): 91
    },  # fmt: skip
    "video_text": {
        ("train", "digits"): 704, ("train", "qabcs"): 448, ("train", "tuxpaint"): 596,
        ("val", "digits"): 96, ("val", "qabcs"): 64, ("val", "tuxpaint"): 92,
    },
}  # fmt: skip


def load(modality: str) -> list[dict]:
    """Every sample of a modality, read with webdataset, with ``split`` added from the shard name."""
    samples = []
    for split, count in SHARDS.items():
        urls = [str(DATA / modality / f"{split}-{i:06d}.tar.gz") for i in range(count)]
        for sample in wds.WebDataset(urls, shardshuffle=False):
            sample["split"] = split
            sample["meta"] = json.loads(sample["json"])
            sample["caption"] = sample["txt"].decode("utf-8")
            samples.append(sample)
    return samples


@pytest.fixture(scope="module")
def samples() -> dict[str, list[dict]]:
    return {modality: load(modality) for modality in MODALITIES}


def hash_split(key: str) -> str:
    """The split rule of ``scripts/media_bytes.split_of``, written out again."""
    return "val" if int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % 100 < 15 else "train"


def test_layout_has_exactly_the_agreed_shards():
    for modality in MODALITIES:
        names = sorted(p.name for p in (DATA / modality).iterdir())
        expected = [f"{split}-{i:06d}.tar.gz" for split, n in SHARDS.items() for i in range(n)]
        assert names == expected, modality
    assert (DATA / "text" / "wordnet.jsonl.gz").is_file()


@pytest.mark.parametrize("modality", MODALITIES)
def test_counts_per_split_and_source(samples, modality):
    counts = Counter((s["split"], s["meta"]["source"]) for s in samples[modality])
    assert dict(counts) == EXPECTED_COUNTS[modality]


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_sample_has_media_caption_and_meta(samples, modality):
    for s in samples[modality]:
        members = set(s) - {"__key__", "__url__", "__local_path__", "split", "meta", "caption"}
        assert len(members) == 3 and {"txt", "json"} < members, s["__key__"]
        assert (members - {"txt", "json"}).pop() in MODALITIES[modality]
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", s["__key__"])
        assert isinstance(s["meta"]["source"], str) and isinstance(s["meta"]["label"], str)
        assert s["meta"]["label"]


@pytest.mark.parametrize("modality", MODALITIES)
def test_train_and_val_keys_are_disjoint_and_split_by_key_hash(samples, modality):
    by_split = defaultdict(set)
    for s in samples[modality]:
        by_split[s["split"]].add(s["__key__"])
        source = s["meta"]["source"]
        if source in ("digits", "qabcs", "tuxpaint"):
            # Video clips take the split of the picture they move: strip the direction.
            group = s["__key__"].rsplit("-", 1)[0] if modality == "video_text" else s["__key__"]
            assert s["split"] == hash_split(group), s["__key__"]
    assert not by_split["train"] & by_split["val"]
    assert sum(map(len, by_split.values())) == len(samples[modality])


@pytest.mark.parametrize("modality", MODALITIES)
def test_captions_look_like_sentences(samples, modality):
    for s in samples[modality]:
        caption = s["caption"]
        assert caption == caption.strip() and "\n" not in caption and "  " not in caption, caption
        assert "_" not in caption and re.fullmatch(r"[A-Za-z0-9](.*[A-Za-z0-9')?.!:])?", caption), caption
        if s["meta"]["source"] in ("digits", "qabcs", "espeak"):
            assert s["meta"]["label"] in caption


def test_picture_captions_use_the_right_article(samples):
    objects = {
        s["__key__"]: s["meta"]["object"] for s in samples["image_text"] if s["meta"]["source"] == "qabcs"
    }
    assert objects["qabcs-eagle-owl"] == "an eagle-owl"
    assert objects["qabcs-umbrella"] == "an umbrella"
    assert objects["qabcs-unicycle"] == "a unicycle"
    assert objects["qabcs-ukulele"] == "a ukulele"
    assert objects["qabcs-x-ray"] == "an x-ray"
    assert objects["qabcs-apples"] == "apples"
    assert objects["qabcs-honey"] == "honey"
    templates = ("{}", "a picture of {}", "a photo of {}", "an image of {}")
    for s in samples["image_text"]:
        if s["meta"]["source"] == "qabcs":
            assert s["caption"] in {t.format(s["meta"]["object"]) for t in templates}


def test_images_decode(samples):
    for s in samples["image_text"]:
        if s["meta"]["source"] == "digits":
            image = Image.open(io.BytesIO(s["png"]))
            assert (image.mode, image.size) == ("L", (32, 32))
            pixels = np.asarray(image)
            assert np.array_equal(pixels, pixels[::4, ::4].repeat(4, 0).repeat(4, 1))  # 4x nearest of 8x8
        else:
            image = Image.open(io.BytesIO(s["jpg"]))
            assert image.mode == "RGB" and max(image.size) == 64, s["__key__"]
        image.load()


def test_audio_decodes_with_the_stated_rate_and_duration(samples):
    for s in samples["audio_text"]:
        waveform, rate = sf.read(io.BytesIO(s["ogg"]), dtype="float32")
        assert waveform.ndim == 1 and rate == s["meta"]["sample_rate"], s["__key__"]
        assert len(waveform) / rate == pytest.approx(s["meta"]["duration_s"], abs=1e-3)
        assert 0.1 < s["meta"]["duration_s"] <= 6.0 and np.abs(waveform).max() > 0.05


def test_zeroshot_audio_is_the_36_asterisk_digits_and_letters_all_in_val(samples):
    zeroshot = [s for s in samples["audio_text"] if s["meta"].get("eval") == "zeroshot"]
    assert sorted(s["meta"]["label"] for s in zeroshot) == sorted(DIGIT_WORDS + LETTERS)
    assert {(s["split"], s["meta"]["source"], s["meta"]["sample_rate"]) for s in zeroshot} == {
        ("val", "asterisk", 8000)
    }
    assert {s["__key__"] for s in zeroshot} >= {"asterisk-digits-7", "asterisk-letters-q"}
    for s in zeroshot:
        assert s["caption"] == s["meta"]["label"]


def test_espeak_renders_each_class_word_many_times_and_holds_out_only_voices_of_heard_words(samples):
    espeak = [s for s in samples["audio_text"] if s["meta"]["source"] == "espeak"]
    renderings = Counter(s["meta"]["label"] for s in espeak)
    assert all(renderings[w] == 12 for w in DIGIT_WORDS + LETTERS)
    heard = {s["meta"]["label"] for s in espeak if s["split"] == "train"}
    held_out = [s for s in espeak if s["split"] == "val"]
    assert heard == set(renderings) and held_out and all(s["meta"]["label"] in heard for s in held_out)
    for s in espeak:  # rendering 00 of each word is in train, the others split by their key's hash
        assert s["split"] == ("train" if s["__key__"].endswith("-00") else hash_split(s["__key__"]))
    voices = {s["meta"]["voice"] for s in espeak if s["meta"]["label"] == "seven"}
    assert len(voices) >= 8 and {s["meta"]["sample_rate"] for s in espeak} == {16000}


def test_video_directions_are_balanced_and_captioned(samples):
    clips = samples["video_text"]
    for split in SHARDS:
        directions = Counter(s["meta"]["direction"] for s in clips if s["split"] == split)
        assert set(directions) == {"left", "right", "up", "down"} and len(set(directions.values())) == 1
    for s in clips:
        meta = s["meta"]
        assert s["caption"] == f"{meta['object']} moving {meta['direction']}"
        assert s["__key__"].endswith("-" + meta["direction"]) and meta["label"] in meta["object"]
        assert (meta["num_frames"], meta["fps"]) == (8, 8)
    assert (
        Counter(s["meta"]["object"] for s in clips if s["meta"]["source"] == "digits")["the digit seven"]
        == 80
    )


def test_opposite_directions_show_the_same_frames_in_reverse(samples):
    """A bag of frames cannot tell left from right (nor up from down): the decoded frames of
    the "right" clip are exactly those of the "left" clip of the same picture, reversed."""
    frames = {}
    for s in samples["video_text"]:
        reader = decord.VideoReader(io.BytesIO(s["mp4"]))
        assert len(reader) == 8 and reader.get_avg_fps() == 8
        frames[s["__key__"]] = reader.get_batch(range(8)).asnumpy()  # [t, h, w, 3] uint8
        assert frames[s["__key__"]].shape == (8, 32, 32, 3)
    for key, clip in frames.items():
        group, direction = key.rsplit("-", 1)
        opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[direction]
        assert np.array_equal(clip, frames[f"{group}-{opposite}"][::-1]), key
        assert not np.array_equal(clip[0], clip[-1]), key  # it moves


def test_wordnet_glosses():
    rows = [
        json.loads(line)
        for line in gzip.decompress((DATA / "text" / "wordnet.jsonl.gz").read_bytes()).splitlines()
    ]
    assert len(rows) == 5000 and all(set(r) == {"word", "pos", "gloss"} and r["gloss"] for r in rows)
    assert {r["pos"] for r in rows} == {"noun", "verb", "adjective", "adverb"}
    assert rows == sorted(rows, key=lambda r: (r["word"], r["pos"], r["gloss"]))
    giraffe = [r["gloss"] for r in rows if r["word"] == "giraffe"]
    assert giraffe and giraffe[0].startswith("tallest living quadruped")
