"""The state of one engine run (a generation or a teaching set), as the logic polls it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .maskexport import LayerCopy, MaskInputs, SegmentSource
from .modelinfo import ModelInfo, engineDirectory
from .options import GenerationCancelled, GenerationParameters, LANDSynthesisError, TeachingSetParameters
from .process import ChildProcess
from .results import LoadedVolume


class GenerationJob:
    """One generation: state, progress, messages and (when it succeeded) the result volume node."""

    PREPARING, RUNNING, CANCELLING, LOADING, SUCCEEDED, FAILED, CANCELLED = (
        "preparing",
        "running",
        "cancelling",
        "loading",
        "succeeded",
        "failed",
        "cancelled",
    )
    kind = "generate"
    usesScene = True  # its result is loaded into the scene (scene closing cancels it)

    def __init__(self, parameters: GenerationParameters, modelInfo: ModelInfo, seed: int) -> None:
        self.parameters = parameters
        self.modelInfo = modelInfo
        self.seed = seed
        self.state = self.PREPARING
        self.tempDir: Path | None = None
        self.outputPath: Path | None = None
        self.command: list[str] = []
        self.child: ChildProcess | None = None
        self.inputs: MaskInputs | None = None
        self.warnings: list[str] = []
        self.log: list[str] = []
        self.error: str | None = None
        self.exitCode: int | None = None
        self.resultNode = None
        self.progress: dict[str, Any] = {"fraction": 0.0, "text": "Preparing inputs…"}
        self.startTime = time.monotonic()
        self.endTime: float | None = None
        self.stageStart: dict[str, float] = {}
        self.maxPollSeconds = 0.0  # longest poll() on the calling (GUI) thread, everything included
        self.loadSeconds = 0.0  # the result's hand-over into the scene on the calling thread
        self.readSeconds = 0.0  # reading the result file (worker thread)
        self.cancelRequested = False
        self.cancelDeadline: float | None = None
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

    @property
    def done(self) -> bool:
        return self.state in (self.SUCCEEDED, self.FAILED, self.CANCELLED)

    @property
    def elapsed(self) -> float:
        return (self.endTime or time.monotonic()) - self.startTime

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    def resultOrRaise(self):
        if self.state == self.SUCCEEDED:
            return self.resultNode
        if self.state == self.CANCELLED:
            raise GenerationCancelled("Generation cancelled.", self.exitCode)
        if self.state == self.FAILED:
            raise LANDSynthesisError(self.error or "generation failed", self.exitCode)
        raise LANDSynthesisError(f"generation is still {self.state}")


# ---------------------------------------------------------------------------------------------- teaching sets
class TeachingSetJob(GenerationJob):
    """One ``land teaching-set`` run; ``outputDirectory`` is the folder it writes (no scene node)."""

    kind = "teaching-set"
    usesScene = False

    def __init__(self, parameters: TeachingSetParameters, modelInfo: ModelInfo | None) -> None:
        super().__init__(parameters, modelInfo, parameters.seed or 0)  # type: ignore[arg-type]
        self.outputDirectory = Path(parameters.outputDirectory).expanduser().resolve()
        self.progress = {"fraction": 0.0, "text": "Starting the teaching set…"}
        self.casesDone = 0
        self.casesTotal = 0

    def resultOrRaise(self):
        if self.state == self.SUCCEEDED:
            return self.outputDirectory
        return super().resultOrRaise()


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
