"""The state of one engine run (a generation or a teaching set), as the logic polls it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from land.interface.childproc import ChildProcess

from .maskexport import LayerCopy, MaskInputs, SegmentSource
from .modelinfo import ModelInfo, engineDirectory
from .options import GenerationCancelled, GenerationParameters, LANDSynthesisError, TeachingSetParameters
from .results import LoadedVolume


class EngineJob:
    """One ``land`` child process: state, progress, messages and the exit code (shared by every job kind)."""

    PREPARING, RUNNING, CANCELLING, LOADING, SUCCEEDED, FAILED, CANCELLED = (
        "preparing",
        "running",
        "cancelling",
        "loading",
        "succeeded",
        "failed",
        "cancelled",
    )
    kind = "engine"
    title = "Job"
    usesScene = False  # True: its result goes into the scene, so closing the scene cancels it

    def __init__(self, parameters: Any, modelInfo: ModelInfo | None, seed: int) -> None:
        self.parameters = parameters
        self.modelInfo = modelInfo
        self.seed = seed
        self.state = self.PREPARING
        self.tempDir: Path | None = None
        self.command: list[str] = []
        self.child: ChildProcess | None = None
        self.warnings: list[str] = []
        self.log: list[str] = []
        self.error: str | None = None
        self.exitCode: int | None = None
        self.progress: dict[str, Any] = {"fraction": 0.0, "text": "Preparing inputs…"}
        self.startTime = time.monotonic()
        self.endTime: float | None = None
        self.stageStart: dict[str, float] = {}
        self.maxPollSeconds = 0.0  # longest poll() on the calling (GUI) thread, everything included
        self.cancelRequested = False
        self.cancelDeadline: float | None = None

    @property
    def done(self) -> bool:
        return self.state in (self.SUCCEEDED, self.FAILED, self.CANCELLED)

    @property
    def elapsed(self) -> float:
        return (self.endTime or time.monotonic()) - self.startTime

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    def release(self) -> None:
        """Free what the job holds besides its process and temporary folder (when it finishes)."""

    def resultText(self) -> str:
        """What a finished job produced, for the status line."""
        return ""

    def result(self):
        """The job's product once it succeeded."""
        return None

    def resultOrRaise(self):
        if self.state == self.SUCCEEDED:
            return self.result()
        if self.state == self.CANCELLED:
            raise GenerationCancelled(f"{self.title} cancelled.", self.exitCode)
        if self.state == self.FAILED:
            raise LANDSynthesisError(self.error or f"{self.title.lower()} failed", self.exitCode)
        raise LANDSynthesisError(f"{self.title.lower()} is still {self.state}")


class GenerationJob(EngineJob):
    """One generation: mask export, ``land generate``, and (when it succeeded) the result volume node."""

    kind = "generate"
    usesScene = True
    title = "Generation"

    def __init__(self, parameters: GenerationParameters, modelInfo: ModelInfo, seed: int) -> None:
        super().__init__(parameters, modelInfo, seed)
        self.outputPath: Path | None = None
        self.inputs: MaskInputs | None = None
        self.inputsReady = False  # the engine's input files are written (it may wait for logic.startGate)
        self.resultNode = None
        # matched pair: the engine label of the nodule left out, its name, the twin's file and node
        self.pairLabel: int | None = None
        self.pairName = ""
        self.pairOutputPath: Path | None = None
        self.pairNode = None
        self.loadSeconds = 0.0  # the result's hand-over into the scene on the calling thread
        self.readSeconds = 0.0  # reading the result file (worker thread)
        # preparation
        self._sources: list[SegmentSource] = []
        self._layers: dict[str, LayerCopy] = {}
        self._exportQueue: list[SegmentSource] = []  # segments off the reference grid: exported one per poll
        self._worker: threading.Thread | None = None
        self._workerResult: tuple[MaskInputs | None, BaseException | None] | None = None
        self._referenceCleanup: Callable[[], None] | None = None
        self._ijkToRas: np.ndarray | None = None
        self._shape: tuple[int, int, int] | None = None
        self._referenceNodeId: str | None = None
        self._transformNodeId: str | None = None
        self._segmentationNodeId: str | None = None
        self._conditioned = False
        self._conformNodeId: str | None = None
        self._inputPaths: dict[str, Path | None] = {}
        self._layerViews: list[LayerCopy] = []
        # result loading (worker thread)
        self._loader: threading.Thread | None = None
        self._loaded: tuple[LoadedVolume | None, BaseException | None] | None = None
        self._pairLoaded: LoadedVolume | None = None

    def release(self) -> None:
        for thread in (self._worker, self._loader):
            if thread is not None:
                thread.join(5.0)
        if self._referenceCleanup is not None:
            try:
                self._referenceCleanup()
            finally:
                self._referenceCleanup = None
        self._sources, self._layers, self._exportQueue = [], {}, []

    def resultText(self) -> str:
        text = self.resultNode.GetName() if self.resultNode is not None else ""
        return text + (f" and {self.pairNode.GetName()}" if self.pairNode is not None else "")

    def result(self):
        return self.resultNode


# ---------------------------------------------------------------------------------------------- teaching sets
class TeachingSetJob(EngineJob):
    """One ``land teaching-set`` run; ``outputDirectory`` is the folder it writes (no scene node)."""

    kind = "teaching-set"
    title = "Teaching set"

    def __init__(self, parameters: TeachingSetParameters, modelInfo: ModelInfo | None) -> None:
        super().__init__(parameters, modelInfo, parameters.seed or 0)
        self.outputDirectory = Path(parameters.outputDirectory).expanduser().resolve()
        self.outputPath: Path | None = None  # a teaching set writes a folder, not one file
        self.progress = {"fraction": 0.0, "text": "Starting the teaching set…"}
        self.casesDone = 0
        self.casesTotal = 0

    def resultText(self) -> str:
        return str(self.outputDirectory)

    def result(self):
        return self.outputDirectory


def teachingSetAvailability() -> tuple[bool, str]:
    """(available, reason): ``land teaching-set`` ships in ``land/teaching/cli.py`` of the engine."""
    engine = engineDirectory()
    if engine is not None and (engine / "land" / "teaching" / "cli.py").is_file():
        return True, "Generate a teaching set with land teaching-set (runs in the background)."
    return False, (
        "This version of the LAND engine has no 'land teaching-set' command yet (land/teaching/cli.py is "
        "missing); update the LAND extension."
    )


# ---------------------------------------------------------------------------------------------- logic
