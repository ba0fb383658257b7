"""Build the embedded default dataset under ``data/`` from real, redistributable sources.

Run ``uv run --group data python scripts/build_data.py`` (root on Debian: it calls ``apt-get
download`` and, when ``espeak-ng`` is missing, ``apt-get install``). Downloads and extracted
packages go to the ignored scratch dir ``data/.work/``; a rerun reuses them and rewrites the same
bytes. ``data/README.md`` describes the output and ``LICENSES/`` each source.

Sources:
    * scikit-learn ``load_digits`` (UCI hand-written digits, CC-BY-4.0): images + video sprites.
    * Debian ``qabcs-data`` (GPL-3+): labelled pictures, label = file name.
    * Debian ``tuxpaint-stamps-default`` (GPL-2): stamps with an English description.
    * Debian ``asterisk-core-sounds-en-wav`` (CC-BY-SA-3.0): 8 kHz human speech with transcripts
      from ``asterisk-core-sounds-en``; its 36 digit and letter recordings are the held-out
      zero-shot test set (val only).
    * Debian ``espeak-ng`` (GPL-3): synthetic 16 kHz speech of the class words; a word's first
      rendering is always in train, its others split by key hash (val holds voices of heard words).
    * Debian ``wordnet-base`` (WordNet 3.0 licence): glosses.

Splits are fixed by a hash of the key (:func:`media_bytes.split_of`), never by shuffle order.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import string
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import inflect
import numpy as np
import soundfile as sf
from media_bytes import Sample, encode_jpeg, encode_mp4, encode_ogg_opus, encode_png, split_of, write_shards
from PIL import Image
from scipy.signal import resample_poly
from sklearn.datasets import load_digits

REPO = Path(__file__).resolve().parents[1]

# Pinned so that a rebuild reads the same files; ``apt-get download`` fails if a version is gone.
DEBIAN_PACKAGES = {
    "qabcs-data": "1.0.2-6",
    "tuxpaint-stamps-default": "2022.06.04-1",
    "asterisk-core-sounds-en-wav": "1.6.1-1",
    "asterisk-core-sounds-en": "1.6.1-1",
    "wordnet-base": "1:3.0-37",
}
SEED = 1234
NUM_SHARDS = {"train": 4, "val": 2}

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LETTERS = tuple(string.ascii_lowercase)

IMAGE_SIDE = 64  # px, longer side of qabcs / tuxpaint pictures
DIGIT_SIDE = 32  # px, digits upscaled 4x (nearest) from 8x8
DIGIT_TEMPLATES = (
    "a handwritten digit {}",
    "the number {} written by hand",
    "a handwritten {}",
    "the digit {}",
    "a low-resolution scan of the digit {}",
    "a handwritten number {}",
)
PICTURE_TEMPLATES = ("{}", "a picture of {}", "a photo of {}", "an image of {}")
# qabcs names that take no indefinite article (plurals, mass nouns) and proper names we leave out.
QABCS_NO_ARTICLE = {
    "apples", "bagpipes", "balloons", "bananas", "beans", "cherries", "cymbals", "dice", "drums",
    "fries", "grapes", "kidney beans", "lazanki", "maracas", "radishes", "spoons", "sprats",
    "uszka", "vegetables", "cauliflower au gratin", "corn", "earth", "fire", "garlic", "gelatin",
    "ginger", "halva", "hockey", "honey", "ice cream", "juice", "ketchup", "lasagna", "lavash",
    "meat", "oil", "olivier", "origami", "otak-otak", "sherry", "sorrel", "stewed duck", "udon",
    "wasabi", "whole grain bread", "yakult", "yogurt",
}  # fmt: skip
QABCS_PROPER_NAMES = {
    "cheburashka", "dogmatix", "dunno", "emelya", "ivasyk", "ole lukoje", "umka", "ursula", "x-men",
    "xbox", "yaga", "york",
}  # fmt: skip

CLIP_SIDE = 32  # px; decord 0.6 needs widths that are multiples of 32
SPRITE_SIDE = 16  # px, longer side of a moving object
CLIP_FRAMES = 8
CLIP_FPS = 8
CLIP_STEP = 2  # px per frame
DIGITS_PER_CLASS_IN_VIDEO = 20
PICTURES_IN_VIDEO = 300  # qabcs + tuxpaint sprites, chosen by key hash

ASTERISK_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_MAX_S = 6.0
ESPEAK_RATE = 16_000
ESPEAK_VOICES = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
    "en-us-nyc",
)  # fmt: skip
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5", "klatt")
ESPEAK_RENDERINGS = {"digit_or_letter": 12, "other": 2}

WORDNET_FILES = {"noun": "data.noun", "verb": "data.verb", "adjective": "data.adj", "adverb": "data.adv"}
WORDNET_ENTRIES = 5000


@dataclass
class Sprite:
    """An object that moves across the video frames.

    Attributes:
        key: key of the image it comes from; its clips share that key's split.
        source: dataset source name.
        label: class word, e.g. ``"seven"``.
        noun_phrase: label with its determiner, e.g. ``"the digit seven"``, ``"an eagle"``.
        rgba: ``[h, w, 4]`` uint8, straight (not premultiplied) alpha; h, w <= ``SPRITE_SIDE``.
        background: RGB colour of the plain canvas it moves on.
    """

    key: str
    source: str
    label: str
    noun_phrase: str
    rgba: np.ndarray
    background: tuple[int, int, int]


def stable_int(text: str) -> int:
    """A 64-bit integer from SHA-256 of ``text``: a seed or choice that does not depend on order."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def slug(text: str) -> str:
    """``text`` lower-cased with every run of characters outside ``[a-z0-9]`` turned into ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def fetch_debian_packages(work: Path) -> Path:
    """Download the pinned packages into ``work/debs`` and unpack them into ``work/root``.

    Both steps are skipped for packages already there. Returns the unpacked root.

    Raises:
        subprocess.CalledProcessError: when ``apt-get download`` or ``dpkg-deb`` fails (run
            ``apt-get update`` if the pinned version is not found).
    """
    debs, root = work / "debs", work / "root"
    debs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    for name, version in DEBIAN_PACKAGES.items():
        deb = debs / f"{name}_{version.replace(':', '%3a')}_all.deb"
        if not deb.exists():
            subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=debs, check=True)
        marker = root / f".{deb.name}.unpacked"
        if not marker.exists():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            marker.touch()
    return root


def ensure_espeak() -> str:
    """Install Debian's ``espeak-ng`` when missing; return its version line.

    Raises:
        subprocess.CalledProcessError: when the install fails (needs root and apt lists).
    """
    if shutil.which("espeak-ng") is None:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "espeak-ng"], check=True)
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("  Data at")[0].strip()


def fit_rgba(path: Path, side: int) -> Image.Image:
    """The picture at ``path`` as RGBA, resized (Lanczos, premultiplied alpha) to longer side ``side``."""
    image = Image.open(path).convert("RGBA")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Premultiplied resampling keeps transparent pixels' colour out of the edges.
    return image.convert("RGBa").resize(size, Image.Resampling.LANCZOS).convert("RGBA")


def on_white(image: Image.Image) -> np.ndarray:
    """``[h, w, 3]`` uint8: an RGBA image composited over white."""
    return np.asarray(Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB"))


def digit_sources() -> tuple[list[Sample], list[Sprite]]:
    """The 1,797 scikit-learn digits as 32x32 PNGs, and 20 per class as video sprites.

    Pixels 0..16 (ink) map to 0..255 (white ink on black, as in the source), upscaled 4x
    (nearest) so no value is invented. Captions use one of ``DIGIT_TEMPLATES`` per key.
    """
    digits = load_digits()
    gray = np.round(digits.images * (255 / 16)).astype(np.uint8)  # [n, 8, 8]
    samples, sprites, per_class = [], [], Counter()
    for index, (image, target) in enumerate(zip(gray, digits.target, strict=True)):
        key, word = f"digits-{index:04d}", DIGIT_WORDS[target]
        big = image.repeat(DIGIT_SIDE // 8, 0).repeat(DIGIT_SIDE // 8, 1)  # [8, 8] -> [32, 32]
        caption = DIGIT_TEMPLATES[stable_int(key) % len(DIGIT_TEMPLATES)].format(word)
        meta = {"source": "digits", "label": word}
        samples.append(Sample(key, "png", encode_png(big), caption, meta, split_of(key)))
        if per_class[word] < DIGITS_PER_CLASS_IN_VIDEO:
            per_class[word] += 1
            ink = image.repeat(SPRITE_SIDE // 8, 0).repeat(SPRITE_SIDE // 8, 1)  # [8, 8] -> [16, 16]
            rgba = np.dstack([np.full((*ink.shape, 3), 255, np.uint8), ink])
            sprites.append(Sprite(key, "digits", word, f"the digit {word}", rgba, (0, 0, 0)))
    return samples, sprites


def qabcs_sources(root: Path) -> tuple[list[Sample], list[Sprite]]:
    """qabcs pictures (label = file name) as 64 px JPEGs on white, and each as a video sprite."""
    engine = inflect.engine()
    samples, sprites = [], []
    for path in sorted((root / "usr/share/qabcs/abcs/all/pics").glob("*/*.png")):
        label = path.stem.replace("_", " ")
        if label in QABCS_PROPER_NAMES:
            continue
        key = f"qabcs-{slug(path.stem)}"
        noun_phrase = label if label in QABCS_NO_ARTICLE else engine.a(label)
        caption = PICTURE_TEMPLATES[stable_int(key) % len(PICTURE_TEMPLATES)].format(noun_phrase)
        meta = {"source": "qabcs", "label": label, "object": noun_phrase, "file": str(path.relative_to(root))}
        image = encode_jpeg(on_white(fit_rgba(path, IMAGE_SIDE)))
        samples.append(Sample(key, "jpg", image, caption, meta, split_of(key)))
        rgba = np.asarray(fit_rgba(path, SPRITE_SIDE))
        sprites.append(Sprite(key, "qabcs", label, noun_phrase, rgba, (255, 255, 255)))
    return samples, sprites


def clean_description(text: str) -> str:
    """First sentence of a Tux Paint stamp description, without quotes, parentheses or end mark.

    ``'A US 25 cent piece ($.25) called a quarter.'`` -> ``'a US 25 cent piece called a quarter'``;
    a leading article is lower-cased, other capitals kept.
    """
    text = re.sub(r"[\"“”«»]", "", text).replace("‘", "'").replace("’", "'")
    text = re.sub(r"\s*\([^)]*\)", "", text)
    text = re.split(r"(?<=[.!?…])\s", text.strip())[0]
    text = re.sub(r"\s+", " ", text).strip(" .!?…–-")
    return re.sub(r"^(A|An|The) ", lambda m: m.group(0).lower(), text)


def tuxpaint_sources(root: Path) -> tuple[list[Sample], list[Sprite]]:
    """Stamps with an English description, as 64 px JPEGs on white, captioned by that description.

    The label is the description without its leading article. Stamps described by a short plain
    noun phrase (``"a great blue heron"``) also become video sprites. Stamps without a ``.txt``
    (the ``*_mirror.png`` variants) are skipped.
    """
    samples, sprites, seen = [], [], set()
    stamps = root / "usr/share/tuxpaint/stamps"
    paths = [p for p in sorted(stamps.rglob("*.png")) if p.with_suffix(".txt").exists()]
    for index, path in enumerate(paths):
        pixels = on_white(fit_rgba(path, IMAGE_SIDE))
        digest = hashlib.sha256(pixels.tobytes()).digest()
        if digest in seen:  # a stamp shipped twice under two names (a train/val leak if kept)
            continue
        seen.add(digest)
        caption = clean_description(path.with_suffix(".txt").read_text(encoding="utf-8").splitlines()[0])
        label = re.sub(r"^(a|an|the) ", "", caption)
        key = f"tuxpaint-{index:04d}"  # the index among all stamps, so a dropped one moves no key
        meta = {"source": "tuxpaint", "label": label, "file": str(path.relative_to(root))}
        image = encode_jpeg(pixels)
        samples.append(Sample(key, "jpg", image, caption, meta, split_of(key)))
        if re.fullmatch(r"(a|an) [a-z]+( [a-z]+){0,2}", caption):
            rgba = np.asarray(fit_rgba(path, SPRITE_SIDE))
            sprites.append(Sprite(key, "tuxpaint", label, caption, rgba, (255, 255, 255)))
    return samples, sprites


def render_path(sprite: Sprite, positions: list[tuple[int, int]]) -> np.ndarray:
    """``[t, CLIP_SIDE, CLIP_SIDE, 3]`` uint8 frames: the sprite at each ``(y, x)`` top-left."""
    h, w = sprite.rgba.shape[:2]
    alpha = sprite.rgba[..., 3:].astype(np.float32) / 255
    frames = np.empty((len(positions), CLIP_SIDE, CLIP_SIDE, 3), np.uint8)
    for t, (y, x) in enumerate(positions):
        canvas = np.empty((CLIP_SIDE, CLIP_SIDE, 3), np.float32)
        canvas[:] = sprite.background
        region = canvas[y : y + h, x : x + w]
        region[:] = alpha * sprite.rgba[..., :3] + (1 - alpha) * region
        frames[t] = np.round(canvas).astype(np.uint8)
    return frames


def motion_clips(sprite: Sprite) -> list[Sample]:
    """Four clips of ``sprite`` moving left, right, up and down across a plain canvas.

    The sprite moves ``CLIP_STEP`` px per frame and stays whole inside the frame. "right" is
    "left" played backwards (same random start, same row), and "down" is "up" backwards, so
    the unordered set of frames is the same for opposite directions: only frame order tells
    them apart. Frames are coded independently (:func:`media_bytes.encode_mp4`), which keeps
    that true after decoding.
    """
    h, w = sprite.rgba.shape[:2]
    travel = CLIP_STEP * (CLIP_FRAMES - 1)
    rng = np.random.default_rng(stable_int(sprite.key + "/motion"))
    x0, y = int(rng.integers(0, CLIP_SIDE - w - travel + 1)), int(rng.integers(0, CLIP_SIDE - h + 1))
    y0, x = int(rng.integers(0, CLIP_SIDE - h - travel + 1)), int(rng.integers(0, CLIP_SIDE - w + 1))
    right = [(y, x0 + CLIP_STEP * t) for t in range(CLIP_FRAMES)]
    down = [(y0 + CLIP_STEP * t, x) for t in range(CLIP_FRAMES)]
    paths = {"left": right[::-1], "right": right, "up": down[::-1], "down": down}
    clips = []
    for direction, positions in paths.items():
        key = f"{sprite.key}-{direction}"
        meta = {
            "source": sprite.source,
            "label": sprite.label,
            "object": sprite.noun_phrase,
            "direction": direction,
            "num_frames": CLIP_FRAMES,
            "fps": CLIP_FPS,
        }
        video = encode_mp4(render_path(sprite, positions), CLIP_FPS)
        clips.append(
            Sample(key, "mp4", video, f"{sprite.noun_phrase} moving {direction}", meta, split_of(sprite.key))
        )
    return clips


def clean_transcript(text: str) -> str:
    """An Asterisk transcript without notes, fragment ellipses or extra spaces.

    ``'at [@]'`` -> ``'at'``; ``'(1 second of silence)'`` and ``'<beep ascending>'`` -> ``''``;
    ``'...has joined the conference.'`` -> ``'has joined the conference.'``.
    """
    text = re.sub(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)", "", text)
    text = re.sub(r"^\s*(\.\.\.|…)|(\.\.\.|…)\s*$", "", text)
    return re.sub(r"\s+", " ", text).strip()


def asterisk_samples(root: Path) -> list[Sample]:
    """Allison Smith's recordings (8 kHz) as Ogg Opus, captioned by their transcripts.

    ``digits/0..9`` and ``letters/a..z`` go to val with ``"eval": "zeroshot"`` (the held-out
    real-speech test of 36 classes); the rest split by key hash, where recordings of one sentence
    share the split of the first of them (``confbridge-dec-list-vol-in`` / ``-out`` is one sentence
    said twice: a leak when split apart). Recordings longer than ``ASTERISK_MAX_S`` and ones whose
    transcript is only a note (tones, silence) are dropped.
    """
    listing = gzip.decompress(
        (root / "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz").read_bytes()
    )
    transcripts = {}
    for line in listing.decode("utf-8").splitlines():
        name, sep, text = line.partition(": ")
        if sep and not name.startswith(";"):
            transcripts[name] = clean_transcript(text)
    zeroshot = {f"digits/{i}" for i in range(10)} | {f"letters/{c}" for c in LETTERS}
    samples, first_of_sentence = [], {}
    for name, text in sorted(transcripts.items()):
        path = root / ASTERISK_DIR / f"{name}.wav"
        if not text or not path.exists():
            continue
        waveform, rate = sf.read(path, dtype="int16")
        if len(waveform) > ASTERISK_MAX_S * rate:
            continue
        key = f"asterisk-{slug(name)}"
        group = first_of_sentence.setdefault(re.sub(r"[^a-z0-9]+", " ", text.lower()).strip(), key)
        meta = {
            "source": "asterisk",
            "label": text,
            "sample_rate": rate,
            "duration_s": round(len(waveform) / rate, 3),
        }
        if name in zeroshot:
            meta["eval"] = "zeroshot"
        split = "val" if name in zeroshot else split_of(group)
        samples.append(Sample(key, "ogg", encode_ogg_opus(waveform, rate, 12_000), text, meta, split))
    return samples


def espeak_samples(words: list[str]) -> list[Sample]:
    """espeak-ng renderings of ``words``, resampled to 16 kHz.

    Rendering 0 of every word is in train; the others split by their key's hash, so a val
    rendering is a new voice, speed and pitch of a word heard in training.

    12 renderings for each of the 36 digit and letter words, 2 for any other word. Each draws a
    voice, variant, speed (words per minute) and pitch (0-99) from a seed that depends on the
    word and the rendering index only. Letters are passed as the bare letter, which espeak-ng
    reads as its name (``"z"`` is "zee" in American voices, "zed" in British ones).
    """
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        for word in words:
            kind = "digit_or_letter" if word in DIGIT_WORDS or word in LETTERS else "other"
            for i in range(ESPEAK_RENDERINGS[kind]):
                rng = np.random.default_rng(stable_int(f"espeak/{word}/{i}"))
                voice = f"{rng.choice(ESPEAK_VOICES)}+{rng.choice(ESPEAK_VARIANTS)}"
                speed, pitch = int(rng.integers(120, 200)), int(rng.integers(25, 75))
                cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), word]
                subprocess.run(cmd, check=True)
                waveform, rate = sf.read(wav, dtype="float32")
                resampled = resample_poly(waveform, ESPEAK_RATE, rate)  # 22,050 Hz -> 16 kHz
                pcm = np.round(np.clip(resampled, -1, 1) * 32767).astype(np.int16)
                key = f"espeak-{slug(word)}-{i:02d}"
                split = "train" if i == 0 else split_of(key)
                meta = {
                    "source": "espeak",
                    "label": word,
                    "voice": voice,
                    "speed": speed,
                    "pitch": pitch,
                    "sample_rate": ESPEAK_RATE,
                    "duration_s": round(len(pcm) / ESPEAK_RATE, 3),
                }
                samples.append(
                    Sample(key, "ogg", encode_ogg_opus(pcm, ESPEAK_RATE, 16_000), word, meta, split)
                )
    return samples


def wordnet_entries(root: Path, vocabulary: set[str]) -> list[dict[str, str]]:
    """WordNet glosses of our vocabulary, topped up with a seeded sample of other synsets.

    Returns ``{"word", "pos", "gloss"}`` rows: one per synset of each vocabulary word, then
    other synsets (under their first lemma) up to ``WORDNET_ENTRIES`` rows. Lemmas are matched
    lower-cased with ``_`` for spaces, as WordNet writes them. Sorted by word, part of speech and
    gloss.
    """
    entries, others = set(), []
    for pos, filename in WORDNET_FILES.items():
        for line in (root / "usr/share/wordnet" / filename).read_text(encoding="utf-8").splitlines():
            if line.startswith("  "):  # licence header
                continue
            fields, _, gloss = line.partition(" | ")
            parts = fields.split()
            count = int(parts[3], 16)
            lemmas = [re.sub(r"\(.*\)$", "", lemma) for lemma in parts[4 : 4 + 2 * count : 2]]
            matches = [lemma for lemma in lemmas if lemma.lower() in vocabulary]
            for lemma in matches:
                entries.add((lemma.replace("_", " "), pos, gloss.strip()))
            if not matches:
                others.append((lemmas[0].replace("_", " "), pos, gloss.strip()))
    rng = np.random.default_rng(SEED)
    extra = rng.choice(len(others), size=max(0, WORDNET_ENTRIES - len(entries)), replace=False)
    entries.update(others[i] for i in extra)
    return [{"word": w, "pos": p, "gloss": g} for w, p, g in sorted(entries)]


def write_jsonl_gz(rows: list[dict[str, str]], path: Path) -> None:
    """Gzip'd JSON lines with a zeroed header timestamp and no file name, so the bytes are stable."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))


