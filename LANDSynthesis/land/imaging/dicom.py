"""DICOM CT series: find them under a folder by SeriesInstanceUID and read one in HU on a uniform slice grid.

Duplicate slice positions keep the lower InstanceNumber (as pylidc does); unevenly spaced slices are
interpolated onto a uniform grid. Used by ``land prepare-lidc`` (:mod:`land.data.prepare`) and ``land lungs``
(:func:`land.imaging.lungseg.read_ct`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..interface.errors import InputError
from .volume import Volume

__all__ = ["HU_RANGE", "DicomStack", "index_series", "read_dicom_series"]

HU_RANGE = (-1024.0, 3071.0)
_TAG_SERIES = "0020|000e"
_TAG_POSITION = "0020|0032"
_TAG_INSTANCE = "0020|0013"


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def index_series(dicom_root: str | os.PathLike) -> dict[str, Path]:
    """SeriesInstanceUID -> folder, for every folder with ``.dcm`` files under ``dicom_root``.

    One header per folder is read (first and last file; all series of the folder when they differ).
    """
    root = Path(dicom_root)
    if not root.is_dir():
        raise InputError(f"DICOM root {root} is not a folder")
    index: dict[str, Path] = {}
    for folder, _dirs, files in os.walk(root):
        dcm = sorted(f for f in files if f.lower().endswith(".dcm") and not f.startswith("."))
        if not dcm:
            continue
        try:
            uids = {_tag(_header(os.path.join(folder, f)), _TAG_SERIES) for f in (dcm[0], dcm[-1])}
            if len(uids) > 1:
                uids = set(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder))
        except RuntimeError:
            continue
        for uid in uids:
            if uid:
                index.setdefault(uid, Path(folder))
    return index


@dataclass
class DicomStack:
    """A CT series in HU on a uniform slice grid.

    ``slice_z`` is the ImagePositionPatient z of each *read* slice (after removing duplicates), in read
    order; ``source`` maps every slice of ``volume`` to the nearest read slice (the identity for evenly
    spaced series).
    """

    volume: Volume
    slice_z: np.ndarray
    source: np.ndarray
    notes: list[str] = field(default_factory=list)


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> DicomStack:
    """Read a CT series (HU, float32, clipped to [-1024, 3071]) with SimpleITK; ``series_uid`` may be left
    out when ``folder`` holds one series."""
    folder = str(folder)
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if series_uid is None:
        if not uids:
            raise InputError(
                f"no DICOM series in {folder}; fix: give the folder that holds the series' .dcm files (or a "
                "NIfTI/NRRD file)"
            )
        if len(uids) > 1:
            raise InputError(
                f"{folder} holds {len(uids)} DICOM series ({', '.join(uids)}); fix: pick one (--series UID), "
                "or give a folder with one series"
            )
        series_uid = uids[0]
    elif series_uid not in uids:
        raise InputError(f"series {series_uid} not found in {folder}")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_uid))
    notes: list[str] = []
    positions, kept = [], []
    seen: dict[float, int] = {}
    for f in files:
        header = _header(f)
        pos = (
            [float(v) for v in _tag(header, _TAG_POSITION).split("\\")] if _tag(header, _TAG_POSITION) else []
        )
        if len(pos) != 3:
            raise InputError(f"{f} has no ImagePositionPatient")
        inst = int(float(_tag(header, _TAG_INSTANCE) or 0))
        key = round(pos[2], 2)
        if key in seen:  # duplicate slice position: keep the lower InstanceNumber (as pylidc does)
            j = seen[key]
            if inst < kept[j][1]:
                kept[j], positions[j] = (f, inst), pos
            notes.append(f"duplicate slice at z={pos[2]:g} dropped")
            continue
        seen[key] = len(kept)
        kept.append((f, inst))
        positions.append(pos)
    if len(kept) < 2:
        raise InputError(f"series {series_uid} in {folder} has fewer than 2 slices")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([f for f, _ in kept])
    image = reader.Execute()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"series {series_uid} is not a scalar 3D image")
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    pos = np.asarray(positions, float)
    along = pos @ direction[:, 2]
    order = np.argsort(along, kind="stable")
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if not np.array_equal(order, np.arange(len(order))):  # keep slices in increasing position
        array, pos, along = array[order], pos[order], along[order]
    np.clip(array, *HU_RANGE, out=array)
    steps = np.diff(along)
    step = float(np.median(steps))
    if step <= 0:
        raise InputError(f"series {series_uid}: slices share one position")
    source = np.arange(len(along))
    if np.max(np.abs(steps - step)) > 0.05 * step + 0.01:  # uneven spacing / missing slices
        n = int(round((along[-1] - along[0]) / step)) + 1
        grid = along[0] + step * np.arange(n)
        hi = np.clip(np.searchsorted(along, grid, side="right"), 1, len(along) - 1)
        lo = hi - 1
        w = np.clip((grid - along[lo]) / (along[hi] - along[lo]), 0.0, 1.0).astype(np.float32)
        array = array[lo] * (1 - w)[:, None, None] + array[hi] * w[:, None, None]
        source = np.where(w < 0.5, lo, hi)
        notes.append(f"uneven slice spacing: interpolated onto {n} slices of {step:.3g} mm")
    spacing = (image.GetSpacing()[0], image.GetSpacing()[1], step)
    volume = Volume(array, spacing, tuple(float(v) for v in pos[0]), tuple(direction.ravel()))
    return DicomStack(volume, pos[:, 2].copy(), source, notes)
