"""A training run's parameters, configs, folder layout and state file, and each stage's status (pure Python:
no ``slicer``, no ``qt``; :mod:`.pipeline` runs the stages)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from land.contract import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS  # noqa: F401 - SAMPLERS: for the widget

try:  # the sibling module LANDSynthesis provides the child-process helper (shared, not copied)
    from LANDSynthesisLib.modelinfo import formatDuration  # noqa: F401 - one formatter for both modules
    from LANDSynthesisLib.parameters import dataclassFrom
except ImportError:  # repository checkout without LANDSynthesis on sys.path
    _SYNTHESIS_DIR = Path(__file__).resolve().parents[2] / "LANDSynthesis"
    if (_SYNTHESIS_DIR / "LANDSynthesisLib" / "process.py").is_file():
        sys.path.append(str(_SYNTHESIS_DIR))
    from LANDSynthesisLib.modelinfo import formatDuration  # noqa: F401 - one formatter for both modules
    from LANDSynthesisLib.parameters import dataclassFrom
    from LANDSynthesisLib.process import ChildProcess

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
DEVICES = ("auto", "cuda", "cpu")

# stage states
PENDING, RUNNING, DONE, SKIPPED = "pending", "running", "done", "skipped"
FAILED, STOPPED = "failed", "stopped"
FINISHED_STATES = (DONE, SKIPPED)


class TrainingError(RuntimeError):
    """A message to show the user as it is."""


class TrainingInputError(TrainingError):
    """The parameters cannot be used (the message says what to change)."""


# ---------------------------------------------------------------------------------------------- parameters
@dataclass
class TrainingParameters:
    """Options of a training run. ``data``: a LIDC-IDRI DICOM root or a prepared dataset (``manifest.csv``);
    ``config``: a bundled config name (paper, small, demo, tiny) or a JSON file; ``*Steps`` None: the
    config's."""

    data: str = ""
    out: str = ""
    config: str = "small"
    device: str = "auto"
    workers: int = 1
    limit: int | None = None
    lungWeights: str | None = None
    perceptualWeights: str | None = None
    vaeSteps: int | None = None
    ldmSteps: int | None = None
    samples: int = 8
    sampleSteps: int = DEFAULT_STEPS[DEFAULT_SAMPLER]
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0
    unconditional: bool = False
    featureWeights: str | None = None

    @classmethod
    def fromAny(cls, parameters: TrainingParameters | Mapping[str, Any] | None) -> TrainingParameters:
        return dataclassFrom(cls, parameters, "training", TrainingInputError)

    def check(self) -> None:
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
        device = (self.device or "auto").lower()
        if device not in DEVICES and not device.startswith("cuda:"):
            raise TrainingInputError(f"unknown device {self.device!r}; choose auto, cuda (GPU) or cpu")
        for name in ("vaeSteps", "ldmSteps", "limit"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise TrainingInputError(f"{name} must be a whole number >= 1 (or empty), got {value!r}")
        for name in ("workers", "samples", "sampleSteps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise TrainingInputError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.sampler not in SAMPLERS:
            raise TrainingInputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        resolveConfig(self.config)  # raises when unknown
        for name in ("lungWeights", "perceptualWeights", "featureWeights"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise TrainingInputError(f"{name} file {path} does not exist")


# ---------------------------------------------------------------------------------------------- configs
def configDirectories() -> list[Path]:
    """Where the bundled training configs may be: the repository's ``Resources/Configs``, or the installed
    extension's (``Resources/Configs`` next to the scripted modules), or next to the ``land`` package."""
    here = Path(__file__).resolve().parent.parent  # LANDTraining/ (repository) or qt-scripted-modules/
    candidates = [
        here.parent / "Resources" / "Configs",
        here / "Resources" / "Configs",
        here.parent / "LANDSynthesis" / "Resources" / "Configs",
    ]
    engine = engineDirectory()
    if engine is not None:
        candidates += [engine / "Resources" / "Configs", engine.parent / "Resources" / "Configs"]
    unique: list[Path] = []
    for c in candidates:
        if c.is_dir() and c.resolve() not in [u.resolve() for u in unique]:
            unique.append(c)
    return unique


def availableConfigs() -> dict[str, Path]:
    """Bundled configs by name (``paper``, ``small``, ``demo``, ``tiny``, ...), first found wins."""
    found: dict[str, Path] = {}
    for folder in configDirectories():
        for path in sorted(folder.glob("*.json")):
            found.setdefault(path.stem, path)
    return found


def resolveConfig(config: str) -> Path:
    """A config name or JSON file -> the JSON file; TrainingInputError names the choices."""
    if not config:
        raise TrainingInputError("choose a training config (paper, small, demo or a JSON file)")
    path = Path(config)
    if path.suffix == ".json" and path.is_file():
        return path.resolve()
    configs = availableConfigs()
    if config in configs:
        return configs[config]
    raise TrainingInputError(
        f"training config {config!r} not found; choose one of {', '.join(configs) or '(none found)'} or a "
        "JSON file"
    )


def configSummary(config: str) -> str:
    """One line about a config: grids, steps and its comment (without importing the engine)."""
    try:
        raw = json.loads(resolveConfig(config).read_text(encoding="utf-8"))
        grid = "x".join(str(n) for n in raw["data"]["grid_size"])
        spacing = "x".join(f"{s:g}" for s in raw["data"]["spacing"])
        text = (
            f"{raw.get('name', config)}: {grid} voxels at {spacing} mm; VAE {raw['vae'].get('steps', '?')} "
            f"steps, LDM {raw['ldm'].get('steps', '?')} steps"
        )
        comment = raw.get("_comment")
        return f"{text}. {comment}" if comment else text
    except (OSError, ValueError, KeyError, TypeError, TrainingError) as e:
        return f"cannot read config {config}: {e}"


# ---------------------------------------------------------------------------------------------- environment
def engineDirectory() -> Path | None:
    """The folder holding the engine package ``land`` (found without importing it)."""
    here = Path(__file__).resolve().parent.parent
    for folder in (here.parent / "LANDSynthesis", here):
        if (folder / "land" / "__init__.py").is_file():
            return folder
    import importlib.util

    try:
        spec = importlib.util.find_spec("land")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent
    return None


def childEnvironment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the engine on PYTHONPATH and unbuffered output."""
    env = dict(os.environ if base is None else base)
    engine = engineDirectory()
    if engine is not None:
        parts = [str(engine)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def parseStages(text: str | Sequence[str]) -> list[str]:
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


# ---------------------------------------------------------------------------------------------- layout
class Layout:
    """Paths of one training run (see the module docstring)."""

    def __init__(self, parameters: TrainingParameters) -> None:
        self.data = Path(parameters.data).expanduser().resolve()
        self.out = Path(parameters.out).expanduser().resolve()
        self.dataIsPrepared = (self.data / "manifest.csv").is_file()
        self.dataset = self.data if self.dataIsPrepared else self.out / "dataset"
        self.vae = self.out / "vae"
        self.model = self.out / "ldm"
        self.samples = self.out / "samples"
        self.evaluation = self.out / "evaluation"
        self.logs = self.out / "logs"
        self.state = self.out / STATE_FILE

    def stageDirectory(self, stage: str) -> Path:
        return {
            "prepare": self.dataset,
            "vae": self.vae,
            "ldm": self.model,
            "sample": self.samples,
            "evaluate": self.evaluation,
        }[stage]

    def progressFile(self, stage: str) -> Path | None:
        return self.stageDirectory(stage) / PROGRESS_FILE if stage in ("vae", "ldm") else None

    def tensorboardDirectories(self) -> list[Path]:
        return [self.vae / "tensorboard", self.model / "tensorboard"]


def lastProgressEvent(path: Path) -> dict[str, Any] | None:
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


def countCases(dataset: Path) -> int:
    """Cases listed in a dataset's ``manifest.csv`` (0 when there is none)."""
    try:
        lines = (dataset / "manifest.csv").read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    return max(0, len([line for line in lines if line.strip()]) - 1)


def trainingFinished(directory: Path) -> bool:
    """A trainer's output is complete: ``model.json`` and ``progress.jsonl`` ending with ``done``."""
    last = lastProgressEvent(directory / PROGRESS_FILE)
    return (directory / "model.json").is_file() and last is not None and last.get("event") == "done"


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
    etaSeconds: float | None = None
    returnCode: int | None = None
    startTime: float | None = None
    endTime: float | None = None
    arguments: list[str] = field(default_factory=list)
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    preview: str | None = None
    lossVersion: int = 0  # incremented whenever ``losses`` changes

    @property
    def title(self) -> str:
        return STAGE_TITLES[self.stage]

    @property
    def fraction(self) -> float:
        if self.state in FINISHED_STATES:
            return 1.0
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0

    def progressText(self) -> str:
        if self.state == RUNNING and self.total > 0:
            eta = f", ETA {formatDuration(self.etaSeconds)}" if self.etaSeconds is not None else ""
            return f"{self.title}: step {self.step}/{self.total}{eta}"
        if self.state == DONE and self.message:
            return f"{self.title}: {self.message}"
        text = f"{self.title}: {self.state}"
        return f"{text} ({self.message})" if self.message else text

    def addLosses(self, step: int, losses: Mapping[str, Any]) -> None:
        for name, value in losses.items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                continue
            series = self.losses.setdefault(name, [])
            while series and series[-1][0] >= step:  # a resumed run re-logs steps after its checkpoint
                series.pop()
            series.append((int(step), v))
        self.lossVersion += 1


def readState(layout: Layout) -> dict[str, Any]:
    if not layout.state.is_file():
        return {}
    try:
        state = json.loads(layout.state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainingError(f"{layout.state} is not a valid training state file: {e}") from e
    return state if isinstance(state, dict) else {}


def writeState(layout: Layout, state: Mapping[str, Any]) -> None:
    layout.out.mkdir(parents=True, exist_ok=True)
    tmp = layout.state.with_name(f".{layout.state.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, layout.state)


class TrainingRun:
    """One run of a sequence of stages (state, statuses, the current child)."""

    RUNNING, SUCCEEDED, FAILED, STOPPED = "running", "succeeded", "failed", "stopped"

    def __init__(self, parameters: TrainingParameters, stages: Sequence[str], resume: bool) -> None:
        self.parameters = parameters
        self.layout = Layout(parameters)
        self.stages = list(stages)
        self.resume = resume
        self.statuses = {s: StageStatus(s) for s in self.stages}
        self.index = -1  # the current stage
        self.state = self.RUNNING
        self.error: str | None = None
        self.child: ChildProcess | None = None
        self.tail: ProgressTail | None = None
        self.log = None  # the current stage's log file
        self.stopRequested = False
        self.stopTime: float | None = None
        self.startTime = time.monotonic()

    @property
    def done(self) -> bool:
        return self.state != self.RUNNING

    @property
    def currentStage(self) -> str | None:
        return self.stages[self.index] if 0 <= self.index < len(self.stages) else None

    @property
    def fraction(self) -> float:
        if not self.stages:
            return 1.0
        return sum(self.statuses[s].fraction for s in self.stages) / len(self.stages)

    @property
    def modelDirectory(self) -> Path | None:
        """The new model directory, when the LDM stage has finished."""
        return self.layout.model if trainingFinished(self.layout.model) else None

    def latestPreview(self) -> str | None:
        for stage in reversed(self.stages):
            preview = self.statuses[stage].preview
            if preview:
                return preview
        previews = sorted((self.layout.model / "previews").glob("*.png"))
        return str(previews[-1]) if previews else None

    def summary(self) -> str:
        lines = [self.statuses[s].progressText() for s in self.stages]
        if self.error:
            lines.append(f"error: {self.error}")
        return "\n".join(lines)