def write_modality(samples: list[Sample], out: Path) -> int:
    """Replace ``out``'s shards with train and val shards of ``samples``; return their bytes."""
    for old in [*out.glob("*.tar"), *out.glob("*.tar.gz")]:
        old.unlink()
    paths = []
    for split, num_shards in NUM_SHARDS.items():
        paths += write_shards([s for s in samples if s.split == split], out, split, num_shards, SEED)
    return sum(p.stat().st_size for p in paths)


def summarize(name: str, samples: list[Sample], num_bytes: int) -> None:
    """Print sample counts per split and source, and the modality's size on disk."""
    counts = Counter((s.split, s.meta["source"]) for s in samples)
    detail = ", ".join(f"{split}/{source} {n}" for (split, source), n in sorted(counts.items()))
    print(f"{name}: {len(samples)} samples, {num_bytes / 1e6:.2f} MB ({detail})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "data", help="output root (default: data/)")
    parser.add_argument("--work", type=Path, default=REPO / "data/.work", help="scratch dir for packages")
    args = parser.parse_args()
    start = time.perf_counter()

    root = fetch_debian_packages(args.work)
    espeak_version = ensure_espeak()

    digit_images, digit_sprites = digit_sources()
    qabcs_images, qabcs_sprites = qabcs_sources(root)
    tux_images, tux_sprites = tuxpaint_sources(root)
    images = digit_images + qabcs_images + tux_images
    summarize("image_text", images, write_modality(images, args.out / "image_text"))

    pictures = sorted(qabcs_sprites + tux_sprites, key=lambda s: stable_int(s.key))[:PICTURES_IN_VIDEO]
    clips = [clip for sprite in digit_sprites + pictures for clip in motion_clips(sprite)]
    summarize("video_text", clips, write_modality(clips, args.out / "video_text"))

    spoken = list(DIGIT_WORDS + LETTERS) + sorted({s.label for s in qabcs_sprites})
    speech = asterisk_samples(root) + espeak_samples(spoken)
    summarize("audio_text", speech, write_modality(speech, args.out / "audio_text"))

    vocabulary = {s.meta["label"].lower().replace(" ", "_") for s in images + speech}
    glosses = wordnet_entries(root, vocabulary)
    gloss_path = args.out / "text/wordnet.jsonl.gz"
    write_jsonl_gz(glosses, gloss_path)
    print(f"text: {len(glosses)} WordNet glosses, {gloss_path.stat().st_size / 1e6:.2f} MB")
    print(f"{espeak_version}; built in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
