"""A training pipeline run's options, folder layout, state file and per-stage status (torch-free).

The run folder (``--out``): ``dataset/`` (prepared from DICOM unless ``--data`` already is a prepared
dataset), ``vae/``, ``ldm/`` (the new model directory), ``samples/``, ``evaluation/``,
``logs/<stage>.log`` and ``land_training.json`` (the run state).
:mod:`.pipeline` runs the stages; the LANDTraining Slicer module shows this state.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..interface.contract import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    SAMPLERS,
    check_device,
    check_sampler,
    format_duration,
    option,
    options_from_mapping,
    options_from_namespace,
    options_to_argv,
    sampler_help,
    steps_help,
)
from ..interface.errors import InputError, LANDError
from .config_files import config_path

if TYPE_CHECKING:
    from ..interface.childproc import ChildProcess

STAGES = ("prepare", "vae", "ldm", "sample", "evaluate")
STAGE_TITLES = {
    "prepare": "Prepare LIDC-IDRI",
    "vae": "Train VAE",
    "ldm": "Train LDM",
    "sample": "Sample set",
    "evaluate": "Evaluate",
}
STAGE_COMMANDS = {
    "prepare": "prepare-lidc",
    "vae": "train-vae",
    "ldm": "train-ldm",
    "sample": "sample-set",
    "evaluate": "evaluate",
}
STATE_FILE = "land_training.json"
STATE_FORMAT = "land-training/1"
PROGRESS_FILE = "progress.jsonl"  # written by land.train.progress.TrainingLog
CHECKPOINT_FILE = "checkpoint.pt"

# stage states
PENDING, RUNNING, DONE, SKIPPED = "pending", "running", "done", "skipped"
FAILED, STOPPED = "failed", "stopped"
FINISHED_STATES = (DONE, SKIPPED)


class TrainingError(LANDError):
    """A training run cannot go on (the message says why). Exit 2."""

    exit_code = 2


class TrainingInputError(TrainingError, InputError):
    """The options cannot be used (the message says what to change). Exit 2."""


# ---------------------------------------------------------------------------------------------- options
@dataclass
class TrainingOptions:
    """Options of a training run: one field per ``land train-pipeline`` option (the parser is built from the
    fields; the LANDTraining parameter node stores the same fields). ``*_steps`` None: the config's."""

    data: str = option(
        "", "LIDC-IDRI DICOM root, or a prepared dataset (a folder with manifest.csv)", required=True
    )
    out: str = option(
        "", "output folder of the run (dataset/, vae/, ldm/, samples/, evaluation/, logs/)", required=True
    )
    config: str = option("small", "training config: paper, small, demo, tiny or a JSON file")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    workers: int = option(1, "prepare: parallel processes", kind=int)
    limit: int | None = option(None, "prepare: only the first N scans", kind=int)
    lung_weights: str | None = option(None, "prepare: lungmask R231 weights file")
    perceptual_weights: str | None = option(None, "vae: MedicalNet weights file for the perceptual loss")
    vae_steps: int | None = option(None, "vae: train up to this step (default: the config's)", kind=int)
    ldm_steps: int | None = option(None, "ldm: train up to this step (default: the config's)", kind=int)
    samples: int = option(8, "sample: number of CTs to generate", kind=int)
    sample_steps: int = option(DEFAULT_STEPS[DEFAULT_SAMPLER], "sample: " + steps_help(), kind=int)
    sampler: str = option(DEFAULT_SAMPLER, "sample: " + sampler_help(), choices=SAMPLERS)
    seed: int = option(0, "sample: first seed", kind=int)
    unconditional: bool = option(False, "sample and evaluate without masks", action="store_true")
    feature_weights: str | None = option(None, "evaluate: MedicalNet weights file for FID features")

    @classmethod
    def from_any(cls, options: TrainingOptions | Mapping[str, Any] | None) -> TrainingOptions:
        """``options`` as TrainingOptions: None gives the defaults; a mapping must name only fields."""
        return options_from_mapping(cls, options, "training option", TrainingInputError)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainingOptions:
        return options_from_namespace(cls, args)

    def to_argv(self) -> list[str]:
        """The options as ``land train-pipeline`` arguments (defaults left out; inverse of the parser)."""
        return options_to_argv(self)

    def validate(self) -> TrainingOptions:
        """Raise TrainingInputError naming the first unusable option and its fix."""
        if not self.data:
            raise TrainingInputError("choose the data: a LIDC-IDRI DICOM folder or a prepared dataset folder")
        if not Path(self.data).is_dir():
            raise TrainingInputError(f"data folder {self.data} does not exist")
        if not self.out:
            raise TrainingInputError("choose an output folder for the training run")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise TrainingInputError(f"output {self.out} exists and is not a folder")
        if Path(self.out).resolve() == Path(self.data).resolve():
            raise TrainingInputError("the output folder must differ from the data folder")
        try:
            check_device(self.device)
            check_sampler(self.sampler)
        except InputError as e:
            raise TrainingInputError(str(e)) from None
        for name in ("vae_steps", "ldm_steps", "limit"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise TrainingInputError(f"{name} must be a whole number >= 1 (or empty), got {value!r}")
        for name in ("workers", "samples", "sample_steps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise TrainingInputError(f"{name} must be a whole number >= 1, got {value!r}")
        resolve_config(self.config)
        for name in ("lung_weights", "perceptual_weights", "feature_weights"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise TrainingInputError(f"{name.replace('_', '-')} file {path} does not exist")
        return self


def resolve_config(config: str) -> Path:
    """A config name or JSON file -> the JSON file (TrainingInputError names the choices)."""
    try:
        return config_path(config)
    except InputError as e:
        raise TrainingInputError(str(e)) from None


def parse_stages(text: str | Sequence[str]) -> list[str]:
    """``all``, one stage or a comma-separated list -> stages in pipeline order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    wanted: set[str] = set()
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        if item == "all":
            wanted.update(STAGES)
        elif item in STAGES:
            wanted.add(item)
        else:
            raise TrainingInputError(f"unknown stage {item!r}; choose all or {', '.join(STAGES)}")
    if not wanted:
        raise TrainingInputError(f"no stage given; choose all or {', '.join(STAGES)}")
    return [s for s in STAGES if s in wanted]


# ---------------------------------------------------------------------------------------------- environment
def engine_directory() -> Path:
    """The folder holding the engine package ``land`` (what a child's PYTHONPATH needs)."""
    return Path(__file__).resolve().parents[2]


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the engine on PYTHONPATH and unbuffered output."""
    env = dict(os.environ if base is None else base)
    parts = [str(engine_directory())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


# ---------------------------------------------------------------------------------------------- layout
class Layout:
    """Paths of one training run (see the module docstring)."""

    def __init__(self, options: TrainingOptions) -> None:
        self.data = Path(options.data).expanduser().resolve()
        self.out = Path(options.out).expanduser().resolve()
        self.data_is_prepared = (self.data / "manifest.csv").is_file()
        self.dataset = self.data if self.data_is_prepared else self.out / "dataset"
        self.vae = self.out / "vae"
        self.model = self.out / "ldm"
        self.samples = self.out / "samples"
        self.evaluation = self.out / "evaluation"
        self.logs = self.out / "logs"
        self.state = self.out / STATE_FILE

    def stage_directory(self, stage: str) -> Path:
        return {
            "prepare": self.dataset,
            "vae": self.vae,
            "ldm": self.model,
            "sample": self.samples,
            "evaluate": self.evaluation,
        }[stage]

    def progress_file(self, stage: str) -> Path | None:
        return self.stage_directory(stage) / PROGRESS_FILE if stage in ("vae", "ldm") else None


def last_progress_event(path: Path) -> dict[str, Any] | None:
    """The last complete JSON event of a ``progress.jsonl`` (None when there is none)."""
    if not path.is_file():
        return None
    last = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            last = obj
    return last


def count_cases(dataset: Path) -> int:
    """Cases listed in a dataset's ``manifest.csv`` (0 when there is none)."""
    try:
        lines = (dataset / "manifest.csv").read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    return max(0, len([line for line in lines if line.strip()]) - 1)


def training_finished(directory: Path) -> bool:
    """A trainer's output is complete: ``model.json`` and ``progress.jsonl`` ending with ``done``."""
    last = last_progress_event(directory / PROGRESS_FILE)
    return (directory / "model.json").is_file() and last is not None and last.get("event") == "done"


def resume_arguments(out: Path) -> list[str]:
    """``--resume`` where a trainer's output folder holds a checkpoint (the one resume rule of every
    pipeline: train-pipeline, train-demo)."""
    return ["--resume"] if (Path(out) / CHECKPOINT_FILE).is_file() else []


class ProgressTail:
    """Reads the lines appended to a ``progress.jsonl`` since the last call (restarts when it shrinks)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.restarted = False

    def read(self) -> list[dict[str, Any]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # rewritten (a resumed run truncates lines past its checkpoint)
            self.offset = 0
            self.restarted = True
        if size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # a line still being written
        self.offset += end + 1
        events = []
        for line in chunk[: end + 1].decode("utf-8", errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                events.append(obj)
        return events


# ---------------------------------------------------------------------------------------------- state
@dataclass
class StageStatus:
    """What is known about one stage of the current run."""

    stage: str
    state: str = PENDING
    message: str = ""
    step: int = 0
    total: int = 0
    eta_seconds: float | None = None
    return_code: int | None = None
    start_time: float | None = None
    end_time: float | None = None
    arguments: list[str] = field(default_factory=list)
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    preview: str | None = None
    loss_version: int = 0  # incremented whenever ``losses`` changes

    @property
    def title(self) -> str:
        return STAGE_TITLES[self.stage]

    @property
    def fraction(self) -> float:
        if self.state in FINISHED_STATES:
            return 1.0
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0

    def progress_text(self) -> str:
        if self.state == RUNNING and self.total > 0:
            eta = f", ETA {format_duration(self.eta_seconds)}" if self.eta_seconds is not None else ""
            return f"{self.title}: step {self.step}/{self.total}{eta}"
        if self.state == DONE and self.message:
            return f"{self.title}: {self.message}"
        text = f"{self.title}: {self.state}"
        return f"{text} ({self.message})" if self.message else text

    def add_losses(self, step: int, losses: Mapping[str, Any]) -> None:
        for name, value in losses.items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                continue
            series = self.losses.setdefault(name, [])
            while series and series[-1][0] >= step:  # a resumed run re-logs steps after its checkpoint
                series.pop()
            series.append((int(step), v))
        self.loss_version += 1


def read_state(layout: Layout) -> dict[str, Any]:
    if not layout.state.is_file():
        return {}
    try:
        state = json.loads(layout.state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainingError(f"{layout.state} is not a valid training state file: {e}") from e
    return state if isinstance(state, dict) else {}


def write_state(layout: Layout, state: Mapping[str, Any]) -> None:
    layout.out.mkdir(parents=True, exist_ok=True)
    tmp = layout.state.with_name(f".{layout.state.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, layout.state)


class TrainingRun:
    """One run of a sequence of stages (state, statuses, the current child)."""

    RUNNING, SUCCEEDED, FAILED, STOPPED = "running", "succeeded", "failed", "stopped"

    def __init__(self, options: TrainingOptions, stages: Sequence[str], resume: bool) -> None:
        self.options = options
        self.layout = Layout(options)
        self.stages = list(stages)
        self.resume = resume
        self.statuses = {s: StageStatus(s) for s in self.stages}
        self.index = -1  # the current stage
        self.state = self.RUNNING
        self.error: str | None = None
        self.error_code: int | None = None  # the exit code that fits the error (the land contract's)
        self.child: ChildProcess | None = None
        self.tail: ProgressTail | None = None
        self.log = None  # the current stage's log file
        self.stop_requested = False
        self.stop_time: float | None = None
        self.start_time = time.monotonic()

    @property
    def done(self) -> bool:
        return self.state != self.RUNNING

    @property
    def current_stage(self) -> str | None:
        return self.stages[self.index] if 0 <= self.index < len(self.stages) else None

    @property
    def fraction(self) -> float:
        if not self.stages:
            return 1.0
        return sum(self.statuses[s].fraction for s in self.stages) / len(self.stages)

    @property
    def model_directory(self) -> Path | None:
        """The new model directory, when the LDM stage has finished."""
        return self.layout.model if training_finished(self.layout.model) else None

    def latest_preview(self) -> str | None:
        for stage in reversed(self.stages):
            preview = self.statuses[stage].preview
            if preview:
                return preview
        previews = sorted((self.layout.model / "previews").glob("*.png"))
        return str(previews[-1]) if previews else None

    def summary(self) -> str:
        lines = [self.statuses[s].progress_text() for s in self.stages]
        if self.error:
            lines.append(f"error: {self.error}")
        return "\n".join(lines)
