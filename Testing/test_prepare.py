"""LIDC-IDRI preparation: pylidc shim and database, annotation -> mask, and the per-scan pipeline on a
fake LIDC tree (a phantom written as a DICOM series, with stub pylidc Scan/Annotation objects)."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from land.data.check import check_dataset
from land.data.folder import load_case, read_manifest
from land.data.lidc import NoduleRecord, ScanRecord, median_rating, scan_record
from land.data.prepare import (
    crop_grid,
    index_series,
    nodule_labels,
    prepare_case,
    prepare_lidc,
    read_dicom_series,
)
from land.imaging.volume import Volume
from land.interface.errors import InputError
from land.world.phantom import make_phantom

STUDY = "1.2.826.0.1.3680043.8.498.1"


# ------------------------------------------------------------------------------------------- fixtures


def write_dicom_series(
    volume: Volume, folder: Path, series_uid: str, patient_id: str, shuffle_names: bool = True
) -> np.ndarray:
    """Write an int16 HU volume (identity direction) as CT slices, file names in shuffled order.
    Returns the slice z positions in array order."""
    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    stored = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = image.GetDepth()
    order = np.random.default_rng(0).permutation(n) if shuffle_names else np.arange(n)
    zs = []
    for k in range(n):
        sl = stored[:, :, k]
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        zs.append(pos[2])
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0010|0020": patient_id,
            "0020|000d": STUDY,
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in pos),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{volume.spacing[1]:.4f}\\{volume.spacing[0]:.4f}",
            "0018|0050": f"{volume.spacing[2]:.4f}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"1-{order[k] + 1:03d}.dcm"))
        writer.Execute(sl)
    return np.asarray(zs)


class StubAnnotation:
    """The pylidc Annotation attributes used by land.data.lidc (full-scan mask in (i, j, k) order)."""

    def __init__(self, mask_ijk: np.ndarray, texture: int, malignancy: int, ident: int) -> None:
        self.full = mask_ijk
        self.texture, self.malignancy, self.id = texture, malignancy, ident
        self.volume = float(mask_ijk.sum())
        self.diameter = 10.0 + ident

    def bbox_matrix(self, pad=None) -> np.ndarray:
        nz = np.nonzero(self.full)
        return np.array([[a.min(), a.max()] for a in nz])

    def boolean_mask(self, pad=None, bbox=None, include_contour_points=False) -> np.ndarray:
        bb = self.bbox_matrix() if bbox is None else bbox
        return self.full[tuple(slice(b[0], b[1] + 1) for b in bb)]


class StubScan:
    """The pylidc Scan attributes used by land.data.lidc."""

    def __init__(self, patient_id, series_uid, zvals, pixel_spacing, clusters, ident=1) -> None:
        self.patient_id, self.series_instance_uid, self.study_instance_uid = patient_id, series_uid, STUDY
        self.slice_zvals, self.pixel_spacing, self.id = np.sort(zvals), pixel_spacing, ident
        self._clusters = clusters

    def cluster_annotations(self, verbose=True):
        return self._clusters


def stub_clusters(labels: np.ndarray, textures: list[list[int]]) -> list[list[StubAnnotation]]:
    """Per nodule label: readers with the exact mask, a dilated and an eroded one (majority = exact)."""
    clusters = []
    for lab, tex in zip(range(1, labels.max() + 1), textures, strict=False):
        exact = (labels == lab).transpose(1, 2, 0)  # [z, y, x] -> pylidc (i, j, k)
        grown = ndi.binary_dilation(exact, np.ones((3, 3, 1), bool))
        shrunk = ndi.binary_erosion(exact, np.ones((3, 3, 1), bool)) | exact & (ndi.label(exact)[0] == 0)
        masks = [exact, grown, shrunk][: len(tex)]
        clusters.append(
            [
                StubAnnotation(m, t, 3 + i, 10 * lab + i)
                for i, (m, t) in enumerate(zip(masks, tex, strict=True))
            ]
        )
    return clusters


@pytest.fixture(scope="module")
def fake_lidc(tmp_path_factory):
    """A tiny LIDC tree: two patients as DICOM series, plus their stub pylidc scans."""
    root = tmp_path_factory.mktemp("lidc")
    cases = []
    for n, seed in enumerate((3, 5), start=1):
        ph = make_phantom(
            seed, size=(112, 112, 48), spacing=(2.5, 2.5, 5.0), n_nodules=2, diameter_range_mm=(12, 24)
        )
        series = f"1.2.826.0.1.3680043.8.498.{100 + n}"
        pid = f"LIDC-IDRI-{n:04d}"
        zs = write_dicom_series(ph.image, root / pid / STUDY / series, series, pid)
        labels = ph.nodules.array.astype(int)
        textures = [[5, 4, 4], [3, 4]][: labels.max()]
        scan = StubScan(pid, series, zs, 2.5, stub_clusters(labels, textures), ident=n)
        cases.append((ph, scan))
    return root, cases


# -------------------------------------------------------------------------------------------- unit tests


def test_median_rating_rounds_half_up():
    assert median_rating([3, 4]) == 4
    assert median_rating([1, 2, 4, 5]) == 3
    assert median_rating([5, 5, 4, 1]) == 5
    assert median_rating([2]) == 2
    assert median_rating([1, 2]) == 2


def test_read_dicom_series_hu_geometry_and_sorting(fake_lidc):
    root, cases = fake_lidc
    ph, scan = cases[0]
    index = index_series(root)
    assert set(index) == {c[1].series_instance_uid for c in cases}
    stack = read_dicom_series(index[scan.series_instance_uid], scan.series_instance_uid)
    assert stack.volume.array.shape == ph.image.array.shape
    np.testing.assert_allclose(stack.volume.spacing, ph.image.spacing, atol=1e-3)
    np.testing.assert_allclose(stack.volume.origin, ph.image.origin, atol=1e-3)
    np.testing.assert_array_equal(stack.volume.array, np.clip(ph.image.array, -1024, 3071))  # HU, z order
    np.testing.assert_array_equal(stack.source, np.arange(ph.image.array.shape[0]))
    with pytest.raises(InputError, match="not found"):
        read_dicom_series(index[scan.series_instance_uid], "1.2.3")


def test_uneven_slices_are_interpolated(tmp_path):
    vol = Volume(np.repeat(np.arange(6, dtype=np.int16)[:, None, None] * 100, 8, 1).repeat(8, 2), (1, 1, 2))
    zs = write_dicom_series(vol, tmp_path / "s", "1.2.3.4", "P", shuffle_names=False)
    (tmp_path / "s" / "1-004.dcm").unlink()  # a missing slice
    stack = read_dicom_series(tmp_path / "s")
    assert stack.volume.array.shape[0] == 6 and stack.volume.spacing[2] == pytest.approx(2.0)
    assert stack.volume.array[3, 0, 0] == pytest.approx(300.0)  # interpolated between 200 and 400
    assert len(stack.slice_z) == 5 and zs[3] not in stack.slice_z
    assert any("uneven" in n for n in stack.notes)


def test_nodule_labels_axis_order_and_z_matching(fake_lidc):
    root, cases = fake_lidc
    ph, scan = cases[0]
    stack = read_dicom_series(index_series(root)[scan.series_instance_uid])
    record = scan_record(scan, 0.5, consensus=_consensus())
    labels = nodule_labels(record.nodules, record.slice_zvals, stack)
    expect = np.zeros_like(labels)
    for lab, cluster in enumerate(scan.cluster_annotations(), start=1):
        agreed = np.mean([a.full for a in cluster], axis=0) >= 0.5  # 3 readers: exact; 2 readers: union
        expect[agreed.transpose(2, 0, 1) & (expect == 0)] = lab
    np.testing.assert_array_equal(labels, expect)
    np.testing.assert_array_equal(labels == 1, ph.nodules.array == 1)
    bad = ScanRecord("P", STUDY, "x", record.slice_zvals + 1.7, 2.5, record.nodules)
    with pytest.raises(InputError, match="no DICOM slice"):
        nodule_labels(bad.nodules, bad.slice_zvals, stack)


def test_crop_grid_centres_on_mask_and_pads():
    ref = Volume(np.zeros((20, 30, 40), np.int16), (2.0, 2.0, 3.0), (10.0, -5.0, 100.0))
    mask = np.zeros((20, 30, 40), bool)
    mask[5:9, 10:20, 4:12] = True  # x 4..11, y 10..19, z 5..8
    grid, start = crop_grid(ref, mask, size=16, spacing=1.0)
    assert grid.array.shape == (16, 16, 16) and grid.spacing == (1.0, 1.0, 1.0)
    centre_mm = np.array([(3.5 + 12 - 0.5) / 2 * 2, (9.5 + 20 - 0.5) / 2 * 2, (4.5 + 9 - 0.5) / 2 * 3])
    grid_centre = np.asarray(grid.origin) + 7.5 - np.asarray(ref.origin)
    np.testing.assert_allclose(grid_centre, centre_mm, atol=1.0)
    np.testing.assert_allclose(np.asarray(grid.origin) - ref.origin, np.asarray(start) * 1.0)


def need_pylidc():
    """Skip without pylidc; else import it through the compatibility shim."""
    if importlib.util.find_spec("pylidc") is None:
        pytest.skip("pylidc is not installed (pip install pylidc)")
    from land.data.pylidc_compat import import_pylidc

    return import_pylidc()


def _consensus():
    need_pylidc()
    from land.data.lidc import pylidc_consensus

    return pylidc_consensus()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def _resampled(vol: Volume, like: Volume, nearest: bool, default: float) -> np.ndarray:
    ref = like.to_sitk()
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    src = vol.to_sitk() if nearest else sitk.Cast(vol.to_sitk(), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(sitk.Resample(src, ref, sitk.Transform(), interp, default))


def test_prepare_case_without_pylidc(fake_lidc, tmp_path):
    """Geometry, resampling, cropping and output from a hand-made record (no pylidc)."""
    root, cases = fake_lidc
    ph, scan = cases[1]
    labels = ph.nodules.array
    nodules = []
    for lab in range(1, labels.max() + 1):
        m = (labels == lab).transpose(1, 2, 0)
        nz = np.nonzero(m)
        off = tuple(int(a.min()) for a in nz)
        crop = m[tuple(slice(o, int(a.max()) + 1) for o, a in zip(off, nz, strict=True))]
        nodules.append(NoduleRecord(crop, off, [2, 3], [4, 5], [12.0, 14.0], [900.0, 1000.0], [1, 2]))
    record = ScanRecord(scan.patient_id, STUDY, scan.series_instance_uid, scan.slice_zvals, 2.5, nodules)
    folder = tmp_path / "case"
    series_dir = index_series(root)[scan.series_instance_uid]
    row = prepare_case(record, series_dir, folder, size=112, spacing=2.0, agreement=0.5)
    case = load_case(read_manifest_like(folder, row))
    assert case.image.array.shape == (112, 112, 112) and case.image.array.dtype == np.int16
    assert case.image.spacing == pytest.approx((2.0, 2.0, 2.0))
    meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
    k = int(labels.max())
    assert row["nodule_count"] == str(k) and case.masks.textures == dict.fromkeys(range(1, k + 1), 3)
    assert meta["annotations"]["1"] == 2 and meta["malignancy"]["1"] == 4.5
    assert meta["diameters_mm"]["1"] == pytest.approx(13.0)
    assert meta["source"]["series_uid"] == scan.series_instance_uid
    # output = the phantom resampled onto the output grid (HU linear, labels nearest)
    expect_img = _resampled(ph.image, case.image, nearest=False, default=-1024)
    assert np.abs(case.image.array - np.round(expect_img)).max() <= 1
    expect_lab = _resampled(ph.nodules, case.image, nearest=True, default=0)
    np.testing.assert_array_equal(case.masks.nodules.array, expect_lab)
    expect_lung = _resampled(ph.lung, case.image, nearest=True, default=0) > 0
    assert _dice(case.masks.lung.array > 0, expect_lung) > 0.9
    assert np.all(case.masks.lung.array[case.masks.nodules.array > 0] == 1)  # nodules lie in the lung mask
    # centred on the lungs: the lung bounding box is (nearly) symmetric in the crop
    nz = np.nonzero(case.masks.lung.array)
    for axis in range(3):
        lo, hi = nz[axis].min(), 111 - nz[axis].max()
        assert abs(int(lo) - int(hi)) <= 2 or min(lo, hi) == 0
    assert float(row["lung_kept"]) > 0.99


def read_manifest_like(folder: Path, row: dict):
    from land.data.folder import CaseFiles

    return CaseFiles(row["case"], folder)


def test_prepare_lidc_run_resume_and_failures(fake_lidc, tmp_path):
    need_pylidc()
    root, cases = fake_lidc
    (ph1, scan1), (ph2, scan2) = cases
    missing = StubScan("LIDC-IDRI-0009", "1.2.9", scan1.slice_zvals, 2.5, [])
    broken = StubScan("LIDC-IDRI-0002", scan2.series_instance_uid, scan2.slice_zvals + 2.2, 2.5,
                      scan2._clusters, ident=7)  # fmt: skip
    out = tmp_path / "ds"
    events: list[dict] = []
    summary = prepare_lidc(
        root, out, scans=[scan1, missing, broken], size=96, spacing=2.0, on_progress=events.append
    )
    assert (summary.done, summary.failed, summary.missing, summary.skipped) == (1, 1, 1, 0)
    # progress as engine events (land prepare-lidc --progress json; LAND Training reads them): one per case
    assert [e["stage"] for e in events] == ["prepare"] * 2 and [e["step"] for e in events] == [1, 2]
    assert {e["total"] for e in events} == {2}
    failures = list(csv.DictReader((out / "failures.csv").open(encoding="utf-8")))
    assert [f["case"] for f in failures] == ["LIDC-IDRI-0002"] and "no DICOM slice" in failures[0]["error"]
    rows = list(csv.DictReader((out / "manifest.csv").open(encoding="utf-8")))
    assert [r["case"] for r in rows] == ["LIDC-IDRI-0001"]
    assert rows[0]["size"] == "96x96x96" and rows[0]["spacing"] == "2x2x2"
    assert rows[0]["textures"] == "1:4;2:4" and rows[0]["nodule_count"] == "2"
    assert rows[0]["crop_box"].count(":") == 3
    meta = json.loads((out / "LIDC-IDRI-0001" / "case.json").read_text(encoding="utf-8"))
    textures = json.loads((out / "LIDC-IDRI-0001" / "textures.json").read_text(encoding="utf-8"))
    assert textures == {"1": 4, "2": 4}  # label -> texture only; the rest is in case.json
    assert meta["reader_textures"]["1"] == [5, 4, 4] and meta["annotations"]["2"] == 2
    assert [c.name for c in read_manifest(out)] == ["LIDC-IDRI-0001"]

    # resume with 2 worker processes: the finished case is skipped (files untouched), the fixed scan and
    # a second scan of patient 1 (folder LIDC-IDRI-0001_2) are done, failures.csv is removed
    stamp = (out / "LIDC-IDRI-0001" / "image.nii.gz").stat().st_mtime_ns
    again = StubScan(scan1.patient_id, scan1.series_instance_uid, scan1.slice_zvals, 2.5, scan1._clusters, 3)
    summary = prepare_lidc(
        root, out, scans=[scan1, scan2, again], size=96, spacing=2.0, progress=False, workers=2
    )
    assert (summary.done, summary.failed, summary.skipped) == (2, 0, 1)
    assert (out / "LIDC-IDRI-0001" / "image.nii.gz").stat().st_mtime_ns == stamp
    assert not (out / "failures.csv").exists()
    names = [c.name for c in read_manifest(out)]
    assert names == ["LIDC-IDRI-0001", "LIDC-IDRI-0001_2", "LIDC-IDRI-0002"]
    case = load_case(read_manifest(out)[2])
    expect = _resampled(ph2.nodules, case.image, nearest=True, default=0)
    np.testing.assert_array_equal(case.masks.nodules.array == 1, expect == 1)  # 3 readers: exact mask
    assert np.all(case.masks.nodules.array[expect == 2] == 2)  # 2 readers at 0.5: their union
    report = check_dataset(out)
    assert report.ok, report.format_text()
    same = [sitk.GetArrayFromImage(sitk.ReadImage(str(out / n / "image.nii.gz"))) for n in names[:2]]
    np.testing.assert_array_equal(same[0], same[1])


def test_prepare_lidc_default_grid_is_256_at_1mm(fake_lidc, tmp_path):
    need_pylidc()
    root, cases = fake_lidc
    out = tmp_path / "ds"
    summary = prepare_lidc(root, out, scans=[cases[0][1]], limit=1, progress=False)
    assert summary.done == 1
    img = sitk.ReadImage(str(out / "LIDC-IDRI-0001" / "image.nii.gz"))
    assert img.GetSize() == (256, 256, 256) and img.GetSpacing() == pytest.approx((1.0, 1.0, 1.0))
    assert img.GetPixelID() == sitk.sitkInt16
    a = sitk.GetArrayViewFromImage(img)
    assert a.min() == -1024 and a.max() > 100  # padding outside the 280 x 280 x 240 mm input


def test_cli_register_and_errors(tmp_path, capsys):
    from land.data import prepare_cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    commands = {}

    def command(name):
        def deco(fn):
            commands[name] = fn
            return fn

        return deco

    prepare_cli.register(sub, command)
    args = parser.parse_args(
        [
            "prepare-lidc",
            "--dicom-root",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "2",
            "--agreement",
            "0.75",
            "--limit",
            "3",
        ]  # fmt: skip
    )
    assert args.workers == 2 and args.agreement == 0.75 and args.limit == 3 and args.lung_weights is None
    with pytest.raises(InputError, match="not a folder"):
        commands["prepare-lidc"](args)
    with pytest.raises(InputError, match="agreement"):
        prepare_lidc(tmp_path, tmp_path / "o", agreement=0.0)


# --------------------------------------------------------------------------------------- pylidc itself


def test_pylidc_imports_through_the_shim():
    need_pylidc()
    pl = need_pylidc()
    assert np.int is int and np.float is float  # noqa: NPY001
    assert np.bool is np.bool_
    assert "pkg_resources" not in sys.modules or hasattr(sys.modules["pkg_resources"], "working_set")
    assert pl.query(pl.Scan).count() == 1018
    assert pl.query(pl.Annotation).count() == 6859


def test_pylidc_annotation_masks_without_images():
    """Annotation -> mask from the database alone (LIDC-IDRI-0001: one large nodule, 4 readers)."""
    need_pylidc()
    from land.data.lidc import query_scans, scan_record_by_id

    pl = need_pylidc()
    rows = query_scans(["LIDC-IDRI-0001"])
    assert len(rows) == 1
    scan = pl.query(pl.Scan).filter(pl.Scan.id == rows[0][0]).first()
    voxel = scan.pixel_spacing**2 * scan.slice_spacing
    (cluster,) = scan.cluster_annotations(verbose=False)
    for ann in cluster:
        ratio = ann.boolean_mask().sum() * voxel / ann.volume
        assert 0.8 < ratio < 1.1  # the mask leaves out the contour pixels themselves
    record = scan_record_by_id(rows[0][0], agreement=0.5)
    assert record.patient_id == "LIDC-IDRI-0001" and len(record.nodules) == 1
    nod = record.nodules[0]
    assert nod.annotation_count == 4 and nod.texture == median_rating([a.texture for a in cluster])
    vol = nod.mask.sum() * voxel
    assert 0.7 * min(nod.volumes_mm3) < vol < 1.1 * max(nod.volumes_mm3)
    # placed in a full volume whose slices are the scan's z positions: [slice, row, col] = (k, i, j)
    n = len(scan.slice_zvals)
    stack = _StackLike(np.asarray(scan.slice_zvals), (n, 512, 512))
    labels = nodule_labels(record.nodules, record.slice_zvals, stack)
    assert labels.sum() == nod.mask.sum()
    zyx = np.argwhere(labels == 1).mean(axis=0)
    i, j, k = np.mean([a.centroid for a in cluster], axis=0)
    np.testing.assert_allclose(zyx, [k, i, j], atol=1.5)


class _StackLike:
    """A DicomStack stand-in with slice positions and shape only (no pixels)."""

    def __init__(self, zs: np.ndarray, shape: tuple[int, int, int]) -> None:
        self.slice_z = zs
        self.source = np.arange(shape[0])
        self.volume = Volume(np.broadcast_to(np.zeros(1, np.int8), shape), (0.7, 0.7, 2.5))
