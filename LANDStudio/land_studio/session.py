"""One studio session: a trame-slicer ``SlicerApp`` scene driven by the desktop module's logic.

Everything the page does goes through here, in plain Python (no trame): load a CT or the demo masks, the
LAND segment list (``LANDSynthesisLib.segments``), the segment editor effect and brush, "Lungs from CT",
Generate / poll / Cancel (``LANDSynthesisLogic``: mask export, ``land generate`` as a child process with
``--progress json``, the result loaded under the segmentation) and the result written for download.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import ensure_module_path

ensure_module_path()

import slicer  # noqa: E402
from LANDSynthesisLib import segments as seglib  # noqa: E402
from LANDSynthesisLib.logic import LANDSynthesisLogic  # noqa: E402
from LANDSynthesisLib.maskexport import _lpsGeometry  # noqa: E402
from LANDSynthesisLib.mrml import bindScene  # noqa: E402
from LANDSynthesisLib.options import (  # noqa: E402
    GenerationParameters,
    LANDInputError,
    LANDSynthesisError,
)

from land.interface.contract import DEFAULT_SAMPLER, DEFAULT_STEPS, guidance_text  # noqa: E402
from land.resources import demo_masks_path  # noqa: E402

CT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
EFFECTS = ("none", "paint", "erase", "threshold", "islands", "scissors")
SCISSORS_MODES = ("erase_inside", "erase_outside", "fill_inside", "fill_outside")
ISLAND_MODES = ("keep_largest", "remove_small")


def _hex(color) -> str:
    return "#" + "".join(f"{max(0, min(255, round(c * 255))):02x}" for c in color)


class StudioSession:
    """The studio's state on one ``trame_slicer.core.SlicerApp`` (see the module docstring)."""

    def __init__(self, slicer_app, work_dir: str | Path | None = None, queue=None,
                 keep_jobs: bool = False) -> None:  # fmt: skip
        self.app = slicer_app
        self.editor = slicer_app.segmentation_editor
        self.restore = bindScene(slicer_app.scene, slicer_app.volumes_logic, slicer_app.segmentations_logic)
        self.workDir = Path(work_dir or tempfile.mkdtemp(prefix="land-studio-"))
        self.workDir.mkdir(parents=True, exist_ok=True)
        self.logic = LANDSynthesisLogic()
        self.logic.pythonExecutable = sys.executable
        self.logic.tempRoot = str(self.workDir / "jobs")
        Path(self.logic.tempRoot).mkdir(exist_ok=True)
        self.logic.keepJobFolders = keep_jobs
        # the class's one queue of generation jobs (land_studio.jobqueue), shared by every page process
        self.queue = queue
        self.gate = None
        if queue is not None:
            from .jobqueue import QueueGate

            self.gate = QueueGate(queue, str(self.workDir.name), self.logic.extraEnvironment)
            self.logic.startGate = self.gate
        self.reference = None
        self.segmentation = None
        self.result = None
        self.resultPath: Path | None = None
        self.lungsTask = None
        self.effect = "none"
        self.brushMm = 8.0
        self.scissorsMode = "erase_inside"

    # ------------------------------------------------------------------ loading
    def close(self) -> None:
        self.logic.cleanup()
        self._leaveQueue()
        shutil.rmtree(self.workDir / "jobs", ignore_errors=True)

    # ------------------------------------------------------------------ the class's job queue
    @property
    def queuePlace(self) -> dict[str, Any] | None:
        """This page's place in the class's queue (None: not queued)."""
        return self.gate.place if self.gate is not None else None

    def _leaveQueue(self) -> None:
        if self.gate is not None:
            self.gate.leave()

    def _clear(self) -> None:
        if self.logic.isRunning():
            raise LANDInputError("A generation is running; cancel it before loading something else.")
        self.setEffect("none")
        for node in (self.result, self.segmentation, self.reference):
            if node is not None and node.GetScene() is not None:
                self.app.scene.RemoveNode(node)
        self.reference = self.segmentation = self.result = None
        self.resultPath = None

    def loadDemoMasks(self) -> str:
        """The bundled demo masks (Lungs + three nodules) on the bundled model's blank reference grid."""
        self._clear()
        segmentation = self.editor.load_segmentation_from_file(str(demo_masks_path()))
        if segmentation is None:
            raise LANDSynthesisError(f"could not read the demo masks {demo_masks_path()}")
        segmentation.SetName("LAND masks")
        # the demo masks lie on the demo model's grid, which is the model's blank reference (air)
        reference = self.logic.createBlankReference(name="Demo masks reference (air)")
        self._activate(segmentation, reference)
        return "Demo masks loaded: Lungs and three nodules (textures 1, 3 and 5)."

    def loadCT(self, paths: list[str | Path]) -> str:
        """A CT to paint on (NIfTI, NRRD, MetaImage, or the files of one DICOM series) and an empty
        segmentation with a 'Lungs' segment."""
        paths = [Path(p) for p in paths]
        if not paths:
            raise LANDInputError("Choose a CT file (NIfTI, NRRD) or the files of a DICOM series.")
        for p in paths:
            if not p.exists():
                raise LANDInputError(f"{p} does not exist.")
        files = [f for p in paths for f in (sorted(p.iterdir()) if p.is_dir() else [p]) if f.is_file()]
        if self.logic.isRunning():
            raise LANDInputError("A generation is running; cancel it before loading something else.")
        try:
            volumes = self.app.io_manager.load_volumes([str(f) for f in files])
        except Exception as e:  # noqa: BLE001 - a reader's failure is a message for the page
            raise LANDInputError(f"Could not read {', '.join(p.name for p in paths)} as an image: {e}") from e
        volumes = [v for v in volumes or [] if v is not None and v.GetImageData() is not None]
        if not volumes:
            raise LANDInputError(
                f"{', '.join(p.name for p in paths)} is not an image this reader knows "
                "(NIfTI .nii/.nii.gz, NRRD .nrrd, MetaImage .mha, or a DICOM series)."
            )
        volume = max(volumes, key=lambda v: int(np.prod(v.GetImageData().GetDimensions())))
        for other in volumes:
            if other is not volume:
                self.app.scene.RemoveNode(other)
        self._clear()  # only now: a file that cannot be read leaves the current work as it was
        self.logic.setLungWindow(volume)
        segmentation = self.editor.create_empty_segmentation_node()
        segmentation.SetName("LAND masks")
        seglib.addLungSegment(segmentation)
        self._activate(segmentation, volume)
        dims = "x".join(str(n) for n in volume.GetImageData().GetDimensions())
        return f"Loaded {volume.GetName()} ({dims} voxels): paint 'Lungs' or press 'Lungs from CT'."

    def _activate(self, segmentation, reference) -> None:
        self.segmentation, self.reference = segmentation, reference
        self.editor.set_active_segmentation(segmentation, reference)
        self.app.display_manager.show_volume_in_slice_background(reference)
        self.app.display_manager.reset_views()
        ids = seglib.segmentIds(segmentation)
        if ids:
            self.editor.set_active_segment_id(ids[-1])

    # ------------------------------------------------------------------ segments
    def segments(self) -> list[dict[str, Any]]:
        """The segment list as the page shows it: Lungs first, then the nodules in engine label order."""
        node = self.segmentation
        if node is None:
            return []
        rows = []
        segmentation = node.GetSegmentation()
        lungs = set(seglib.lungSegmentIds(node))
        for segmentId in seglib.segmentIds(node):
            segment = segmentation.GetSegment(segmentId)
            stats = seglib.segmentStatistics(node, segmentId)
            kind = "lung" if segmentId in lungs else "nodule"
            try:
                texture = seglib.getTexture(node, segmentId) if kind == "nodule" else None
            except ValueError:
                texture = None
            rows.append(
                {
                    "id": segmentId,
                    "name": segment.GetName(),
                    "kind": kind,
                    "color": _hex(segment.GetColor()),
                    "texture": texture,
                    "textureText": seglib.textureText(texture) if kind == "nodule" else "",
                    "voxels": stats["voxels"],
                    "diameter_mm": round(stats["diameter_mm"], 1),
                }
            )
        rows.sort(key=lambda r: r["kind"] != "lung")
        return rows

    def activeSegmentId(self) -> str:
        return self.editor.get_active_segment_id() if self.segmentation is not None else ""

    def _need_segmentation(self) -> None:
        if self.segmentation is None:
            raise LANDInputError("Load a CT or the demo masks first.")

    def selectSegment(self, segmentId: str) -> None:
        self._need_segmentation()
        self.editor.set_active_segment_id(segmentId)

    def addLungs(self) -> str:
        self._need_segmentation()
        segmentId = seglib.addLungSegment(self.segmentation)
        self.editor.set_active_segment_id(segmentId)
        return segmentId

    def addNodule(self, texture: int | None = 5) -> str:
        self._need_segmentation()
        segmentId = seglib.addNoduleSegment(self.segmentation, texture)
        self.editor.set_active_segment_id(segmentId)
        return segmentId

    def removeSegment(self, segmentId: str) -> None:
        self._need_segmentation()
        self.editor.remove_segment(segmentId)

    def setTexture(self, segmentId: str, texture: int | None) -> None:
        self._need_segmentation()
        try:
            seglib.setTexture(self.segmentation, segmentId, texture)
        except ValueError as e:
            raise LANDInputError(str(e)) from None

    def setEffect(self, name: str) -> None:
        """Slicer's segment editor effect in the slice views: none, paint, erase, threshold (a preview of the
        range until applied), islands (applied with :meth:`applyIslands`) or scissors (draw in the view)."""
        from trame_slicer import segmentation as ts

        if name not in EFFECTS:
            raise LANDInputError(f"unknown effect {name!r}; one of {', '.join(EFFECTS)}")
        if name != "none":
            self._need_segmentation()
        if self.segmentation is None:
            self.effect = "none"
            return
        kind = {
            "none": ts.SegmentationEffectNoTool,
            "paint": ts.SegmentationEffectPaint,
            "erase": ts.SegmentationEffectErase,
            "threshold": ts.SegmentationEffectThreshold,
            "islands": ts.SegmentationEffectIslands,
            "scissors": ts.SegmentationEffectScissors,
        }
        effect = self.editor.set_active_effect_type(kind[name])
        self.effect = name
        self.setBrush(self.brushMm, effect)
        if name == "scissors":
            self.setScissorsMode(self.scissorsMode)

    def _effect(self, name: str):
        if self.effect != name:
            self.setEffect(name)
        return self.editor.active_effect

    def applyThreshold(self, low: float, high: float) -> int:
        """Threshold: the active segment becomes the reference voxels in [low, high] (HU); its voxel count."""
        self._need_segmentation()
        if self.reference is None or self.reference.GetAttribute("LAND.BlankReference") == "true":
            raise LANDInputError("Threshold needs a CT: load one first (the demo masks have no CT).")
        low, high = float(low), float(high)
        if not low <= high:
            raise LANDInputError(f"The threshold range is empty: {low:g} > {high:g}.")
        effect = self._effect("threshold")
        effect.set_threshold_min_max_values((low, high))
        effect.apply()
        return self._voxels()

    def applyIslands(self, mode: str = "keep_largest", minimumSize: int = 1000) -> int:
        """Islands on the active segment: keep the largest, or remove those under ``minimumSize`` voxels."""
        from trame_slicer.segmentation import SegmentationIslandsMode

        self._need_segmentation()
        if mode not in ISLAND_MODES:
            raise LANDInputError(f"unknown islands mode {mode!r}; one of {', '.join(ISLAND_MODES)}")
        effect = self._effect("islands")
        if mode == "keep_largest":
            effect.apply(SegmentationIslandsMode.KEEP_LARGEST_ISLAND)
        else:
            effect.set_minimum_island_size(int(minimumSize))
            effect.apply(SegmentationIslandsMode.REMOVE_SMALL_ISLANDS)
        return self._voxels()

    def setScissorsMode(self, mode: str) -> None:
        """What a scissors stroke does: erase (or fill) inside (or outside) the drawn outline."""
        from trame_slicer.segmentation import ScissorsEffectFillMode, SegmentationEffectScissors

        if mode not in SCISSORS_MODES:
            raise LANDInputError(f"unknown scissors mode {mode!r}; one of {', '.join(SCISSORS_MODES)}")
        self.scissorsMode = mode
        effect = self.editor.active_effect
        if isinstance(effect, SegmentationEffectScissors):
            effect.set_fill_mode(ScissorsEffectFillMode[mode.upper()])

    def _voxels(self) -> int:
        return int(seglib.segmentStatistics(self.segmentation, self.activeSegmentId())["voxels"])

    def setBrush(self, diameterMm: float, effect=None) -> None:
        from trame_slicer.segmentation import AbstractSegmentationEffectBrush, BrushDiameterMode

        self.brushMm = float(diameterMm)
        effect = effect or self.editor.active_effect
        if isinstance(effect, AbstractSegmentationEffectBrush):
            effect.set_brush_diameter(self.brushMm, BrushDiameterMode.Absolute)

    # ------------------------------------------------------------------ lungs from CT
    def startLungsFromCT(self) -> None:
        self._need_segmentation()
        if self.reference is None or self.reference.GetAttribute("LAND.BlankReference") == "true":
            raise LANDInputError("Lungs from CT needs a CT: load one first (the demo masks have no CT).")
        if self.lungsTask is not None:
            raise LANDInputError("Lungs from CT is already running.")
        self.lungsTask = self.logic.startLungsFromCT(self.reference)

    def pollLungs(self) -> str | None:
        """None while running; the summary when done (LANDSynthesisError when it failed)."""
        task = self.lungsTask
        if task is None or not task.done:
            return None
        self.lungsTask = None
        segmentId, summary = self.logic.finishLungsFromCT(task, self.segmentation)
        self.editor.set_active_segment_id(segmentId)
        return summary

    # ------------------------------------------------------------------ model and generation
    def modelCard(self, modelDirectory: str | None = None) -> dict[str, Any]:
        info = self.logic.modelInfo(modelDirectory)
        scale, mode = info.guidance
        return {
            "name": info.name,
            "summary": info.summary(),
            "guidance": guidance_text(scale=scale, mode=mode),
            "card": info.card,
            "trained": info.trained,
        }

    def startGeneration(self, parameters: dict[str, Any], onProgress=None) -> None:
        """``land generate`` on the segmentation (LANDSynthesisLogic.start: checks, mask export, child)."""
        self._need_segmentation()
        params = {"sampler": DEFAULT_SAMPLER, "seed": 0, **parameters}
        if not params.get("steps"):
            params["steps"] = DEFAULT_STEPS[params["sampler"]]
        self.setEffect("none")
        self.logic.start(
            self.segmentation, self.reference, GenerationParameters.fromAny(params), onProgress=onProgress
        )

    def pollGeneration(self) -> bool:
        """Advance the generation; True while it runs. On success the result is shown under the masks."""
        job = self.logic.job
        active = self.logic.poll()
        if not active:
            self._leaveQueue()  # done, failed or cancelled: the slot (or the place) goes to the next job
        succeeded = job is not None and job.state == job.SUCCEEDED
        if not active and succeeded and job.resultNode is not self.result:
            self._showResult(job.resultNode)
        return active

    def cancelGeneration(self) -> None:
        self.logic.cancel()

    def _showResult(self, node) -> None:
        self.result = node
        self.resultPath = None
        self.app.display_manager.show_volume_in_slice_background(node)

    def writeDicom(self, name: str = "synthetic_ct_dicom") -> Path:
        """The result as a DICOM CT series labelled SYNTHETIC (the engine's teaching-set writer: patient name
        SYNTHETIC^LAND^..., SYNTHETIC in descriptions and burned into every slice), zipped for download."""
        import zipfile

        from land.imaging.io import read_volume
        from land.teaching.dicom_export import LABEL, write_ct_series

        nifti = self.writeResult()
        ct = read_volume(nifti)
        provenance = json.loads(self.result.GetAttribute("LAND.Provenance") or "{}")
        folder = nifti.parent / name
        seed = provenance.get("seed", "")
        write_ct_series(folder, ct, case="studio", patient_id=f"SYNTH-STUDIO-{seed}",
                        study_description=f"{LABEL} LAND Studio",
                        series_description=f"{LABEL} CT seed {seed}",
                        model_id=str(provenance.get("model_id", "")),
                        comments=self.result.GetAttribute("LAND.Description") or "")  # fmt: skip
        archive = folder.with_suffix(".zip")
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.iterdir()):
                z.write(f, f"{name}/{f.name}")
        return archive

    def writeResult(self, name: str = "synthetic_ct.nii.gz") -> Path:
        """The result as the engine labels it (NIfTI + provenance sidecar, SYNTHETIC in the header)."""
        from land.imaging.io import write_volume
        from land.imaging.volume import Volume

        if self.result is None:
            raise LANDInputError("Generate a CT first.")
        if self.resultPath is not None and self.resultPath.name == name and self.resultPath.is_file():
            return self.resultPath
        spacing, origin, direction = _lpsGeometry(seglib.ijkToRasArray(self.result))
        array = np.array(slicer.util.arrayFromVolume(self.result), copy=True)
        provenance = json.loads(self.result.GetAttribute("LAND.Provenance") or "{}")
        provenance.setdefault("description", self.result.GetAttribute("LAND.Description") or "")
        out = self.workDir / "results" / name
        out.parent.mkdir(exist_ok=True)
        write_volume(out, Volume(array, spacing, origin, direction), provenance)
        self.resultPath = out
        return out
