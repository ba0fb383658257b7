"""``mmfuse pipeline RECIPE``: the stages of a recipe in order, each an ordinary ``mmfuse`` run.

    mmfuse pipeline training/recipes/assistant.yaml            # run (or resume) every stage here
    mmfuse pipeline training/recipes/assistant.yaml --slurm    # one sbatch job per stage, chained
    mmfuse report runs/assistant                                # one report of every stage

A recipe is YAML::

    directory: runs/assistant          # the pipeline directory: one run directory per stage
    stages:
      - name: sft
        config: [training/configs/sft/embedded.yaml]          # `mmfuse fit --config ...`
        set:                                                   # a config layer, dotted keys
          model.init_args.model.init_args.tower_checkpoints: {image: ${align_image}}
      - name: dpo
        config: training/configs/dpo/embedded.yaml
        set: {model.init_args.init_from: ${sft}}
      - name: dpo_eval
        run: eval                                              # `mmfuse eval`: held-out metrics + CIs
        config: training/configs/sft/embedded.yaml
        set: {model.init_args.init_from: ${dpo}}
      - name: soup
        run: merge                                             # any other `mmfuse` command
        args: [--method, linear, ${sft}, ${dpo}, --out, ${dir}/merged.ckpt]
        checkpoint: ${dir}/merged.ckpt

``${name}`` is stage ``name``'s chosen checkpoint, ``${name.dir}`` its run directory and ``${dir}``
the stage's own. A LightningCLI stage (``run`` ``fit``, the default, ``validate`` or ``eval``) runs in
``DIRECTORY/<name>`` (``trainer.default_root_dir``) with the ``set`` layer written beside it
(``DIRECTORY/<name>/recipe-layer.yaml``, the last ``--config``). A ``fit`` stage's chosen checkpoint is
``checkpoints/best.ckpt`` when its configs set ``checkpoint.monitor`` (the pipeline sets
``checkpoint.filename=best``: one kept, no ``-v1`` copies), else ``checkpoints/last.ckpt``, the final
step's weights (:class:`mmfuse.training.checkpoint.FinalStepCheckpoint` writes it at the end of training
even off the periodic schedule; with no monitor, Lightning's top-1 "best" is the last periodic save).
Either path is known before the stage runs. Other commands name theirs with ``checkpoint``.

State lives in ``DIRECTORY/pipeline.json`` (read by ``mmfuse report``): per stage its status
(pending, running, done, failed, submitted), fingerprint, starts, wall time (summed over its starts,
written every 10 s while it runs, so a killed pipeline keeps it) and checkpoint.

* **Resumable stage by stage.** A ``done`` stage whose fingerprint is unchanged is never rerun. An
  unfinished ``fit`` stage (killed, failed) restarts with ``--ckpt_path last``: Lightning restores
  the step, the optimiser and the data position.
* **Fingerprints.** A stage's fingerprint hashes its command, its config files' bytes (and those of
  every ``*.yaml`` they name by a relative path, as ``../towers/image.yaml``), its ``set`` and
  ``args``, and the fingerprints of the stages it references. A changed config or upstream stage
  therefore reruns the stage and everything downstream; the old run directory is kept, renamed
  ``<name>.superseded-<n>``. Data files and code are not hashed.
* **Given checkpoints** (``--given sft=PATH``): a stage's result you already have. The stage is not
  run, ``${sft}`` is ``PATH`` (fingerprinted by its bytes), and stages that only it needed (here the
  alignments) are skipped.
* **SLURM** (``--slurm``): each stage is submitted at once, with ``sbatch --dependency=afterok:`` on
  the jobs of the stages it references; Lightning stages go through ``training/slurm/fit.sbatch``
  (``CONFIG``, ``RUN_DIR``, ``SUBCOMMAND``), other commands through ``sbatch --wrap``. ``--dry_run``
  prints the commands. A later ``mmfuse pipeline --slurm`` reads the jobs' states from ``sacct``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

#: The LightningCLI subcommands (and ``eval``, validate with intervals) a stage may run in its directory.
LIGHTNING_RUNS = ("fit", "validate", "eval")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)(\.dir)?\}")
_YAML_PATH = re.compile(r"[\w./-]+\.ya?ml$")
_MAIN = "from mmfuse.training.cli import main; main()"
_SAVE_EVERY_S = 10.0  # how often a running stage's wall time is written to pipeline.json
FIT_SBATCH = Path("training/slurm/fit.sbatch")


class RecipeError(ValueError):
    """A recipe that cannot run, with the field at fault named."""


@dataclass
class Stage:
    """One recipe entry (module docstring)."""

    name: str
    run: str = "fit"
    config: list[str] = field(default_factory=list)
    set: dict = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    checkpoint: str | None = None

    def references(self) -> list[str]:
        """The stages named by ``${...}`` in ``set``, ``args`` and ``checkpoint``, in order of appearance."""
        text = json.dumps([self.set, self.args, self.checkpoint])
        return list(dict.fromkeys(m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1) != "dir"))


@dataclass
class Recipe:
    """A pipeline directory and its stages, checked (:func:`load_recipe`)."""

    directory: Path
    stages: list[Stage]

    def run_dir(self, stage: str) -> Path:
        return self.directory / stage

    def checkpoint(self, stage: Stage) -> str | None:
        """The stage's chosen checkpoint path (known before it runs, so jobs can be chained)."""
        if stage.run == "fit" and stage.checkpoint is None:
            name = "best.ckpt" if _monitor(stage) else "last.ckpt"
            return str(self.run_dir(stage.name) / "checkpoints" / name)
        return self.substitute(stage.checkpoint, stage) if stage.checkpoint else None

    def substitute(self, value, stage: Stage):
        """``value`` (nested lists / dicts / strings) with the placeholders of ``stage`` filled in."""
        if isinstance(value, dict):
            return {k: self.substitute(v, stage) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v, stage) for v in value]
        if not isinstance(value, str):
            return value

        def fill(match: re.Match) -> str:
            name, is_dir = match.group(1), match.group(2)
            if name == "dir":
                return str(self.run_dir(stage.name))
            if is_dir:
                return str(self.run_dir(name))
            path = self.checkpoint(self.stage(name))
            if path is None:
                raise RecipeError(f"stages.{stage.name}: ${{{name}}} has no checkpoint (give it one)")
            return path

        return _PLACEHOLDER.sub(fill, value)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def load_recipe(path: Path, directory: Path | None = None) -> Recipe:
    """Read and check a recipe file.

    Raises:
        RecipeError: naming the field: a stage without ``name``, a duplicate or unknown key, an
            unknown ``run``, a Lightning stage without ``config`` or with ``args``, a ``${stage}``
            that is not an earlier stage, a config file that does not exist.
    """
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(raw) - {"directory", "stages"}
    if unknown:
        raise RecipeError(f"{path}: unknown top-level key(s) {sorted(unknown)} (directory, stages)")
    if not raw.get("stages"):
        raise RecipeError(f"{path}: `stages` is empty")
    directory = Path(directory or raw.get("directory") or Path("runs") / Path(path).stem)
    stages: list[Stage] = []
    for i, entry in enumerate(raw["stages"]):
        where = f"{path}: stages[{i}]"
        if not isinstance(entry, dict) or not entry.get("name"):
            raise RecipeError(f"{where}: each stage needs a `name`")
        where = f"{path}: stages.{entry['name']}"
        unknown = set(entry) - set(Stage.__dataclass_fields__)
        if unknown:
            raise RecipeError(f"{where}: unknown key(s) {sorted(unknown)}")
        config = entry.get("config") or []
        stage = Stage(**{**entry, "config": [config] if isinstance(config, str) else list(config)})
        if not re.fullmatch(r"[A-Za-z0-9_]+", stage.name) or stage.name == "dir":
            raise RecipeError(f"{where}: `name` must be [A-Za-z0-9_]+ and not 'dir'")
        if any(s.name == stage.name for s in stages):
            raise RecipeError(f"{where}: a second stage of that name")
        if stage.run in LIGHTNING_RUNS and (not stage.config or stage.args):
            raise RecipeError(f"{where}: a `{stage.run}` stage takes `config` (and `set`), not `args`")
        if stage.run not in LIGHTNING_RUNS and (stage.config or stage.set):
            raise RecipeError(f"{where}: `{stage.run}` is not a LightningCLI run: give `args`, not `set`")
        for name in stage.references():
            if not any(s.name == name for s in stages):
                raise RecipeError(f"{where}: ${{{name}}} is not an earlier stage")
        for config_path in stage.config:
            if not Path(config_path).is_file():
                raise RecipeError(f"{where}.config: no such file {config_path}")
        stages.append(stage)
    return Recipe(directory, stages)


