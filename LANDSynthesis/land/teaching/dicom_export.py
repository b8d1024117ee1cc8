"""Write a synthetic CT volume as a DICOM CT Image series (one file per slice), clearly labelled SYNTHETIC.

Geometry: slice ``k`` is array plane ``[k]``; Image Orientation (Patient) is the volume's first two
direction columns (row, column directions), Image Position (Patient) is ``origin + k * dz * normal``; Pixel
Spacing is (row spacing, column spacing) = (dy, dx); Slice Thickness and Spacing Between Slices are dz.
Pixels are stored unsigned 16-bit as ``HU + 1024`` with Rescale Intercept -1024, Slope 1 (exact).
Labelling: Patient Name ``SYNTHETIC^LAND^<case>``, Image Type ``DERIVED\\SECONDARY\\AXIAL``, Study and
Series Description "SYNTHETIC – LAND ..." (the en dash needs Specific Character Set ``ISO_IR 192``, UTF-8),
Image Comments, Burned In Annotation matching the burn-in option, fresh UIDs.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ..imaging.atomic import atomic_path
from ..imaging.volume import Volume
from ..interface import __version__
from .font import burn_text

RESCALE_INTERCEPT = -1024
WINDOWS = (("LUNG", -600.0, 1500.0), ("MEDIASTINUM", 40.0, 400.0))
LABEL = "SYNTHETIC – LAND"  # en dash: needs ISO_IR 192 (UTF-8)
BURN_TEXT = "SYNTHETIC"
# Synthetic Data (0008,001C) "YES" is a recent standard attribute; dciodvfy of Debian's dicom3tools
# (1.00~20220618) does not know it and reports an error, so it is left out until validators catch up.
SYNTHETIC_DATA_ATTRIBUTE = False
BURN_HU = (1000, -1000)  # text, outline: white and black in both window presets


@dataclass
class SeriesInfo:
    """What was written: the UIDs and, per slice (k = 0..), the file and its Image Position (Patient)."""

    study_uid: str
    series_uid: str
    frame_uid: str
    files: list[Path] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)
    positions: list[tuple[float, float, float]] = field(default_factory=list)


def slice_geometry(ct: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, slice direction, Image Position (Patient) per slice (n, 3))."""
    d = np.asarray(ct.direction, float).reshape(3, 3)
    nz = ct.array.shape[0]
    positions = np.asarray(ct.origin, float)[None] + np.arange(nz)[:, None] * ct.spacing[2] * d[:, 2][None]
    return d[:, 0], d[:, 1], d[:, 2], positions


def burn_scale(rows: int, cols: int) -> int:
    """Text scale: 1 up to 511 pixels, then 2, ... (the text stays a small corner label)."""
    return max(1, min(rows, cols) // 256)


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text[:16]


def write_ct_series(
    folder: str | os.PathLike,
    ct: Volume,
    *,
    case: str,
    patient_id: str,
    study_description: str,
    series_description: str,
    burn_in: bool = True,
    model_id: str = "",
    comments: str = "",
    created: _dt.datetime | None = None,
) -> SeriesInfo:
    """Write ``ct`` (int16 HU, any orthonormal direction) as ``folder/IM0001.dcm`` ...; atomically (the
    series is written into a temporary sibling folder that replaces ``folder`` when complete)."""
    final = Path(folder)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as tmp:
        tmp.mkdir()
        info = _write(tmp, ct, case, patient_id, study_description, series_description, burn_in, model_id,
                      comments, created or _dt.datetime.now())  # fmt: skip
    info.files = [final / f.name for f in info.files]
    return info


def _write(
    folder: Path,
    ct: Volume,
    case: str,
    patient_id: str,
    study_description: str,
    series_description: str,
    burn_in: bool,
    model_id: str,
    comments: str,
    created: _dt.datetime,
) -> SeriesInfo:
    row, col, normal, positions = slice_geometry(ct)
    nz, rows, cols = ct.array.shape
    info = SeriesInfo(generate_uid(), generate_uid(), generate_uid())
    date, time = created.strftime("%Y%m%d"), created.strftime("%H%M%S")
    hu = np.clip(ct.array.astype(np.int32), RESCALE_INTERCEPT, 65535 + RESCALE_INTERCEPT)
    scale = burn_scale(rows, cols)
    width = max(4, len(str(nz)))
    base = _base_dataset(info, case, patient_id, study_description, series_description, burn_in, model_id,
                         comments, date, time)  # fmt: skip
    base.Rows, base.Columns = rows, cols
    base.PixelSpacing = [_ds(ct.spacing[1]), _ds(ct.spacing[0])]
    base.SliceThickness = _ds(ct.spacing[2])
    base.SpacingBetweenSlices = _ds(ct.spacing[2])
    base.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
    for k in range(nz):
        plane = hu[k].copy()
        if burn_in:
            burn_text(plane, BURN_TEXT, BURN_HU[0], BURN_HU[1], scale)
        ds = Dataset()
        ds.update(base)
        sop_uid = generate_uid()
        ds.file_meta = _file_meta(sop_uid)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.SliceLocation = _ds(float(positions[k] @ normal))
        ds.PixelData = (plane - RESCALE_INTERCEPT).astype("<u2").tobytes()
        path = folder / f"IM{k + 1:0{width}d}.dcm"
        _save(ds, path)
        info.files.append(path)
        info.sop_uids.append(sop_uid)
        info.positions.append(tuple(float(v) for v in positions[k]))  # type: ignore[arg-type]
    return info


def _save(ds: Dataset, path: Path) -> None:
    """Write a DICOM Part 10 file (preamble + file meta) with pydicom 3 (or 2.x)."""
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _base_dataset(
    info: SeriesInfo,
    case: str,
    patient_id: str,
    study_description: str,
    series_description: str,
    burn_in: bool,
    model_id: str,
    comments: str,
    date: str,
    time: str,
) -> Dataset:
    ds = Dataset()
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    if SYNTHETIC_DATA_ATTRIBUTE:
        ds.SyntheticData = "YES"
    # Patient (non-identifying, synthetic)
    ds.PatientName = f"SYNTHETIC^LAND^{case}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    # General Study
    ds.StudyInstanceUID = info.study_uid
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = case[-16:]
    ds.AccessionNumber = ""
    ds.StudyDescription = study_description
    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = info.series_uid
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = series_description
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    # Frame of Reference
    ds.FrameOfReferenceUID = info.frame_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = "LAND (synthetic image generator, not a scanner)"
    ds.ManufacturerModelName = (model_id or "LAND")[:64]
    ds.SoftwareVersions = f"land {__version__}"
    # General Image / General Acquisition / CT Image
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionNumber = 1
    ds.DerivationDescription = f"{LABEL}: generated by a latent diffusion model from lung/nodule masks"[:1024]
    ds.ImageComments = (comments or f"{LABEL}: synthetic image, not a patient")[:10240]
    ds.BurnedInAnnotation = "YES" if burn_in else "NO"
    ds.LossyImageCompression = "00"
    ds.KVP = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    # VOI LUT: lung and mediastinum presets
    ds.WindowCenter = [_ds(c) for _, c, _ in WINDOWS]
    ds.WindowWidth = [_ds(w) for _, _, w in WINDOWS]
    ds.WindowCenterWidthExplanation = [name for name, _, _ in WINDOWS]
    return ds
