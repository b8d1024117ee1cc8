"""``land lungs``: lungs from a CT on the command line, then paint nodules and generate (no Slicer)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA

from land.cli import main
from land.imaging.io import read_masks, read_provenance, read_volume, write_seg_nrrd
from land.imaging.maskset import MaskSet
from land.imaging.volume import Volume
from land.interface.segment_style import LUNG_COLOR, LUNG_SEGMENT_NAME
from land.world.phantom import make_phantom

REAL_CT = SHARED_DATA / "lung-pet-ct-dx"


def land(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "land", *args], capture_output=True, text=True, timeout=600)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory) -> tuple[Path, Volume]:
    ph = make_phantom(4, 96, 3.0, n_nodules=0)
    path = tmp_path_factory.mktemp("ct") / "chest.nrrd"
    sitk.WriteImage(Volume.like(ph.image, ph.image.array.astype(np.int16)).to_sitk(), str(path))
    return path, ph.lung


def generate(model: Path, mask: Path, out: Path) -> subprocess.CompletedProcess:
    return land("generate", "--model", str(model), "--mask", str(mask), "--steps", "1", "--device", "cpu",
                "--progress", "none", "--out", str(out))  # fmt: skip


def test_lungs_paint_generate_end_to_end(phantom_ct, tiny_model_dir, tmp_path):
    ct, lung = phantom_ct
    seg = tmp_path / "lungs.seg.nrrd"
    result = land("lungs", str(ct), "--out", str(seg))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith(f"wrote {seg}: lungs ") and " L in " in line and "carina found at z" in line
    masks = read_masks(seg)  # what land generate reads: the 'Lungs' segment is the lung mask
    assert masks.lung is not None and not masks.labels()
    assert dice(masks.lung.array, lung.array) > 0.9
    header = sitk.ReadImage(str(seg))
    assert header.GetMetaData("Segment0_Name") == LUNG_SEGMENT_NAME
    assert header.GetMetaData("Segment0_Color") == " ".join(f"{c:g}" for c in LUNG_COLOR)
    # "paint" a solid nodule inside the lungs, as in the Segment Editor, and generate from it
    zz, yy, xx = np.nonzero(masks.lung.array)
    centre = np.array([zz, yy, xx])[:, len(zz) // 3]
    grid = np.indices(masks.lung.array.shape)
    ball = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= 9
    painted = MaskSet(
        lung=masks.lung, nodules=Volume.like(masks.lung, ball.astype(np.uint8)), textures={1: 5}
    )
    write_seg_nrrd(tmp_path / "painted.seg.nrrd", painted)
    out = tmp_path / "ct.nii.gz"
    result = generate(tiny_model_dir, tmp_path / "painted.seg.nrrd", out)
    assert result.returncode == 0, result.stderr
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkInt16


def test_lungs_label_image_keeps_what_was_found(phantom_ct, tmp_path):
    ct, lung = phantom_ct
    out = tmp_path / "lungs.nrrd"
    assert main(["lungs", str(ct), "--out", str(out)]) == 0
    mask = read_volume(out)
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) == {0, 1}
    assert mask.same_geometry(lung) and dice(mask.array, lung.array) > 0.9
    assert mask.metadata["LAND.LungSeg.TracheaFound"] == "true" and "LAND.LungSeg.CarinaZmm" in mask.metadata
    assert "SYNTHETIC" not in str(mask.metadata)  # a mask drawn on the user's own scan


@pytest.mark.parametrize("name", ["lungs.seg.nrrd", "lungs.nrrd", "lungs.nii.gz"])
def test_lungs_output_says_what_it_is_and_is_not_synthetic(phantom_ct, tmp_path, name):
    """Issue 26 item 15: a lung mask derived from a real CT says what it is (its source CT and method) in
    every output format, and is never labelled SYNTHETIC: only generated CTs are."""
    ct, _ = phantom_ct
    out = tmp_path / name
    assert main(["lungs", str(ct), "--out", str(out)]) == 0
    prov = read_provenance(out)
    assert prov["description"] == f"Lung mask of the real CT {ct.name} (land lungs, classical), not synthetic"
    if not name.endswith(".nii.gz"):  # NIfTI has room for the description only (its descrip field)
        assert prov["synthetic"] == "false" and prov["source"] == ct.name and prov["method"] == "classical"
        assert prov["created_by"] == "land lungs" and prov["land_version"]
    header = sitk.ReadImage(str(out))
    text = " ".join(header.GetMetaData(k) for k in header.GetMetaDataKeys())
    assert "SYNTHETIC" not in text and '"synthetic": "true"' not in text
    assert not list(tmp_path.glob("*.json"))  # no sidecar: a mask carries no generation record


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("same", "overwrite your input"),
        ("extension", "must end in .seg.nrrd"),
        ("missing", "no-such-ct.nii.gz"),
        ("no dicom", "no DICOM series"),
        ("no lungs", "no lungs found"),
        ("series of a file", "drop --series"),
    ],
)
def test_lungs_input_errors_exit_2_with_a_fix(phantom_ct, tmp_path, capsys, case, message):
    ct, _ = phantom_ct
    out = tmp_path / "lungs.nii.gz"
    args = [str(ct), "--out", str(out)]
    if case == "same":
        args = [str(ct), "--out", str(ct)]
    elif case == "extension":
        args = [str(ct), "--out", str(tmp_path / "lungs.png")]
    elif case == "missing":
        args = [str(tmp_path / "no-such-ct.nii.gz"), "--out", str(out)]
    elif case == "no dicom":
        (tmp_path / "empty").mkdir()
        args = [str(tmp_path / "empty"), "--out", str(out)]
    elif case == "no lungs":
        soft = tmp_path / "soft.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(np.full((20, 40, 40), 40, np.int16)), str(soft))
        args = [str(soft), "--out", str(out)]
    elif case == "series of a file":
        args += ["--series", "1.2.3"]
    before = ct.read_bytes()
    assert main(["lungs", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix" in err
    assert not out.exists() and ct.read_bytes() == before


@pytest.mark.skipif(not REAL_CT.is_dir(), reason="real chest CT samples (../shared/data) not available")
def test_lungs_on_a_real_dicom_series_then_generate(tiny_model_dir, tmp_path):
    seg = tmp_path / "lungs.seg.nrrd"
    result = land("lungs", str(REAL_CT / "A0002"), "--out", str(seg))  # neck to upper abdomen, 8 mm slices
    assert result.returncode == 0, result.stderr
    assert "carina found at z 232.0 mm" in result.stdout
    litres = float(result.stdout.split("lungs ")[1].split(" L")[0])
    assert 2.0 < litres < 8.0
    out = tmp_path / "ct.nii.gz"
    result = generate(tiny_model_dir, seg, out)
    assert result.returncode == 0, result.stderr
    assert out.is_file()
