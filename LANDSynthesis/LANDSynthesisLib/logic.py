"""``LANDSynthesisLogic``: segmentation -> engine inputs -> ``land generate`` (child process) -> volume node.

Qt-free: runs inside the Slicer application and on the ``slicer-core`` wheel (tests). Slicer calls used here
exist in both: MRML nodes, ``slicer.util`` array helpers, the volumes and segmentations module logics.

Generation (non-blocking): :meth:`LANDSynthesisLogic.start` checks the inputs and returns a
:class:`GenerationJob`; the caller then calls :meth:`LANDSynthesisLogic.poll` regularly (a ``qt.QTimer``
in the GUI) until it returns False. The calling (GUI) thread only does bounded, cheap work: ``start`` takes
views of the segmentation's labelmap layers with their geometry (no copy, no resampling); each poll drains the
child's output queue or hands results over. Worker threads do the heavy parts: resampling the layers onto the
reference grid (:mod:`.resample`), combining masks and writing the input files; later reading the result NRRD
into VTK image data. The engine runs in a child process (``PythonSlicer -m land generate ... --progress
json``; ``sys.executable -m land`` outside the application) whose output two reader threads put into a queue.
:meth:`LANDSynthesisLogic.generate` is the blocking form of the same path. :meth:`LANDSynthesisLogic.cancel`
stops the child's whole process tree; temporary files are removed however a job ends.

Teaching sets (:meth:`LANDSynthesisLogic.startTeachingSet`; blocking: ``runTeachingSet``) run
``land teaching-set ... --progress json`` the same way, polled and cancelled with the same methods.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from land.interface.childproc import ChildProcess, python_executable
from land.interface.contract import (  # noqa: F401 - the modes, the limit and is_guided: re-exported for the widget
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    FITS,
    GUIDANCE_DEFAULTS,
    GUIDANCE_MODES,
    MAX_GUIDANCE,
    MODES,
    GenerateOptions,
    check_guidance,
    is_guided,
    parse_guidance,
)

from . import segments as seglib
from .engineoutput import EngineOutputMixin
from .jobs import EngineJob, GenerationJob, TeachingSetJob, teachingSetAvailability  # noqa: F401 - re-exported
from .maskexport import (  # noqa: F401 - re-exported
    LayerCopy,
    MaskExportMixin,
    MaskInputs,
    SegmentSource,
    _ijkToRasFromLps,
    _lpsGeometry,
    combineMasks,
    conformToReference,
    engineMaskOptions,
    materializeMasks,
    outsideLungMessage,
    writeEngineInputs,
)
from .modelinfo import (  # noqa: F401 - re-exported
    ModelInfo,
    bundledModelDirectory,
    bundledModelMissingMessage,
    engineDirectory,
    formatDuration,
    readModelInfo,
    timeNote,
)
from .mrml import moduleParameterNode
from .nrrd import RAS_TO_LPS
from .options import (  # noqa: F401 - constants, errors and parameter classes re-exported for the widget
    BUNDLED_MODEL_NAME,
    DENOISE_SHARE,
    DEVICES,
    MAX_SEED,
    MODULE_NAME,
    SAMPLER_TITLES,
    SAMPLERS,
    GenerationCancelled,
    GenerationParameters,
    LANDInputError,
    LANDSynthesisError,
    TeachingSetParameters,
    engineCommand,
)
from .results import (  # noqa: F401 - re-exported
    PAIR_RESULT_ROLE,
    LoadedVolume,
    ResultLoadingMixin,
    readResultVolume,
    uniqueNodeName,
)
from .segtools import SegmentationToolsMixin
from .teachingset import TeachingSetMixin

try:  # the Slicer application; absent from the slicer-core wheel (no Qt)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:
    _LogicBase = None


# ---------------------------------------------------------------------------------------------- logic
class LANDSynthesisLogic(  # type: ignore[misc]
    SegmentationToolsMixin,
    MaskExportMixin,
    TeachingSetMixin,
    EngineOutputMixin,
    ResultLoadingMixin,
    _LogicBase or object,
):
    """Module logic (see the module docstring). Usable without the Slicer application."""

    cancelGraceSeconds = 3.0  # after SIGTERM, the engine gets this long to stop cleanly before SIGKILL

    def __init__(self, parent=None) -> None:
        if _LogicBase is not None:
            _LogicBase.__init__(self)
        self.moduleName = MODULE_NAME
        self.job: GenerationJob | None = None
        self.pythonExecutable: str | None = None  # None: PythonSlicer in Slicer, sys.executable elsewhere
        self.tempRoot: str | None = None  # None: Slicer's temporary folder, or the system's
        # a job's inputs are ready: may its engine start now? None: yes; a text: not yet (e.g. its place in a
        # queue of jobs shared with other sessions, LAND Studio). Asked on every poll until it answers None;
        # generations and teaching sets alike.
        self.startGate: Callable[[GenerationJob], str | None] | None = None
        self.extraEnvironment: dict[str, str] = {}  # added to the engine's environment (e.g. its GPU)
        self.keepJobFolders = False  # keep each job's folder (engine inputs, command.json) when it succeeds
        self.lastSecondsPerStep: dict[tuple[str, str], float] = {}
        self._onProgress: Callable[[dict[str, Any]], None] | None = None
        self._onFinished: Callable[[GenerationJob], None] | None = None

    # ------------------------------------------------------------------ parameter node
    def getParameterNode(self):
        node = moduleParameterNode(self, _LogicBase, self.moduleName)
        self.setDefaultParameters(node)
        return node

    def setDefaultParameters(self, parameterNode) -> None:
        defaults = {
            "ModelSource": "bundled" if bundledModelDirectory() else "directory",
            "ModelDirectory": "",
            "Mode": "",
            "Sampler": DEFAULT_SAMPLER,
            "Steps": str(DEFAULT_STEPS[DEFAULT_SAMPLER]),
            "Seed": "0",
            "RandomSeed": "true",
            "Device": "auto",
            "ReplacePrevious": "false",
            "GuidanceFromModel": "true" if GenerationParameters.guidanceFromModel else "false",
            "Guidance": f"{GenerationParameters.guidanceScale:g}",
            "GuidanceMode": GenerationParameters.guidanceMode,
            "NoduleDiameter": "10",
            "NoduleTexture": "5",
        }
        for key, value in defaults.items():
            if not parameterNode.GetParameter(key):
                parameterNode.SetParameter(key, value)

    # ------------------------------------------------------------------ models
    def modelDirectory(self, modelDirectory: str | os.PathLike | None) -> Path:
        """The model to use: ``modelDirectory``, or the bundled demo model (LANDSynthesisError if absent)."""
        if modelDirectory:
            return Path(modelDirectory)
        bundled = bundledModelDirectory()
        if bundled is None:
            raise LANDSynthesisError(bundledModelMissingMessage())
        return bundled

    def modelInfo(self, modelDirectory: str | os.PathLike | None = None) -> ModelInfo:
        return readModelInfo(self.modelDirectory(modelDirectory))

    # ------------------------------------------------------------------ reference volume
    def createBlankReference(self, modelDirectory=None, name: str = "LAND blank reference", modelInfo=None):
        """A blank (air, -1000 HU) CT volume covering the model's grid (e.g. 256 mm cube), centred at the
        origin, axial LPS orientation: painting can start at once and the masks need no resampling."""
        if modelInfo is None:
            try:
                modelInfo = self.modelInfo(modelDirectory)
            except LANDSynthesisError:
                modelInfo = None
        size = modelInfo.gridSize if modelInfo else (256, 256, 256)
        spacing = modelInfo.spacing if modelInfo else (1.0, 1.0, 1.0)
        m = np.eye(4)
        m[:3, :3] = RAS_TO_LPS @ np.diag(spacing)
        m[:3, 3] = -m[:3, :3] @ ((np.asarray(size, float) - 1) / 2.0)
        array = np.full(tuple(reversed(size)), -1000, np.int16)
        node = slicer.util.addVolumeFromArray(array, m, name=uniqueNodeName(name))
        self.setLungWindow(node)
        node.SetAttribute("LAND.BlankReference", "true")
        return node

    # ------------------------------------------------------------------ child process
    def defaultPythonExecutable(self) -> str:
        return self.pythonExecutable or python_executable(hasattr(slicer, "app"))

    def childEnvironment(self) -> dict[str, str]:
        if hasattr(slicer, "app"):
            env = dict(slicer.util.startupEnvironment())
        else:
            env = dict(os.environ)
        engine = engineDirectory()
        if engine is not None:
            parts = [str(engine)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            env["PYTHONPATH"] = os.pathsep.join(parts)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        env.update(self.extraEnvironment)
        return env

    def temporaryRoot(self) -> str | None:
        if self.tempRoot:
            return self.tempRoot
        if hasattr(slicer, "app"):
            try:
                return str(slicer.app.temporaryPath)
            except Exception:  # noqa: BLE001
                return None
        return None

    # ------------------------------------------------------------------ generation
    def isRunning(self) -> bool:
        return self.job is not None and not self.job.done

    def start(
        self,
        segmentationNode,
        referenceVolumeNode,
        parameters: GenerationParameters | Mapping[str, Any] | None = None,
        onProgress: Callable[[dict[str, Any]], None] | None = None,
        onFinished: Callable[[GenerationJob], None] | None = None,
    ) -> GenerationJob:
        """Check the inputs and begin a generation; then call :meth:`poll` until it returns False.

        Raises LANDInputError / LANDSynthesisError for problems found before anything runs.
        """
        if self.isRunning():
            raise LANDSynthesisError("A generation is already running; wait for it or cancel it first.")
        params = GenerationParameters.fromAny(parameters)
        params.check()
        info = self.modelInfo(params.modelDirectory)
        mode = params.mode or info.mode
        problems = self.checkSegmentation(segmentationNode, mode)
        problems += seglib.pairNoduleProblems(segmentationNode, params.pairSegmentId, params.pairNodule, mode)
        if problems:
            raise LANDInputError("\n".join(problems))
        seed = params.seed if params.seed is not None else random.randint(0, MAX_SEED)
        job = GenerationJob(params, info, seed)
        if params.pairSegmentId:
            job.pairName = segmentationNode.GetSegmentation().GetSegment(params.pairSegmentId).GetName()
        job.tempDir = Path(tempfile.mkdtemp(prefix="LANDSynthesis-", dir=self.temporaryRoot()))
        job.outputPath = job.tempDir / "synthetic_ct.nrrd"
        conditioned = segmentationNode is not None or referenceVolumeNode is not None
        try:
            if conditioned:
                reference, job._referenceCleanup = self._geometryReference(
                    segmentationNode, referenceVolumeNode
                )
                job._ijkToRas = seglib.ijkToRasArray(reference)
                job._shape = tuple(reversed(reference.GetImageData().GetDimensions()))  # type: ignore[assignment]
                job._referenceNodeId = reference.GetID()
                if referenceVolumeNode is not None:
                    job._transformNodeId = referenceVolumeNode.GetTransformNodeID()
                    job._conformNodeId = referenceVolumeNode.GetID()
                if segmentationNode is not None:
                    job._segmentationNodeId = segmentationNode.GetID()
                    # views of the labelmap layers (resampled by a worker); other segments: exported per poll
                    job._sources, job._layers = self.gatherSegmentSources(segmentationNode, reference)
                    job._exportQueue = [source for source in job._sources if source.layerKey is None]
        except BaseException:
            self._removeTemp(job)
            if job._referenceCleanup:
                job._referenceCleanup()
            raise
        job._conditioned = conditioned
        self.job = job
        self._onProgress = onProgress
        self._onFinished = onFinished
        self._emit({"state": job.state, "fraction": 0.0, "text": "Preparing inputs…"})
        return job

    def poll(self) -> bool:
        """Advance the current job by a bounded step; True while it is still active."""
        job = self.job
        if job is None or job.done:
            return False
        t0 = time.monotonic()
        try:
            if job.state == GenerationJob.PREPARING:
                self._pollPreparing(job)
            elif job.state in (GenerationJob.RUNNING, GenerationJob.CANCELLING):
                self._pollRunning(job)
            elif job.state == GenerationJob.LOADING:
                self._pollLoading(job)
        except Exception as e:  # noqa: BLE001 - any failure ends the job with its message
            logging.exception("LANDSynthesis: generation failed")
            self._finish(job, GenerationJob.FAILED, error=str(e) or type(e).__name__)
        if not job.done:
            job.maxPollSeconds = max(job.maxPollSeconds, time.monotonic() - t0)
        return not job.done

    def cancel(self) -> None:
        """Stop the current generation (the child's whole process tree). Returns at once; keep polling."""
        job = self.job
        if job is None or job.done or job.cancelRequested:
            return
        job.cancelRequested = True
        if job.child is not None and job.state != GenerationJob.LOADING:
            job.state = GenerationJob.CANCELLING
            job.child.terminate()
            job.cancelDeadline = time.monotonic() + self.cancelGraceSeconds
        self._emit(
            {
                "state": GenerationJob.CANCELLING,
                "fraction": job.progress.get("fraction", 0.0),
                "text": "Cancelling…",
            }
        )

    def generate(
        self,
        segmentationNode,
        referenceVolumeNode,
        parameters: GenerationParameters | Mapping[str, Any] | None = None,
        onProgress: Callable[[dict[str, Any]], None] | None = None,
        pollInterval: float = 0.05,
        timeout: float | None = None,
    ):
        """Blocking generation (built on :meth:`start` / :meth:`poll`); returns the output volume node.

        Raises LANDInputError, LANDSynthesisError (with the engine's message) or GenerationCancelled.
        """
        job = self.start(segmentationNode, referenceVolumeNode, parameters, onProgress)
        while self.poll():
            time.sleep(pollInterval)
            if timeout is not None and job.elapsed > timeout and not job.cancelRequested:
                self.cancel()
                job.error = f"generation took longer than {timeout:g} s and was stopped"
        if job.state == GenerationJob.CANCELLED and timeout is not None and job.error:
            raise LANDSynthesisError(job.error)
        return job.resultOrRaise()

    # ------------------------------------------------------------------ internals
    def _emit(self, event: dict[str, Any]) -> None:
        if self.job is not None and "fraction" in event:
            self.job.progress = dict(event)
        if self._onProgress is not None:
            try:
                self._onProgress(dict(event))
            except Exception:  # noqa: BLE001 - a broken callback must not kill the job
                logging.exception("LANDSynthesis: progress callback failed")

    def _warn(self, job: EngineJob, message: str) -> None:
        job.warnings.append(message)
        logging.warning("LANDSynthesis: %s", message)
        self._emit({"warning": message, "text": message})

    def _pollPreparing(self, job: GenerationJob) -> None:
        if job.kind == TeachingSetJob.kind:  # no inputs to prepare: only the start gate to pass
            self._pollTeachingSetGate(job)
            return
        if job.cancelRequested and job._worker is None:
            self._finish(job, GenerationJob.CANCELLED)
            return
        if job._exportQueue:  # rare fallback (see gatherSegmentSources): one Slicer export per poll
            source = job._exportQueue.pop(0)
            segmentationNode = slicer.mrmlScene.GetNodeByID(job._segmentationNodeId)
            reference = slicer.mrmlScene.GetNodeByID(job._referenceNodeId)
            if segmentationNode is None or reference is None:
                raise LANDSynthesisError(
                    "The segmentation or the reference volume was removed during preparation."
                )
            self.exportSegmentSource(segmentationNode, reference, source)
            remaining = len(job._exportQueue)
            self._emit(
                {
                    "state": job.state,
                    "fraction": 0.0,
                    "text": f"Preparing inputs: resampling segments ({remaining} left)…",
                }
            )
            return
        if job._worker is None:
            if job._referenceCleanup is not None:
                job._referenceCleanup()
                job._referenceCleanup = None
            job._layerViews = list(job._layers.values())
            job._worker = threading.Thread(target=self._prepareFiles, args=(job,), daemon=True)
            job._worker.start()
            self._emit(
                {"state": job.state, "fraction": 0.0, "text": "Preparing inputs: resampling the segments…"}
            )
            return
        if job._worker.is_alive():
            return
        if not job.inputsReady:
            inputs, error = job._workerResult or (None, RuntimeError("input preparation did not finish"))
            if error is not None:
                raise error
            if any(layer.changed() for layer in job._layerViews):
                raise LANDSynthesisError(
                    "The segmentation was edited while its masks were being prepared; press Generate again."
                )
            job._layerViews = []
            job.inputs = inputs
            job.inputsReady = True
            for message in inputs.warnings if inputs and not job.cancelRequested else []:
                self._warn(job, message)
        if job.cancelRequested:
            self._finish(job, GenerationJob.CANCELLED)
            return
        waiting = self.startGate(job) if self.startGate is not None else None
        if waiting is not None:  # e.g. queued behind other sessions' jobs: the masks are already taken
            if waiting != job.progress.get("text"):
                self._emit({"state": "queued", "fraction": 0.0, "text": waiting})
            return
        job.command = self._command(job)
        if self.keepJobFolders:
            (job.tempDir / "command.json").write_text(json.dumps(job.command), encoding="utf-8")
        logging.info("LANDSynthesis: running %s", " ".join(job.command))
        job.child = ChildProcess(job.command, env=self.childEnvironment(), cwd=str(job.tempDir))
        job.state = GenerationJob.RUNNING
        self._emit(
            {"state": job.state, "fraction": 0.0, "text": "Starting the LAND engine (loading the model)…"}
        )

    def _prepareFiles(self, job: GenerationJob) -> None:
        """Worker thread: build the masks, combine them and write the engine's input files (numpy only)."""
        try:
            inputs = None
            if job._conditioned:
                lungs, nodules = materializeMasks(job._sources, job._layers, job._shape)  # type: ignore[arg-type]
                job._sources, job._layers = [], {}
                inputs = combineMasks(lungs, nodules, job._ijkToRas, job._shape)  # type: ignore[arg-type]
                job._inputPaths = writeEngineInputs(inputs, job.tempDir)
            job._workerResult = (inputs, None)
        except BaseException as e:  # noqa: BLE001 - reported by poll() on the main thread
            job._workerResult = (None, e)

    def _command(self, job: GenerationJob) -> list[str]:
        """``PythonSlicer -m land generate ...``: the engine's own option contract builds the arguments (the
        matched pair's nodule segment becomes its engine label here, after the masks were combined)."""
        inputs = engineMaskOptions(job.inputs, job._inputPaths) if job.inputs is not None else {}
        pair = job.parameters.pairNodule
        if job.parameters.pairSegmentId:
            labels = {sid: label for label, sid in (job.inputs.segmentIds if job.inputs else {}).items()}
            pair = labels.get(job.parameters.pairSegmentId)
            if pair is None:
                raise LANDInputError(f"The matched pair's nodule '{job.pairName}' has no voxels on the grid.")
        job.pairLabel, job.pairName = pair, job.pairName or (f"nodule {pair}" if pair is not None else "")
        options = job.parameters.engineOptions(
            str(job.outputPath), model=str(job.modelInfo.path), seed=job.seed, pair=pair, **inputs
        )
        job.pairOutputPath = Path(options.pair_out()) if pair is not None else None  # type: ignore[arg-type]
        return engineCommand(self.defaultPythonExecutable(), options)

    def _pollRunning(self, job: GenerationJob) -> None:
        child = job.child
        assert child is not None
        for stream, line in child.read_lines():
            self._handleLine(job, stream, line)
        child.maybe_remember_descendants()  # e.g. the Python that the PythonSlicer launcher starts
        if job.state == GenerationJob.CANCELLING:
            child.remember_descendants()
            if job.cancelDeadline is not None and time.monotonic() > job.cancelDeadline:
                child.kill()
                job.cancelDeadline = None
        if child.finished():
            for stream, line in child.read_lines():
                self._handleLine(job, stream, line)
            code = child.return_code()
            job.exitCode = code
            if job.cancelRequested:
                self._finish(job, GenerationJob.CANCELLED)
            elif code == 0 and job.kind == TeachingSetJob.kind and job.outputDirectory.is_dir():
                self._finish(job, GenerationJob.SUCCEEDED)
            elif code == 0 and job.outputPath is not None and job.outputPath.is_file():
                self._startLoading(job)
            else:
                self._finish(job, GenerationJob.FAILED, error=self._failureMessage(job, code))

    def _startLoading(self, job: GenerationJob) -> None:
        """Read the result file in a worker thread (poll hands it to the scene when it is read)."""
        reference = slicer.mrmlScene.GetNodeByID(job._conformNodeId) if job._conformNodeId else None
        refMatrix = refShape = None
        if reference is not None and reference.GetImageData() is not None:
            refMatrix = seglib.ijkToRasArray(reference)
            refShape = tuple(reversed(reference.GetImageData().GetDimensions()))
        path, pairPath = job.outputPath, job.pairOutputPath

        def read() -> None:
            t0 = time.monotonic()
            try:
                job._loaded = (readResultVolume(path, refMatrix, refShape), None)  # type: ignore[arg-type]
                if pairPath is not None:  # the matched twin (None: Slicer's reader takes it)
                    job._pairLoaded = readResultVolume(pairPath, refMatrix, refShape)  # type: ignore[arg-type]
            except BaseException as e:  # noqa: BLE001 - reported by poll() on the calling thread
                job._loaded = (job._loaded[0] if job._loaded else None, e)
            job.readSeconds = time.monotonic() - t0

        job.state = GenerationJob.LOADING
        job._loader = threading.Thread(target=read, daemon=True)
        job._loader.start()
        self._emit({"state": job.state, "fraction": 1.0, "text": "Loading the result…"})

    def _pollLoading(self, job: GenerationJob) -> None:
        if job._loader is not None and job._loader.is_alive():
            return
        if job.cancelRequested:
            self._finish(job, GenerationJob.CANCELLED)
            return
        loaded, error = job._loaded or (None, RuntimeError("reading the result did not finish"))
        t0 = time.monotonic()
        p = job.parameters
        name = p.outputName or f"SYNTHETIC CT {job.modelInfo.name} seed {job.seed}"
        options = {
            "replacePrevious": p.replacePrevious,
            "transformNodeId": job._transformNodeId,
            "segmentationNodeId": job._segmentationNodeId,
        }
        reference = slicer.mrmlScene.GetNodeByID(job._conformNodeId) if job._conformNodeId else None
        if loaded is not None:
            job.resultNode = self.addResultVolume(loaded, name, **options)
        else:  # a file this reader does not support: Slicer's reader, on this thread
            logging.warning("LANDSynthesis: reading %s in a worker failed (%s)", job.outputPath, error)
            job.resultNode = self._loadWithSlicerReader(
                job.outputPath, name, referenceVolumeNode=reference, **options
            )
        if job.pairOutputPath is not None:  # the matched twin, named after the nodule it goes without
            twin = {**options, "replacePrevious": False, "role": PAIR_RESULT_ROLE}
            pairName = f"{name} without {job.pairName}"
            if job._pairLoaded is not None:
                job.pairNode = self.addResultVolume(job._pairLoaded, pairName, **twin)
            else:
                job.pairNode = self._loadWithSlicerReader(
                    job.pairOutputPath, pairName, referenceVolumeNode=reference, **twin
                )
            self.linkMatchedPair(job.resultNode, job.pairNode, job.pairLabel, job.pairName)
        job.loadSeconds = time.monotonic() - t0
        self._finish(job, GenerationJob.SUCCEEDED)

    def _removeTemp(self, job: EngineJob) -> None:
        if job.tempDir is not None and job.tempDir.exists():
            shutil.rmtree(job.tempDir, ignore_errors=True)

    def _finish(self, job: EngineJob, state: str, error: str | None = None) -> None:
        if job.child is not None:
            job.child.close()
        job.release()
        if not (self.keepJobFolders and state == GenerationJob.SUCCEEDED):  # kept: inputs + command.json
            self._removeTemp(job)
        job.state = state
        job.endTime = time.monotonic()
        if error:
            job.error = error
        if state == GenerationJob.SUCCEEDED:
            text = f"Done in {formatDuration(job.elapsed)}: {job.resultText()}"
            fraction = 1.0
        elif state == GenerationJob.CANCELLED:
            text, fraction = "Cancelled.", 0.0
        else:
            text, fraction = f"Failed: {job.error}", 0.0
        self._emit({"state": state, "fraction": fraction, "text": text})
        if self._onFinished is not None:
            try:
                self._onFinished(job)
            except Exception:  # noqa: BLE001
                logging.exception("LANDSynthesis: completion callback failed")

    def cleanup(self, sceneClosing: bool = False) -> None:
        """Stop a running job at once (module closing; on scene closing only a job that uses the scene)."""
        job = self.job
        if sceneClosing and job is not None and not job.usesScene:
            return  # a teaching set writes a folder, not nodes: File > Close Scene leaves it running
        if job is not None and not job.done:
            job.cancelRequested = True
            if job.child is not None:
                job.child.kill()
            self._finish(job, GenerationJob.CANCELLED)
