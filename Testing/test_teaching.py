"""Teaching sets (issue 8): planning, DICOM export checked by dciodvfy / pydicom / SimpleITK, key, scoring."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import signal
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import make_masks

from land.cli import main
from land.imaging.io import read_masks
from land.imaging.volume import Volume
from land.interface.errors import InputError
from land.pipeline import LANDPipeline
from land.teaching.answers import KeyNodule, read_answers
from land.teaching.build import make_teaching_set
from land.teaching.font import text_bitmap
from land.teaching.plan import TeachingSettings, lung_mask_files, nodule_case_indices, plan_case
from land.teaching.score import Mark, read_reads, score_files, score_reads

STEPS = 2
GRID, SPACING = (64, 64, 64), (4.0, 4.0, 4.0)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``land ...`` in-process; restores the signal handlers and warning hook the command installs."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    show = warnings.showwarning
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main(argv)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        warnings.showwarning = show
    return code, out.getvalue()


@pytest.fixture(scope="module")
def phantom_set(tiny_model_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """3 phantom-lung cases (2 with nodules) through the CLI, burn-in on; returns (folder, JSON lines)."""
    out = tmp_path_factory.mktemp("teach") / "set"
    code, text = run_cli(["teaching-set", "--model", str(tiny_model_dir), "--cases", "3", "--out", str(out),
                          "--nodule-rate", "0.67", "--textures", "1,3,5", "--diameters", "6-20", "--steps",
                          str(STEPS), "--seed", "3", "--progress", "json"])  # fmt: skip
    assert code == 0, text
    return out, [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def mask_folder(tmp_path_factory) -> Path:
    """A folder with one real-style lung mask: anisotropic, rotated 90 degrees about z, off-grid origin."""
    folder = tmp_path_factory.mktemp("lungs")
    lung = make_masks().lung
    sitk.WriteImage(lung.to_sitk(), str(folder / "lungs_a.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def rotated_set(tiny_model_dir, mask_folder, tmp_path_factory):
    """2 cases from the rotated lung mask, no burn-in, built by two torchrun-style ranks."""
    out = tmp_path_factory.mktemp("teach") / "rot"
    settings = TeachingSettings(cases=2, nodule_rate=1.0, textures=(5,), diameters=(8.0, 14.0), seed=11,
                                lung_masks=str(mask_folder))  # fmt: skip
    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    kw = dict(steps=STEPS, burn_in=False, device="cpu", world=2)
    first = make_teaching_set(out, settings, pipe, rank=1, **kw)
    assert (first.generated, first.complete, first.index) == (["case_002"], False, None)
    second = make_teaching_set(out, settings, pipe, rank=0, **kw)
    assert second.generated == ["case_001"] and second.complete
    return out, settings, pipe


def regenerate(pipe: LANDPipeline, settings: TeachingSettings, index: int) -> Volume:
    files = sorted(Path(settings.lung_masks).iterdir()) if settings.lung_masks else None
    plan = plan_case(settings, index, pipe.config.grid_size, pipe.config.spacing, files)
    return pipe.generate(plan.masks(), steps=STEPS, seed=plan.seed, device="cpu")


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def dicom_files(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]


# ------------------------------------------------------------------------------------------------ planning


def test_plan_is_reproducible_and_nodules_lie_inside_the_lungs():
    s = TeachingSettings(cases=8, nodule_rate=0.75, textures=(1, 3, 5), diameters=(4.0, 25.0), seed=5)
    assert len(nodule_case_indices(s)) == 6
    total = 0
    for i in range(s.cases):
        a, b = plan_case(s, i, GRID, SPACING), plan_case(s, i, GRID, SPACING)
        assert a.to_json() == b.to_json() and np.array_equal(a.nodules.array, b.nodules.array)
        assert (len(a.nodule_plans) > 0) == (i in nodule_case_indices(s))
        lung, labels = a.lung.array != 0, a.nodules.array
        assert not np.any((labels != 0) & ~lung), "nodule voxels outside the lungs"
        for n in a.nodule_plans:
            x, y, z = n.index_xyz
            assert labels[z, y, x] == n.nodule
            centre = np.asarray(a.lung.origin) + np.asarray(n.index_xyz) * np.asarray(SPACING)
            assert np.allclose(centre, n.centre_mm)
            assert 4.0 <= n.diameter_mm <= 25.0 and n.texture in (1, 3, 5)
            # rasterised volume close to the sphere's (4 mm voxels: coarse)
            vol = np.count_nonzero(labels == n.nodule) * 64.0
            assert vol <= 4 / 3 * np.pi * (n.diameter_mm / 2 + 3.5) ** 3
        for p in a.nodule_plans:
            for q in a.nodule_plans:
                if p.nodule < q.nodule:
                    gap = (
                        np.linalg.norm(np.subtract(p.centre_mm, q.centre_mm))
                        - (p.diameter_mm + q.diameter_mm) / 2
                    )
                    assert gap >= 5.0
        total += len(a.nodule_plans)
    assert total >= 6
    other = plan_case(TeachingSettings(cases=8, nodule_rate=0.75, seed=6), 0, GRID, SPACING)
    first = plan_case(s, 0, GRID, SPACING)
    assert other.to_json() != first.to_json()


def test_plan_with_real_lung_masks_keeps_their_geometry(mask_folder):
    s = TeachingSettings(cases=3, nodule_rate=1.0, diameters=(6.0, 12.0), seed=2, lung_masks=str(mask_folder))
    plan = plan_case(s, 1, GRID, SPACING, sorted(mask_folder.iterdir()))
    assert plan.lung_source == "lungs_a.nii.gz"
    assert np.allclose(plan.lung.direction, make_masks().lung.direction)
    assert plan.nodule_plans and not np.any((plan.nodules.array != 0) & (plan.lung.array == 0))


def test_bad_options_name_the_fix(tiny_model_dir, tmp_path):
    for flag, value, word in (("--textures", "1,7", "textures"), ("--diameters", "25-4", "diameters"),
                              ("--nodule-rate", "1.5", "nodule-rate"),
                              ("--seed", "-1", "seed")):  # fmt: skip
        code, text = run_cli(["teaching-set", "--model", str(tiny_model_dir), "--cases", "2", "--out",
                              str(tmp_path / "x"), flag, value, "--progress", "json"])  # fmt: skip
        assert code == 2
        assert word in json.loads(text.splitlines()[-1])["error"]
    with pytest.raises(InputError, match="no lung masks"):
        lung_mask_files(tmp_path)


# --------------------------------------------------------------------------------------------- the set


def test_cli_progress_lines_and_layout(phantom_set):
    out, lines = phantom_set
    cases = [e for e in lines if e.get("stage") == "case"]
    assert [e["step"] for e in cases] == [0, 1, 2, 3] and all(e["total"] == 3 for e in cases)
    denoise = [e for e in lines if e.get("stage") == "denoise"]
    assert len(denoise) == 3 * STEPS and set(denoise[0]) == {"stage", "step", "total", "eta_s"}
    assert any("UNTRAINED" in e.get("warning", "") for e in lines)
    done = lines[-1]
    assert done["done"] and done["complete"] and Path(done["out"]) == out
    assert Path(done["index"]).is_file() and Path(done["answers"]).is_file()
    for case in ("case_001", "case_002", "case_003"):
        assert len(list((out / "dicom" / case).glob("*.dcm"))) == 64
        assert (out / "key" / "segmentations" / f"{case}.seg.nrrd").is_file()
        png = sitk.ReadImage(str(out / "key" / "thumbnails" / f"{case}.png"))
        assert png.GetSize() == (256, 256) and png.GetNumberOfComponentsPerPixel() == 3
    assert not list(out.rglob("*.partial*"))


NO_DCIODVFY = "dciodvfy not on PATH (apt-get install dicom3tools; .ci/run installs it)"


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason=NO_DCIODVFY)
def test_dicom_passes_dciodvfy(phantom_set, rotated_set):
    files = sorted(phantom_set[0].glob("dicom/*/*.dcm")) + sorted(rotated_set[0].glob("dicom/*/*.dcm"))
    assert len(files) == 5 * 64
    problems = []
    for f in files[::7] + [files[-1]]:
        res = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        lines = (res.stdout + res.stderr).splitlines()
        assert "CTImage" in lines, lines  # dciodvfy recognised the IOD
        problems += [f"{f.name}: {line}" for line in lines if line.startswith(("Error", "Warning"))]
    assert not problems, "\n".join(problems[:20])
    if shutil.which("dcentvfy"):  # same dicom3tools: patient/study/series attributes consistent across files
        res = subprocess.run(["dcentvfy", *map(str, files)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_dicom_labelling_and_pixels(phantom_set, tiny_model_dir):
    out, _ = phantom_set
    series_uids, sop_uids = set(), set()
    for case in ("case_001", "case_002", "case_003"):
        slices = dicom_files(out / "dicom" / case)
        for k, ds in enumerate(slices):
            assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.InstanceNumber == k + 1
            assert str(ds.PatientName) == f"SYNTHETIC^LAND^{case}" and ds.PatientID.endswith(case)
            assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "YES"
            assert ds.SpecificCharacterSet == "ISO_IR 192"
            assert "SYNTHETIC – LAND" in ds.SeriesDescription and "SYNTHETIC – LAND" in ds.StudyDescription
            assert [float(v) for v in ds.WindowCenter] == [-600, 40] and [
                float(v) for v in ds.WindowWidth
            ] == [1500, 400]
            assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 4.0
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            sop_uids.add(ds.SOPInstanceUID)
        series_uids.add(slices[0].SeriesInstanceUID)
        assert len({ds.StudyInstanceUID for ds in slices}) == 1
    assert len(series_uids) == 3 and len(sop_uids) == 3 * 64

    # HU round trip (burned-in corner excepted): regenerate case 2 with the same plan and seed
    settings = TeachingSettings(cases=3, nodule_rate=0.67, textures=(1, 3, 5), diameters=(6.0, 20.0), seed=3)
    ct = regenerate(LANDPipeline.from_pretrained(tiny_model_dir), settings, 1)
    slices = dicom_files(out / "dicom" / "case_002")
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    glyph = text_bitmap("SYNTHETIC")
    corner = np.zeros(hu.shape[1:], bool)
    corner[: glyph.shape[0] + 4, : glyph.shape[1] + 4] = True
    assert np.abs(hu[:, ~corner] - ct.array[:, ~corner]).max() <= 0.5
    text = hu[:, 2 : 2 + glyph.shape[0], 2 : 2 + glyph.shape[1]]
    assert np.all(text[:, glyph] == 1000) and np.all(text[:, ~glyph] <= ct.array.max())
    assert not np.array_equal(hu[:, corner], ct.array[:, corner])


def test_series_reader_geometry_and_seg_alignment(rotated_set):
    out, settings, pipe = rotated_set
    cases, nodules = read_answers(out)
    assert cases == ["case_001", "case_002"] and nodules
    for i, case in enumerate(cases):
        image = read_series(out / "dicom" / case)
        ct = regenerate(pipe, settings, i)
        assert np.allclose(image.GetOrigin(), ct.origin, atol=1e-3)
        assert np.allclose(image.GetSpacing(), ct.spacing, atol=1e-4)
        assert np.allclose(image.GetDirection(), ct.direction, atol=1e-5)
        assert np.allclose(image.GetDirection(), make_masks().lung.direction)  # the rotated input's
        assert np.array_equal(sitk.GetArrayFromImage(image), ct.array)  # no burn-in: exact HU
        ds = pydicom.dcmread(next((out / "dicom" / case).glob("*.dcm")))
        assert ds.BurnedInAnnotation == "NO"
        seg = read_masks(out / "key" / "segmentations" / f"{case}.seg.nrrd")
        assert seg.nodules.same_geometry(Volume.from_sitk(image))
        for n in (n for n in nodules if n.case == case):
            idx = image.TransformPhysicalPointToIndex(n.centre_mm)
            assert seg.nodules.array[idx[2], idx[1], idx[0]] == n.nodule
            assert seg.textures[n.nodule] == n.texture
            assert idx[2] + 1 == n.slice
            f = out / "dicom" / case / f"IM{n.slice:04d}.dcm"
            ds = pydicom.dcmread(f)
            normal = np.cross(np.asarray(ds.ImageOrientationPatient[:3], float),
                              np.asarray(ds.ImageOrientationPatient[3:], float))  # fmt: skip
            assert abs(normal @ (np.asarray(n.centre_mm) - np.asarray(ds.ImagePositionPatient, float))) < 1e-3


def test_resume_skips_finished_cases_and_refuses_other_settings(rotated_set):
    out, settings, pipe = rotated_set
    again = make_teaching_set(out, settings, pipe, steps=STEPS, burn_in=False, device="cpu", rank=0, world=1)
    assert again.generated == [] and again.skipped == ["case_001", "case_002"] and again.complete
    before = json.loads((out / "key" / "cases" / "case_002.json").read_text(encoding="utf-8"))
    (out / "key" / "cases" / "case_002.json").unlink()
    redo = make_teaching_set(out, settings, pipe, steps=STEPS, burn_in=False, device="cpu", rank=0, world=1)
    assert redo.generated == ["case_002"] and redo.complete
    after = json.loads((out / "key" / "cases" / "case_002.json").read_text(encoding="utf-8"))
    assert after["nodules"][0]["centre_mm"] == before["nodules"][0]["centre_mm"]
    assert after["series_uid"] != before["series_uid"]  # fresh UIDs for a regenerated series
    with pytest.raises(InputError, match="other settings"):
        make_teaching_set(out, settings, pipe, steps=STEPS + 1, burn_in=False, device="cpu", rank=0, world=1)


def test_answer_files_agree(phantom_set):
    out, _ = phantom_set
    key = out / "key"
    doc = json.loads((key / "answers.json").read_text(encoding="utf-8"))
    assert doc["synthetic"] is True and [c["case"] for c in doc["cases"]] == [
        "case_001",
        "case_002",
        "case_003",
    ]
    assert sum(1 for c in doc["cases"] if c["nodules"]) == 2
    with (key / "answers.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    flat = [(c["case"], n) for c in doc["cases"] for n in c["nodules"]]
    assert len(rows) == len(flat) >= 2
    for row, (case, n) in zip(rows, flat, strict=True):
        assert row["case"] == case and int(row["nodule"]) == n["nodule"] and int(row["slice"]) == n["slice"]
        assert np.allclose([float(row[a]) for a in ("x_mm", "y_mm", "z_mm")], n["centre_mm"], atol=0.01)
        assert float(row["diameter_mm"]) == n["diameter_mm"] and 6 <= n["diameter_mm"] <= 20
    page = (key / "index.html").read_text(encoding="utf-8")
    assert "SYNTHETIC" in page and all(f"thumbnails/{c}.png" in page for c in ("case_001", "case_003"))


# ------------------------------------------------------------------------------------------------ scoring


def _key() -> tuple[list[str], list[KeyNodule]]:
    return ["case_001", "case_002", "case_003"], [
        KeyNodule("case_001", 1, (0.0, 0.0, 0.0), 10, 10.0, 5),
        KeyNodule("case_001", 2, (40.0, 0.0, 0.0), 10, 6.0, 1),
        KeyNodule("case_003", 1, (0.0, 0.0, 50.0), 20, 20.0, 3),
    ]


def test_scoring_on_a_constructed_reads_file(tmp_path):
    cases, nodules = _key()
    reads = tmp_path / "reads.csv"
    reads.write_text(
        "reader,case,x,y,z\n"
        "ann,case_001,3,4,0\n"  # 5 mm from nodule 1 (r 5): hit
        "ann,1,1,0,0\n"  # case by number; nodule 1 again: duplicate
        "ann,case_001,40,0,9\n"  # 9 mm from nodule 2 (r 3 + 5 = 8): false positive, nodule 2 missed
        "ann,case_002,100,100,100\n"  # normal case: false positive
        "ann,SYNTHETIC^LAND^case_003,0,0,64\n",  # 14 mm from nodule (r 10 + 5 = 15): hit
        encoding="utf-8",
    )
    marks = read_reads(reads, cases)
    r = score_reads(cases, nodules, marks, margin_mm=5.0)
    assert (r["nodules"], r["detected"], r["false_positives"], r["duplicates"]) == (3, 2, 2, 1)
    assert r["sensitivity"] == pytest.approx(2 / 3) and r["fp_per_case"] == pytest.approx(2 / 3)
    assert {t: (v["detected"], v["nodules"]) for t, v in r["per_texture"].items()} == {
        "1": (0, 1), "3": (1, 1), "5": (1, 1)}  # fmt: skip
    assert r["missed"] == [{"case": "case_001", "nodule": 2, "slice": 10}]
    strict = score_reads(cases, nodules, marks, margin_mm=0.0)
    assert (strict["detected"], strict["false_positives"]) == (1, 3)
    assert strict["per_texture"]["3"]["sensitivity"] == 0.0
    # RAS columns (3D Slicer) are converted to LPS: the same marks give the same result
    ras = tmp_path / "ras.csv"
    ras.write_text("case,r,a,s\ncase_001,-3,-4,0\ncase_001,-1,0,0\ncase_001,-40,0,9\ncase_002,-100,-100,100\n"
                   "case_003,0,0,64\n", encoding="utf-8")  # fmt: skip
    assert score_reads(cases, nodules, read_reads(ras, cases), margin_mm=5.0) == r
    # a mark between two nodules goes to the one whose surface is nearer
    two = score_reads(cases, nodules, [Mark("case_001", (30.0, 0.0, 0.0), 2)], margin_mm=8.0)
    assert two["missed"][0]["nodule"] == 1 and two["detected"] == 1


def test_score_cli_against_a_real_key(phantom_set, tmp_path):
    out, _ = phantom_set
    cases, nodules = read_answers(out / "key")
    first = nodules[0]
    reads = tmp_path / "reads.csv"
    reads.write_text(
        "case,x,y,z\n"
        f"{first.case},{first.centre_mm[0] + 2},{first.centre_mm[1]},{first.centre_mm[2]}\n"
        f"{cases[0]},500,500,500\n",
        encoding="utf-8",
    )
    code, text = run_cli(["teaching-score", "--answers", str(out), "--reads", str(reads), "--json"])
    r = json.loads(text)
    assert code == 0 and r["detected"] == 1 and r["nodules"] == len(nodules)
    assert r["sensitivity"] == pytest.approx(1 / len(nodules)) and r["fp_per_case"] == pytest.approx(1 / 3)
    assert r == score_files(out, reads)
    code, text = run_cli(["teaching-score", "--answers", str(out), "--reads", str(reads)])
    assert code == 0 and "sensitivity" in text and "per texture" in text
    bad = tmp_path / "bad.csv"
    bad.write_text("case,x,y,z\ncase_999,0,0,0\n", encoding="utf-8")
    code, _ = run_cli(["teaching-score", "--answers", str(out), "--reads", str(bad)])
    assert code == 2
    with pytest.raises(InputError, match="lacks the column"):
        bad.write_text("case,x,y\ncase_001,0,0\n", encoding="utf-8")
        read_reads(bad, cases)


def test_series_geometry_anisotropic_oblique(tmp_path):
    """Non-square slices, anisotropic spacing and an oblique direction survive the round trip."""
    from land.teaching.dicom_export import write_ct_series

    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, 0.0, s, 0.0, 1.0, 0.0, -s, 0.0, c)  # rotation about y (right-handed)
    hu = np.random.default_rng(0).integers(-1000, 1001, (5, 12, 20)).astype(np.int16)
    vol = Volume(hu, (0.7, 0.9, 2.5), (-10.5, 20.25, 3.0), direction)
    info = write_ct_series(tmp_path / "s", vol, case="case_007", patient_id="SYNTH-test-case_007",
                           study_description="SYNTHETIC – LAND test", series_description="LAND test",
                           burn_in=False)  # fmt: skip
    image = read_series(tmp_path / "s")
    assert np.allclose(image.GetSpacing(), vol.spacing) and np.allclose(image.GetOrigin(), vol.origin)
    assert np.allclose(image.GetDirection(), direction, atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), hu)
    ds = pydicom.dcmread(info.files[1])
    assert (ds.Rows, ds.Columns) == (12, 20) and [float(v) for v in ds.PixelSpacing] == [0.9, 0.7]
    assert np.allclose(
        [float(v) for v in ds.ImagePositionPatient], np.asarray(vol.origin) + 2.5 * np.array([s, 0, c])
    )
    # burn-in on an image smaller than the text is clipped, not an error
    small = write_ct_series(tmp_path / "t", Volume(hu[:, :6, :8]), case="c", patient_id="p",
                            study_description="SYNTHETIC", series_description="SYNTHETIC")  # fmt: skip
    assert pydicom.dcmread(small.files[0]).pixel_array.max() == 1000 + 1024


def test_guidance_enters_the_set_id_only_when_on(tiny_model_dir):
    """Unguided sets keep the ids they had before guidance existed; a guided set is a different set."""
    from land.teaching.build import full_settings

    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    settings = TeachingSettings(cases=2, nodule_rate=1.0, textures=(5,), diameters=(8.0, 14.0), seed=1)
    plain = full_settings(settings, pipe, 2, True)
    assert "guidance" not in plain
    assert full_settings(settings, pipe, 2, True, (1.0, "nodules")) == plain
    assert full_settings(settings, pipe, 2, True, (4.0, "none")) == plain
    guided = full_settings(settings, pipe, 2, True, (4.0, "nodules"))
    assert guided == {**plain, "guidance": {"scale": 4.0, "mode": "nodules"}}