def _monitor(stage: Stage) -> str | None:
    """The ``checkpoint.monitor`` a stage runs with: its ``set`` layer's, else its last config's that sets
    one (the order LightningCLI applies them in), else None (ModelCheckpoint's default)."""
    if "checkpoint.monitor" in stage.set:
        return stage.set["checkpoint.monitor"]
    monitor = None
    for path in stage.config:
        checkpoint = (yaml.safe_load(Path(path).read_text()) or {}).get("checkpoint") or {}
        monitor = checkpoint.get("monitor", monitor)
    return monitor


def _dotted_to_nested(flat: dict) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def _config_bytes(path: Path, seen: set[Path]) -> list[tuple[str, str]]:
    """A config's text and that of every YAML file it names by a path relative to itself."""
    path = path.resolve()
    if path in seen:
        return []
    seen.add(path)
    text = path.read_text()
    out = [(str(path), text)]

    def visit(node) -> None:
        if isinstance(node, dict):
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)
        elif isinstance(node, str) and _YAML_PATH.fullmatch(node) and (path.parent / node).is_file():
            out.extend(_config_bytes(path.parent / node, seen))

    visit(yaml.safe_load(text))
    return out


def fingerprint(recipe: Recipe, stage: Stage, upstream: dict[str, str]) -> str:
    """SHA-256 (hex) of what a stage's result depends on (module docstring)."""
    seen: set[Path] = set()
    files = [entry for c in stage.config for entry in _config_bytes(Path(c), seen)]
    content = {
        "run": stage.run,
        "configs": [text for _, text in files],
        "set": stage.set,
        "args": stage.args,
        "checkpoint": stage.checkpoint,
        "upstream": {name: upstream[name] for name in stage.references()},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class Pipeline:
    """Runs a recipe's stages in order, with their state in ``DIRECTORY/pipeline.json``."""

    def __init__(self, recipe: Recipe, recipe_path: Path, given: dict[str, str] | None = None) -> None:
        given = given or {}
        for name in given:
            if not any(s.name == name for s in recipe.stages):
                raise RecipeError(f"--given {name}=...: no stage {name!r} in the recipe")
            if not Path(given[name]).is_file():
                raise RecipeError(f"--given {name}={given[name]}: no such file")
        self.recipe = recipe
        needed = _needed(recipe, set(given))
        self.state_path = recipe.directory / "pipeline.json"
        previous = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"stages": []}
        self.previous = {s["name"]: s for s in previous["stages"]}
        self.entries: dict[str, dict] = {}
        fingerprints: dict[str, str] = {}
        for stage in recipe.stages:
            if stage.name in given or stage.name not in needed:
                path = given.get(stage.name)
                fingerprints[stage.name] = _file_digest(path) if path else "skipped"
                stage.checkpoint = path
                # a given checkpoint's run directory (``<run>/checkpoints/x.ckpt``) holds its metrics
                run_dir = Path(path).parent.parent if path else recipe.run_dir(stage.name)
                self.entries[stage.name] = {
                    "name": stage.name, "run": stage.run, "status": "given" if path else "skipped",
                    "run_dir": str(run_dir), "fingerprint": fingerprints[stage.name], "checkpoint": path,
                    "starts": 0, "wall_s": 0.0,
                }  # fmt: skip
                continue
            fingerprints[stage.name] = fingerprint(recipe, stage, fingerprints)
            entry = dict(self.previous.get(stage.name, {}))
            if entry.get("fingerprint") != fingerprints[stage.name]:
                entry = {"status": "pending", "starts": 0, "wall_s": 0.0}
            entry.update(
                name=stage.name,
                run=stage.run,
                run_dir=str(recipe.run_dir(stage.name)),
                fingerprint=fingerprints[stage.name],
                checkpoint=recipe.checkpoint(stage),
            )
            if stage.run == "eval":
                entry["evaluates"] = next(iter(stage.references()), None)
            self.entries[stage.name] = entry
        self.recipe_path = recipe_path

    def save(self) -> None:
        """Write ``pipeline.json`` atomically."""
        self.recipe.directory.mkdir(parents=True, exist_ok=True)
        state = {
            "recipe": str(self.recipe_path),
            "directory": str(self.recipe.directory),
            "stages": [self.entries[s.name] for s in self.recipe.stages],
        }
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, self.state_path)

    def _retire(self, stage: Stage) -> None:
        """Before a stage's first start, rename a run directory another fingerprint left (kept)."""
        run_dir = self.recipe.run_dir(stage.name)
        if self.entries[stage.name]["starts"] or not run_dir.exists():
            return
        n = 1
        while (old := run_dir.with_name(f"{run_dir.name}.superseded-{n}")).exists():
            n += 1
        run_dir.rename(old)
        print(f"[pipeline] {stage.name}: inputs changed; the previous run is kept in {old}")

    def command(self, stage: Stage) -> list[str]:
        """The ``mmfuse`` argv (without the program) of one start of ``stage``."""
        run_dir = self.recipe.run_dir(stage.name)
        if stage.run not in LIGHTNING_RUNS:
            return [stage.run, *self.recipe.substitute(stage.args, stage)]
        argv = [stage.run]
        for config in stage.config:
            argv += ["--config", config]
        if stage.set:
            layer = run_dir / "recipe-layer.yaml"
            run_dir.mkdir(parents=True, exist_ok=True)
            layer.write_text(yaml.safe_dump(_dotted_to_nested(self.recipe.substitute(stage.set, stage))))
            argv += ["--config", str(layer)]
        argv += [f"--trainer.default_root_dir={run_dir}"]
        if stage.run == "fit":
            if _monitor(stage):
                argv += ["--checkpoint.filename=best", "--checkpoint.enable_version_counter=false"]
            if (run_dir / "checkpoints" / "last.ckpt").exists():
                argv += ["--ckpt_path=last"]
        return argv

    def run(self, stop_after: str | None = None) -> int:
        """Run every stage not yet done, in order; stop at the first failure. Returns the exit status."""
        for stage in self.recipe.stages:
            entry = self.entries[stage.name]
            if entry["status"] in ("given", "skipped"):
                print(f"[pipeline] {stage.name}: {entry['status']} ({entry['checkpoint'] or 'not needed'})")
                continue
            if entry["status"] == "done":
                print(f"[pipeline] {stage.name}: done ({entry['wall_s'] / 60:.1f} min), not rerun")
                continue
            self._retire(stage)
            argv = self.command(stage)
            entry.update(status="running", starts=entry["starts"] + 1)
            self.save()
            print(f"[pipeline] {stage.name}: mmfuse {shlex.join(argv)}", flush=True)
            status = self._timed_call(entry, [sys.executable, "-c", _MAIN, *argv])
            entry["status"] = "done" if status == 0 else "failed"
            self.save()
            if status != 0:
                print(f"[pipeline] {stage.name}: failed (exit {status}); rerun the pipeline to resume it")
                return status
            if stage.name == stop_after:
                break
        self.save()
        print(f"[pipeline] finished; `mmfuse report {self.recipe.directory}` for the report")
        return 0

    def _timed_call(self, entry: dict, argv: list[str]) -> int:
        """Run a stage's process, adding its wall time to ``entry`` (saved as it runs, so a pipeline
        killed mid-stage keeps it); returns the exit status."""
        start, before = time.perf_counter(), entry["wall_s"]

        def record() -> None:
            entry["wall_s"] = round(before + time.perf_counter() - start, 1)
            self.save()

        status = _call(argv, every_s=_SAVE_EVERY_S, tick=record)
        record()
        return status

    def submit(self, dry_run: bool = False) -> int:
        """Submit every stage not done as a SLURM job chained on the jobs it references."""
        jobs: dict[str, str] = {}
        for stage in self.recipe.stages:
            entry = self.entries[stage.name]
            if entry["status"] == "submitted" and not dry_run:
                entry["status"] = _sacct_status(entry["job_id"])
            if entry["status"] in ("done", "given", "skipped"):
                continue
            if entry["status"] in ("submitted", "running"):
                jobs[stage.name] = entry["job_id"]
                continue
            argv = self.command(stage)
            depend = [jobs[n] for n in stage.references() if n in jobs]
            sbatch = ["sbatch", "--parsable", f"--job-name=mmfuse-{stage.name}"]
            sbatch += [f"--dependency=afterok:{':'.join(depend)}"] if depend else []
            if stage.run in LIGHTNING_RUNS:
                config, rest = argv[2], argv[3:]  # argv = [run, "--config", first, ...]
                rest = [a for a in rest if not a.startswith("--trainer.default_root_dir=")]
                env = f"ALL,CONFIG={config},RUN_DIR={self.recipe.run_dir(stage.name)},SUBCOMMAND={stage.run}"
                sbatch += [f"--export={env}", str(FIT_SBATCH), *rest]
            else:
                sbatch += ["--nodes=1", "--ntasks=1", f"--wrap={shlex.join(['mmfuse', *argv])}"]
            print(shlex.join(sbatch))
            if dry_run:
                jobs[stage.name] = f"<{stage.name}>"
                continue
            job_id = subprocess.run(sbatch, check=True, capture_output=True, text=True).stdout.strip()
            jobs[stage.name] = job_id.split(";")[0]
            entry.update(status="submitted", job_id=jobs[stage.name], starts=entry["starts"] + 1)
            self.save()
        return 0


