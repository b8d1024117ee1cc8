"""Segments of a LAND segmentation: naming, colours, terminology, the texture tag, statistics and shapes.

Conventions shared with the engine (``land.imaging.io``): segments whose name starts with "Lung" (any case,
not
mentioning "nodule") are lung; every other segment is a nodule, labelled 1..K in segment order; a nodule's
texture 1..5 is the segment tag ``LAND.Texture``. This module needs only numpy and VTK/MRML (no torch, no Qt).
"""

from __future__ import annotations

import math
import re

import numpy as np

from land.interface.masks import is_lung_segment_name
from land.interface.segment_style import (  # noqa: F401 - re-exported for the module
    LUNG_COLOR,
    LUNG_SEGMENT_NAME,
    LUNG_TERMINOLOGY,
    NODULE_COLORS,
    NODULE_TERMINOLOGY,
    TEXTURE_TAG,
    TEXTURE_WORDS,
)

NODULE_NAME_PATTERN = re.compile(r"^\s*nodule\s*(\d+)\s*$", re.IGNORECASE)


def textureText(texture: int | None) -> str:
    """'3 - part-solid'; 'not set' for None."""
    if texture is None:
        return "not set"
    return f"{texture} - {TEXTURE_WORDS.get(texture, 'invalid')}"


def isLungSegmentName(name: str) -> bool:
    """The engine's rule (:func:`land.interface.masks.is_lung_segment_name`): the lungs' segments by name."""
    return is_lung_segment_name(name or "")


# ---------------------------------------------------------------------------------------------- segments
def segmentIds(segmentationNode) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def lungSegmentIds(segmentationNode) -> list[str]:
    seg = segmentationNode.GetSegmentation()
    return [s for s in segmentIds(segmentationNode) if isLungSegmentName(seg.GetSegment(s).GetName())]


def noduleSegmentIds(segmentationNode) -> list[str]:
    """Nodule segments in segment order (their engine labels are 1..K in this order, empty ones skipped)."""
    seg = segmentationNode.GetSegmentation()
    return [s for s in segmentIds(segmentationNode) if not isLungSegmentName(seg.GetSegment(s).GetName())]


def _setTerminology(segment, entry: str) -> None:
    segment.SetTag(segment.GetTerminologyEntryTagName(), entry)


def addLungSegment(segmentationNode, name: str = LUNG_SEGMENT_NAME) -> str:
    """The existing lung segment's ID, or a new empty "Lungs" segment with lung colour and terminology."""
    existing = lungSegmentIds(segmentationNode)
    if existing:
        return existing[0]
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GenerateUniqueSegmentID(name)
    segmentation.AddEmptySegment(segmentId, name, LUNG_COLOR)  # first argument is the ID, then the name
    segment = segmentation.GetSegment(segmentId)
    _setTerminology(segment, LUNG_TERMINOLOGY)
    return segmentId


def nextNoduleNumber(segmentationNode) -> int:
    numbers = [0]
    seg = segmentationNode.GetSegmentation()
    for s in noduleSegmentIds(segmentationNode):
        m = NODULE_NAME_PATTERN.match(seg.GetSegment(s).GetName())
        if m:
            numbers.append(int(m.group(1)))
    return max(numbers) + 1


def addNoduleSegment(segmentationNode, texture: int | None = None, name: str | None = None) -> str:
    """A new empty nodule segment "Nodule k" (k = next free number) with colour, terminology and texture."""
    number = nextNoduleNumber(segmentationNode)
    name = name or f"Nodule {number}"
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GenerateUniqueSegmentID(name.replace(" ", "_"))
    color = NODULE_COLORS[(number - 1) % len(NODULE_COLORS)]
    segmentation.AddEmptySegment(segmentId, name, color)
    segment = segmentation.GetSegment(segmentId)
    _setTerminology(segment, NODULE_TERMINOLOGY)
    if texture is not None:
        setTexture(segmentationNode, segmentId, texture)
    return segmentId


def textureTag(segmentationNode, segmentId: str) -> str | None:
    """The raw ``LAND.Texture`` tag text (None when the segment has no such tag)."""
    import vtk

    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        raise KeyError(f"segment {segmentId!r} not found")
    value = vtk.reference("")
    if not segment.GetTag(TEXTURE_TAG, value):
        return None
    return str(value.get() if hasattr(value, "get") else value)


def parseTexture(text: str | None) -> int | None:
    """'3' -> 3; None/'' -> None; anything else (2.5, 7, abc) raises ValueError."""
    if text is None or not str(text).strip():
        return None
    t = str(text).strip()
    if not re.fullmatch(r"\+?\d+", t) or not 1 <= int(t) <= 5:
        raise ValueError(f"texture {t!r} is not an integer 1..5")
    return int(t)


def getTexture(segmentationNode, segmentId: str) -> int | None:
    """The nodule's texture 1..5, None when not set (ValueError when the tag is invalid)."""
    return parseTexture(textureTag(segmentationNode, segmentId))


