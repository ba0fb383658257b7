"""Plant duplicates and val->train leaks in a copy of the embedded data, then score the data tools.

    uv run python scripts/plant_faults.py baseline   # mmfuse data dedup + decontaminate, untouched data
    uv run python scripts/plant_faults.py plant      # the faulty copy and planted.json (seconds)
    uv run python scripts/plant_faults.py run        # the same commands on the faulty copy
    uv run python scripts/plant_faults.py score      # recall and the flags on untouched data

``baseline`` and ``run`` print each ``mmfuse data`` command before running it (outputs under
``--out``, default ``runs/data/faults``).

``plant`` copies each set's train shards and adds one shard of planted samples
(``train-000004.tar.gz``): 50 exact duplicates (byte copies of train samples under new keys: 20
image, 15 audio, 15 video), 50 near duplicates (re-encoded and resized / re-encoded audio /
re-encoded clips, captions with light case and punctuation edits), and 30 val items leaked into
train: 10 val captions (light edits) under train pictures, 10 val pictures re-encoded and resized
under neutral captions, 10 val recordings re-encoded under neutral transcripts. Leaked items are
drawn among val items that no training sample hits on that measure in the untouched data, so a hit
is the plant's. ``planted.json`` is the ground truth.

``score`` reads the tools' reports: recall of each kind of plant, and every flag raised on the
untouched data (dedup clusters without a plant; val items hit by untouched training samples).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import av
import numpy as np
import soundfile
import webdataset as wds
from PIL import Image

from mmfuse.audio import decode_audio
from mmfuse.audio.waveform import Resampler, to_mono
from mmfuse.core.data import expand_urls, shards_to_samples

REPO = Path(__file__).resolve().parents[1]
SETS = {"image_text": "png|jpg", "audio_text": "ogg", "video_text": "mp4"}
EXACT = {"image_text": 20, "audio_text": 15, "video_text": 15}
NEAR = EXACT
LEAKS = {("image_text", "caption"): 10, ("image_text", "image"): 10, ("audio_text", "audio"): 10}
TAR = {"mtime": 0, "user": "", "group": "", "encoder": False}


def shards(name: str, split: str) -> list[str]:
    last = 3 if split == "train" else 1
    return expand_urls(str(REPO / f"data/{name}/{split}-{{000000..00000{last}}}.tar.gz"))


def samples(urls: list[str]) -> list[dict]:
    return [
        {k: v for k, v in s.items() if k != "__url__"}
        for s in shards_to_samples([{"url": u} for u in urls], bool)
    ]


def media_ext(sample: dict) -> str:
    return next(e for e in ("png", "jpg", "ogg", "mp4") if e in sample)


def edit_caption(text: str, i: int) -> str:
    """Light edits: case and punctuation only."""
    return [text.upper(), text.title() + ".", f"{text}!!", f"  {text.capitalize()} ?"][i % 4]


def reencode_image(data: bytes, i: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = (0.75, 1.5)[i % 2]
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def reencode_audio(data: bytes, i: int) -> tuple[str, bytes]:
    waveform, rate = decode_audio(data)
    mono = to_mono(waveform)
    buf = io.BytesIO()
    if i % 2:
        soundfile.write(buf, Resampler(16000)(mono, rate).numpy(), 16000, format="WAV")
        return "wav", buf.getvalue()
    soundfile.write(buf, 0.9 * mono.numpy(), rate, format="OGG", subtype="VORBIS")
    return "ogg", buf.getvalue()


def reencode_video(data: bytes) -> bytes:
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8, options={"crf": "30", "threads": "1"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def near_copy(name: str, sample: dict, key: str, i: int) -> dict:
    ext = media_ext(sample)
    out = {"__key__": key, "txt": edit_caption(sample["txt"].decode(), i).encode(), "json": sample["json"]}
    if name == "image_text":
        out["jpg"] = reencode_image(sample[ext], i)
    elif name == "audio_text":
        new_ext, data = reencode_audio(sample[ext], i)
        out[new_ext] = data
    else:
        out["mp4"] = reencode_video(sample[ext])
    return out


def untouched_hits(baseline: Path, name: str, measure: str) -> set[str]:
    """Val keys that the untouched train shards already hit on ``measure``."""
    report = json.loads((baseline / name / "decontaminate.json").read_text())
    return {i["key"] for s in report["sets"].values() for i in s["items_hit"] if measure in i["measures"]}


def plant(out: Path, seed: int, baseline: Path) -> None:
    rng = random.Random(seed)
    truth: dict[str, list[dict]] = defaultdict(list)
    for name in SETS:
        if not (baseline / name / "decontaminate.json").exists():
            raise SystemExit(f"run the baseline commands first ({baseline / name} has no decontaminate.json)")
    for name in SETS:
        target = out / "planted" / name
        target.mkdir(parents=True, exist_ok=True)
        for url in shards(name, "train"):
            shutil.copy(url, target / Path(url).name)
        train, val = samples(shards(name, "train")), samples(shards(name, "val"))
        picks = rng.sample(train, EXACT[name] + NEAR[name])
        planted = []
        for i, sample in enumerate(picks[: EXACT[name]]):
            planted.append({**sample, "__key__": f"plant-exact-{i:03d}"})
            truth["exact"].append({"set": name, "key": planted[-1]["__key__"], "original": sample["__key__"]})
        for i, sample in enumerate(picks[EXACT[name] :]):
            planted.append(near_copy(name, sample, f"plant-near-{i:03d}", i))
            truth["near"].append({"set": name, "key": planted[-1]["__key__"], "original": sample["__key__"]})
        for (set_name, kind), count in LEAKS.items():
            if set_name != name:
                continue
            clean = sorted(
                k
                for k in {s["__key__"] for s in val}
                - untouched_hits(baseline, name, kind.replace("caption", "text"))
            )
            by_key = {s["__key__"]: s for s in val}
            for i, key in enumerate(rng.sample(clean, count)):
                leaked, item = by_key[key], {"__key__": f"plant-leak-{kind}-{i:03d}"}
                if kind == "caption":
                    host = rng.choice(train)
                    ext = media_ext(host)
                    item.update(
                        {
                            ext: host[ext],
                            "txt": edit_caption(leaked["txt"].decode(), i).encode(),
                            "json": host["json"],
                        }
                    )
                elif kind == "image":
                    item.update(
                        {
                            "jpg": reencode_image(leaked[media_ext(leaked)], i),
                            "txt": f"untitled {i}".encode(),
                            "json": b"{}",
                        }
                    )
                else:
                    ext, data = reencode_audio(leaked["ogg"], i)
                    item.update({ext: data, "txt": f"recording {i}".encode(), "json": b"{}"})
                planted.append(item)
                truth[f"leak_{kind}"].append({"set": name, "key": item["__key__"], "val": key})
        with wds.TarWriter(str(target / "train-000004.tar.gz"), **TAR) as writer:
            for sample in planted:
                writer.write(sample)
        print(f"{name}: {len(planted)} planted samples in {target / 'train-000004.tar.gz'}")
    (out / "planted.json").write_text(json.dumps(truth, indent=2) + "\n")


def commands(out: Path, which: str) -> list[list[str]]:
    """The tool commands of the baseline (untouched copy) or the planted copy."""
    runs = []
    for name in SETS:
        root = f"data/{name}" if which == "baseline" else str(out / "planted" / name)
        last = 3 if which == "baseline" else 4
        train = f"{root}/train-{{000000..00000{last}}}.tar.gz"
        val = f"data/{name}/val-{{000000..000001}}.tar.gz"
        report = out / which / name
        runs.append(["mmfuse", "data", "dedup", train, "--no_copy", "--out", str(report)])
        runs.append(["mmfuse", "data", "decontaminate", "--train", train, "--eval", f"val={val}",
                     "--max_listed", "1000", "--out", str(report)])  # fmt: skip
    return runs


def score(out: Path) -> dict:
    truth = json.loads((out / "planted.json").read_text())
    result: dict = {}
    clusters, hits, exact_flags = {}, {}, {}
    for name in SETS:
        dedup = json.loads((out / "planted" / name / "dedup.json").read_text())
        clusters[name] = [{c["keep"]["key"], *(d["key"] for d in c["duplicates"])} for c in dedup["clusters"]]
        exact_flags.update({(name, d["key"]): d["exact"] for c in dedup["clusters"] for d in c["duplicates"]})
        report = json.loads((out / "planted" / name / "decontaminate.json").read_text())
        hits[name] = {i["key"]: i for s in report["sets"].values() for i in s["items_hit"]}
    for kind in ("exact", "near"):
        found = Counter()
        for plant_ in truth[kind]:
            ok = any({plant_["key"], plant_["original"]} <= members for members in clusters[plant_["set"]])
            ok = ok and exact_flags[plant_["set"], plant_["key"]] == (kind == "exact")  # labelled as planted
            found[plant_["set"], ok] += 1
        result[kind] = {
            name: f"{found[name, True]}/{found[name, True] + found[name, False]}" for name in SETS
        }
    for kind, measure in (("leak_caption", "text"), ("leak_image", "image"), ("leak_audio", "audio")):
        ok = 0
        for plant_ in truth[kind]:
            item = hits[plant_["set"]].get(plant_["val"])
            ok += bool(item) and any(
                t["key"] == plant_["key"] and any(m["measure"] == measure for m in t["matches"])
                for t in item["train"]
            )
        result[kind] = f"{ok}/{len(truth[kind])}"
    # flags on the untouched data: clusters without a plant, val items hit by untouched samples
    planted_keys = {p["key"] for plants in truth.values() for p in plants}
    result["untouched"] = {}
    for name in SETS:
        extra = [m for m in clusters[name] if not m & planted_keys]
        flagged = set()  # (val key, measure) hit by an untouched training sample
        for item in hits[name].values():
            for t in item["train"]:
                if t["key"] not in planted_keys:
                    flagged.update((item["key"], m["measure"]) for m in t["matches"])
        per_measure = Counter(measure for _, measure in flagged)
        result["untouched"][name] = {"dedup_clusters": len(extra), "dedup_samples": sum(map(len, extra)),
                                     "val_items_hit": dict(sorted(per_measure.items()))}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("baseline", "plant", "run", "score"))
    parser.add_argument("--out", type=Path, default=REPO / "runs/data/faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", type=Path, default=None, help="baseline reports (default OUT/baseline)")
    args = parser.parse_args()
    if args.step in ("baseline", "run"):
        for command in commands(args.out, "baseline" if args.step == "baseline" else "planted"):
            print("$", " ".join(f"'{c}'" if "{" in c else c for c in command), flush=True)
            # the console script beside this interpreter (the venv's bin/)
            subprocess.run(
                [str(Path(sys.executable).parent / command[0]), *command[1:]], check=True, cwd=REPO
            )
    elif args.step == "plant":
        plant(args.out, args.seed, args.baseline or args.out / "baseline")
    else:
        print(json.dumps(score(args.out), indent=2))


if __name__ == "__main__":
    main()