def _needed(recipe: Recipe, given: set[str]) -> set[str]:
    """The stages to run: every one but the given and those only given stages reference."""
    if not given:
        return {s.name for s in recipe.stages}
    needed: set[str] = set()
    for stage in reversed(recipe.stages):
        users = [s.name for s in recipe.stages if stage.name in s.references()]
        if stage.name not in given and (not users or needed.intersection(users)):
            needed.add(stage.name)
    return needed


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _call(argv: list[str], every_s: float, tick: Callable[[], None]) -> int:
    """Run a stage's process, calling ``tick`` every ``every_s`` seconds while it runs; a SIGTERM to the
    pipeline is passed on to it (so it checkpoints)."""
    child = subprocess.Popen(argv)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        while True:
            try:
                return child.wait(timeout=every_s)
            except subprocess.TimeoutExpired:
                tick()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sacct_status(job_id: str) -> str:
    """A submitted stage's status from its job's ``sacct`` state."""
    out = subprocess.run(
        ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True
    ).stdout.split()
    state = out[0] if out else "PENDING"
    if state == "COMPLETED":
        return "done"
    return "submitted" if state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING") else "failed"


def main(argv: Sequence[str] | None = None) -> int:
    """``mmfuse pipeline RECIPE [--directory DIR] [--slurm [--dry_run]]`` (module docstring)."""
    parser = argparse.ArgumentParser(prog="mmfuse pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path, help="the recipe YAML (e.g. training/recipes/assistant.yaml)")
    parser.add_argument("--directory", type=Path, help="the pipeline directory (default: the recipe's)")
    parser.add_argument("--stop_after", help="stop after this stage (the rest stay pending)")
    parser.add_argument("--given", action="append", default=[], metavar="STAGE=CKPT",
                        help="use CKPT as STAGE's checkpoint instead of running it (repeatable)")  # fmt: skip
    parser.add_argument("--slurm", action="store_true", help="submit one chained sbatch job per stage")
    parser.add_argument("--dry_run", action="store_true", help="with --slurm: print the sbatch commands")
    args = parser.parse_args(argv)
    try:
        given = dict(item.split("=", 1) for item in args.given)
    except ValueError:
        parser.error(f"--given takes STAGE=CKPT, got {args.given}")
    try:
        pipeline = Pipeline(load_recipe(args.recipe, args.directory), args.recipe, given)
    except (RecipeError, FileNotFoundError) as exc:
        parser.exit(2, f"mmfuse pipeline: {exc}\n")
    if args.slurm:
        return pipeline.submit(args.dry_run)
    return pipeline.run(args.stop_after)


__all__ = ["Pipeline", "Recipe", "RecipeError", "Stage", "fingerprint", "load_recipe", "main"]
