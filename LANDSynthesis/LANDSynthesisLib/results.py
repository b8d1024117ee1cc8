"""The engine's result volume: read in a worker thread, added to the scene as a node on the GUI thread."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from . import segments as seglib
from .maskexport import conformToReference
from .nrrd import read_nrrd, read_nrrd_header
from .options import LUNG_LEVEL, LUNG_WINDOW, RESULT_ATTRIBUTE, LANDSynthesisError
from .resample import conformArray

PAIR_RESULT_ROLE = "LastPairResult"  # parameter-node reference to the last result's matched twin


def uniqueNodeName(name: str) -> str:
    """``name``, or ``name_1``, ``name_2``, … when the scene already has a node of that name."""
    if slicer.mrmlScene.GetFirstNodeByName(name) is None:
        return name
    return slicer.mrmlScene.GenerateUniqueName(name)


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


class ResultLoadingMixin:
    """LANDSynthesisLogic's result-loading methods."""

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
        role: str = "LastResult",
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
        ids = (transformNodeId, segmentationNodeId)
        return self._finishResultNode(node, loaded.fields, replacePrevious, *ids, role)

    def _loadWithSlicerReader(
        self,
        path,
        name: str,
        replacePrevious: bool = False,
        transformNodeId: str | None = None,
        segmentationNodeId: str | None = None,
        referenceVolumeNode=None,
        role: str = "LastResult",
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
        ids = (transformNodeId, segmentationNodeId)
        return self._finishResultNode(node, header, replacePrevious, *ids, role)

    def linkMatchedPair(self, node, twin, label: int | None, noduleName: str) -> None:
        """Mark ``twin`` as ``node``'s matched twin without nodule ``label`` (``noduleName``), both ways."""
        node.SetAttribute("LAND.MatchedPair", twin.GetID())
        twin.SetAttribute("LAND.PairOf", node.GetID())
        twin.SetAttribute("LAND.PairRemovedNodule", "" if label is None else str(label))
        twin.SetAttribute("LAND.PairNoduleName", noduleName)

    def _finishResultNode(
        self, node, header: Mapping[str, str], replacePrevious, transformNodeId, segmentationNodeId,
        role: str = "LastResult",
    ):  # fmt: skip
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
            previous = parameterNode.GetNodeReference(role)
            if replacePrevious and previous is not None and previous is not node:
                slicer.mrmlScene.RemoveNode(previous)
                twin = parameterNode.GetNodeReference(PAIR_RESULT_ROLE) if role != PAIR_RESULT_ROLE else None
                if twin is not None:  # the previous result's matched twin goes with it
                    slicer.mrmlScene.RemoveNode(twin)
            if role != PAIR_RESULT_ROLE:
                parameterNode.SetNodeReferenceID(PAIR_RESULT_ROLE, None)  # a new result: its twin follows
            parameterNode.SetNodeReferenceID(role, node.GetID())
        return node