def setTexture(segmentationNode, segmentId: str, texture: int | None) -> None:
    """Store (or with None remove) the texture tag; it is saved with the scene and in .seg.nrrd files."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        raise KeyError(f"segment {segmentId!r} not found")
    if texture is None:
        segment.RemoveTag(TEXTURE_TAG)
        return
    t = parseTexture(str(texture))
    segment.SetTag(TEXTURE_TAG, str(t))


# ---------------------------------------------------------------------------------------------- statistics
def segmentStatistics(segmentationNode, segmentId: str) -> dict[str, float]:
    """Voxel count, volume (mL) and equivalent-sphere diameter (mm) of a segment's internal binary labelmap.

    Counts on the segmentation's own labelmap (no resampling); the voxel volume is the determinant of the
    labelmap's IJK-to-RAS matrix, so oblique and anisotropic geometries count right.
    """
    import vtk
    import vtk.util.numpy_support

    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    image = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
    voxels = 0
    voxelVolume = 0.0
    if segment is not None and image is not None and image.GetPointData().GetScalars() is not None:
        extent = image.GetExtent()
        if extent[1] >= extent[0] and extent[3] >= extent[2] and extent[5] >= extent[4]:
            scalars = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
            voxels = int(np.count_nonzero(scalars == segment.GetLabelValue()))
            matrix = vtk.vtkMatrix4x4()
            image.GetImageToWorldMatrix(matrix)
            m = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
            voxelVolume = abs(float(np.linalg.det(m)))
    volumeMm3 = voxels * voxelVolume
    diameter = (6.0 * volumeMm3 / math.pi) ** (1.0 / 3.0) if volumeMm3 > 0 else 0.0
    return {"voxels": voxels, "volume_ml": volumeMm3 / 1000.0, "diameter_mm": diameter}


# ---------------------------------------------------------------------------------------------- geometry
def ijkToRasArray(volumeNode) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def sphereMask(
    shape_kji: tuple[int, int, int], ijkToRas: np.ndarray, centerRas, diameterMm: float
) -> np.ndarray:
    """Voxels (array [k, j, i]) whose centre lies within the sphere; the nearest voxel when it is tiny.

    Computed on the sphere's bounding box in index space only, so it is fast on large volumes.
    """
    m = np.asarray(ijkToRas, float)
    center = np.asarray(centerRas, float)
    radius = max(float(diameterMm), 0.0) / 2.0
    out = np.zeros(shape_kji, np.uint8)
    inv = np.linalg.inv(m)
    cijk = (inv @ np.append(center, 1.0))[:3]
    spacing = np.linalg.norm(m[:3, :3], axis=0)  # mm per voxel step along i, j, k
    half = np.ceil(radius / spacing) + 1
    size_ijk = np.array(shape_kji[::-1])
    lo = np.maximum(np.floor(cijk - half), 0).astype(int)
    hi = np.minimum(np.ceil(cijk + half), size_ijk - 1).astype(int)
    if np.all(hi >= lo):
        ii, jj, kk = (np.arange(lo[a], hi[a] + 1) for a in range(3))
        gk, gj, gi = np.meshgrid(kk, jj, ii, indexing="ij")
        pts = np.stack([gi, gj, gk], -1).reshape(-1, 3).astype(float) @ m[:3, :3].T + m[:3, 3]
        inside = (np.sum((pts - center) ** 2, axis=1) <= radius * radius).reshape(gk.shape)
        out[lo[2] : hi[2] + 1, lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] = inside
    if not out.any():
        nearest = np.rint(cijk).astype(int)
        if np.all(nearest >= 0) and np.all(nearest < size_ijk):
            out[nearest[2], nearest[1], nearest[0]] = 1
    return out


def placeShape(
    shape_kji: tuple[int, int, int], ijkToRas: np.ndarray, centerRas, mask: np.ndarray
) -> np.ndarray:
    """Paste a [k, j, i] ``mask`` (reference voxel grid) centred at ``centerRas``, cropped at edges."""
    out = np.zeros(shape_kji, np.uint8)
    m = np.asarray(ijkToRas, float)
    cijk = np.rint((np.linalg.inv(m) @ np.append(np.asarray(centerRas, float), 1.0))[:3]).astype(int)
    ckji = cijk[::-1]
    src = np.asarray(mask) != 0
    start = ckji - np.array(src.shape) // 2
    dst_lo = np.maximum(start, 0)
    dst_hi = np.minimum(start + np.array(src.shape), np.array(shape_kji))
    if np.any(dst_hi <= dst_lo):
        return out
    src_lo = dst_lo - start
    src_hi = src_lo + (dst_hi - dst_lo)
    out[dst_lo[0] : dst_hi[0], dst_lo[1] : dst_hi[1], dst_lo[2] : dst_hi[2]] = src[
        src_lo[0] : src_hi[0], src_lo[1] : src_hi[1], src_lo[2] : src_hi[2]
    ]
    return out


def pairNoduleProblems(
    segmentationNode, pairSegmentId: str | None, pairNodule: int | None, mode: str
) -> list[str]:
    """Problems with the matched pair's nodule (a painted nodule segment, a mode with nodules)."""
    if pairSegmentId is None and pairNodule is None:
        return []
    if mode == "none":
        return ["A matched pair needs nodules: choose a mode with nodules, or turn the matched pair off."]
    if pairSegmentId is None:
        return []
    if not pairSegmentId:
        return ["Choose the nodule the matched twin goes without (add and paint a nodule first)."]
    if segmentationNode is None or pairSegmentId not in noduleSegmentIds(segmentationNode):
        return [f"The matched pair's nodule ({pairSegmentId}) is not a nodule segment of the "
                "segmentation; choose one of its nodules."]  # fmt: skip
    if not segmentStatistics(segmentationNode, pairSegmentId)["voxels"]:
        name = segmentationNode.GetSegmentation().GetSegment(pairSegmentId).GetName()
        return [f"The matched pair's nodule '{name}' is empty: paint it, or choose another nodule."]
    return []
