"""Segmentation -> the engine's mask inputs: layers resampled onto the reference grid, combined, written."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from land.interface.masks import restore_lung

from . import segments as seglib
from .nrrd import RAS_TO_LPS, write_nrrd
from .options import LANDInputError
from .resample import conformArray, resampleNearest


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
    them out of the lung; :func:`land.interface.masks.restore_lung`).
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


def engineMaskOptions(inputs: MaskInputs, paths: Mapping[str, Path | None]) -> dict[str, Any]:
    """``land.interface.contract.GenerateOptions`` fields for the written inputs (textures as
    ``label=texture``); the
    CT comes back in the masks' geometry (``match_input``)."""
    options: dict[str, Any] = {"mask": str(paths["mask"]), "match_input": True}
    if paths.get("nodules") is not None:
        options["nodules"] = str(paths["nodules"])
    if inputs.textures:
        options["texture"] = ",".join(f"{k}={v}" for k, v in sorted(inputs.textures.items()))
    return options


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


class MaskExportMixin:
    """LANDSynthesisLogic's segmentation -> engine inputs methods."""

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
