"""``mmfuse pipeline``: recipe checks, fingerprints, SLURM chaining, and a killed pipeline resumed."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from pairs import colour_pairs, fit_config

from mmfuse.training.pipeline import Pipeline, RecipeError, _call, fingerprint, load_recipe, main

REPO = Path(__file__).resolve().parents[2]
DPO = "mmfuse.training.stages.dpo.DirectPreferenceOptimization"


def _recipe(tmp_path: Path, stages: list[dict]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"directory": str(tmp_path / "pipe"), "stages": stages}))
    return path


def _configs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "towers").mkdir()
    (tmp_path / "towers" / "t.yaml").write_text("lr: 1\n")
    a = tmp_path / "a.yaml"
    a.write_text("model: {tower: towers/t.yaml}\n")
    b = tmp_path / "b.yaml"
    b.write_text("model: {}\n")
    return a, b


def test_the_assistant_recipe_loads_and_chains_every_stage_on_an_earlier_one(monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = load_recipe(REPO / "training/recipes/assistant.yaml")
    names = [s.name for s in recipe.stages]
    assert names[:5] == ["align_image", "align_frames", "align_audio", "align_video", "sft"]
    assert recipe.stage("align_video").references() == ["align_frames"]  # its frame encoder
    for stage in recipe.stages[3:]:
        assert stage.references(), stage.name  # every stage after the first alignments starts from one
    sft = recipe.stage("sft")
    assert sft.references() == ["align_image", "align_audio", "align_video"]
    layer = recipe.substitute(sft.set, sft)
    towers = layer["model.init_args.model.init_args.tower_checkpoints"]
    assert towers["image"] == str(Path("runs/assistant/align_image/checkpoints/best.ckpt"))  # monitored
    assert recipe.checkpoint(recipe.stage("dpo")) == str(Path("runs/assistant/dpo/checkpoints/last.ckpt"))


@pytest.mark.parametrize(
    ("stages", "field"),
    [
        ([{"name": "a", "config": "a.yaml", "sett": {}}], "stages.a: unknown key(s) ['sett']"),
        ([{"name": "a", "config": "a.yaml", "set": {"x": "${b}"}}], "stages.a: ${b} is not an earlier stage"),
        ([{"name": "a", "config": "missing.yaml"}], "stages.a.config: no such file"),
        ([{"name": "a", "run": "merge", "config": "a.yaml"}], "stages.a: `merge` is not a LightningCLI run"),
        ([{"name": "a", "config": "a.yaml"}, {"name": "a", "config": "a.yaml"}], "a second stage"),
    ],
)
def test_a_wrong_recipe_names_the_field(tmp_path, stages, field, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _configs(tmp_path)
    with pytest.raises(RecipeError) as error:
        load_recipe(_recipe(tmp_path, stages))
    assert field in str(error.value)


def test_a_changed_config_or_upstream_changes_the_fingerprints_downstream_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = _configs(tmp_path)
    path = _recipe(tmp_path, [
        {"name": "a", "config": "a.yaml"},
        {"name": "b", "config": "b.yaml", "set": {"model.init_from": "${a}"}},
        {"name": "c", "config": "b.yaml"},
    ])  # fmt: skip

    def prints() -> dict[str, str]:
        recipe, out = load_recipe(path), {}
        for stage in recipe.stages:
            out[stage.name] = fingerprint(recipe, stage, out)
        return out

    before = prints()
    (tmp_path / "towers" / "t.yaml").write_text("lr: 2\n")  # a file that a.yaml names by a relative path
    after = prints()
    assert after["a"] != before["a"] and after["b"] != before["b"] and after["c"] == before["c"]


def test_a_changed_stage_keeps_its_previous_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _configs(tmp_path)
    path = _recipe(tmp_path, [{"name": "a", "run": "merge", "args": ["--x"], "checkpoint": "${dir}/m.ckpt"}])
    pipeline = Pipeline(load_recipe(path), path)
    pipeline.entries["a"].update(status="done", starts=1)
    pipeline.save()
    (tmp_path / "pipe" / "a").mkdir()
    (tmp_path / "pipe" / "a" / "m.ckpt").write_text("old")
    assert Pipeline(load_recipe(path), path).entries["a"]["status"] == "done"  # same inputs: kept

    path = _recipe(tmp_path, [{"name": "a", "run": "merge", "args": ["--y"], "checkpoint": "${dir}/m.ckpt"}])
    changed = Pipeline(load_recipe(path), path)
    assert changed.entries["a"]["status"] == "pending" and changed.entries["a"]["starts"] == 0
    changed._retire(changed.recipe.stage("a"))
    assert (tmp_path / "pipe" / "a.superseded-1" / "m.ckpt").read_text() == "old"


def test_a_given_checkpoint_replaces_its_stage_and_skips_what_only_it_needed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _configs(tmp_path)
    (tmp_path / "mine.ckpt").write_bytes(b"weights")
    path = _recipe(tmp_path, [
        {"name": "a", "config": "a.yaml"},
        {"name": "b", "config": "b.yaml", "set": {"model.init_from": "${a}"}},
        {"name": "c", "config": "b.yaml", "set": {"model.init_from": "${b}"}},
        {"name": "d", "config": "a.yaml"},
    ])  # fmt: skip
    pipeline = Pipeline(load_recipe(path), path, {"b": "mine.ckpt"})
    assert [pipeline.entries[n]["status"] for n in "abcd"] == ["skipped", "given", "pending", "pending"]
    assert pipeline.entries["b"]["run_dir"] == "."  # mine.ckpt's run: the report reads its metrics there
    layer = pipeline.recipe.substitute(pipeline.recipe.stage("c").set, pipeline.recipe.stage("c"))
    assert layer == {"model.init_from": "mine.ckpt"}
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"other weights")
    changed = Pipeline(load_recipe(path), path, {"b": str(other)})
    assert changed.entries["c"]["fingerprint"] != pipeline.entries["c"]["fingerprint"]  # by the bytes
    assert changed.entries["d"]["fingerprint"] == pipeline.entries["d"]["fingerprint"]
    with pytest.raises(RecipeError, match="no stage 'x'"):
        Pipeline(load_recipe(path), path, {"x": "mine.ckpt"})


def test_slurm_submission_chains_each_stage_on_the_jobs_it_references(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _configs(tmp_path)
    path = _recipe(tmp_path, [
        {"name": "a", "config": "a.yaml"},
        {"name": "b", "config": ["b.yaml", "a.yaml"], "set": {"model.init_from": "${a}"}},
        {"name": "m", "run": "merge", "args": ["${a}", "${b}", "--out", "${dir}/x.ckpt"],
         "checkpoint": "${dir}/x.ckpt"},
    ])  # fmt: skip
    assert main([str(path), "--slurm", "--dry_run"]) == 0
    a, b, m = capsys.readouterr().out.splitlines()
    assert "--dependency" not in a and "CONFIG=a.yaml" in a and "SUBCOMMAND=fit" in a
    assert "training/slurm/fit.sbatch --config b.yaml" not in b  # the first config goes in CONFIG
    assert "--dependency=afterok:<a>" in b and "CONFIG=b.yaml" in b and "--config a.yaml" in b
    assert "--dependency=afterok:<a>:<b>" in m and "--wrap=mmfuse merge" in m
    assert f"{tmp_path / 'pipe' / 'b' / 'checkpoints' / 'last.ckpt'}" in m  # no monitor: the final weights


@pytest.mark.slow  # four tiny fits and a merge, each its own process: ~2 min on 2 cores
def test_a_pipeline_killed_in_a_stage_resumes_it_at_its_step_and_never_reruns_a_finished_one(
    tmp_path, monkeypatch
):
    train = str(colour_pairs(tmp_path / "train.tar.gz", 24))
    val = str(colour_pairs(tmp_path / "val.tar.gz", 6, offset=24))
    first = fit_config(DPO, tmp_path / "first", train, val)
    second = fit_config(DPO, tmp_path / "second", train, val)
    probes = Path(__file__).parent  # probes.KillOnceAtStep, imported by the stage processes
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(probes), os.environ.get("PYTHONPATH", "")]))
    marker = str(tmp_path / "killed")
    kill = {"class_path": "probes.KillOnceAtStep", "init_args": {"step": 3, "marker": marker}}
    path = _recipe(tmp_path, [
        {"name": "sft", "config": str(first)},
        {"name": "dpo", "config": str(second), "set": {
            "model.init_args.init_from": "${sft}", "checkpoint.every_n_train_steps": 2,
            "trainer.callbacks": [kill]}},
        {"name": "soup", "run": "merge", "checkpoint": "${dir}/merged.ckpt",
         "args": ["--method", "linear", "${sft}", "${dpo}", "--out", "${dir}/merged.ckpt"]},
        {"name": "soup_eval", "run": "eval", "config": str(second),
         "set": {"model.init_args.init_from": "${soup}"}},
    ])  # fmt: skip
    pipe = tmp_path / "pipe"

    assert main([str(path)]) != 0  # the DPO stage's process is killed -9 at step 3
    state = {s["name"]: s for s in json.loads((pipe / "pipeline.json").read_text())["stages"]}
    assert state["sft"]["status"] == "done" and state["dpo"]["status"] == "failed"
    sft_ckpt = pipe / "sft" / "checkpoints" / "last.ckpt"
    sft_mtime = sft_ckpt.stat().st_mtime_ns

    assert main([str(path)]) == 0  # the same command
    state = {s["name"]: s for s in json.loads((pipe / "pipeline.json").read_text())["stages"]}
    assert [state[n]["status"] for n in state] == ["done"] * 4
    assert state["sft"]["starts"] == 1 and sft_ckpt.stat().st_mtime_ns == sft_mtime  # not rerun
    assert state["dpo"]["starts"] == 2
    steps = []
    for version in ("version_0", "version_1"):
        rows = csv.DictReader(open(pipe / "dpo" / "lightning_logs" / version / "metrics.csv"))
        steps.append(sorted({int(r["step"]) for r in rows if r.get("train/loss")}))
    assert steps == [[0, 1, 2], [2, 3]]  # killed at step 3; resumed from step 2's checkpoint
    assert (pipe / "soup" / "merged.ckpt").exists()
    assert list((pipe / "soup_eval").rglob("eval.json"))


def test_a_running_stage_reports_its_wall_time_while_it_runs():
    """The pipeline writes a stage's wall time as it goes, so a pipeline killed mid-stage keeps it."""
    ticks = []
    status = _call(
        [sys.executable, "-c", "import time; time.sleep(0.5)"], every_s=0.1, tick=lambda: ticks.append(1)
    )
    assert status == 0 and 2 <= len(ticks) <= 6
