"""Incomplete image files (truncated, or holding less voxel data than the header declares) are refused,
naming the file, wherever LAND reads images: generate's mask reader, check-dataset, the dataset loaders."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_masks
from test_dataset import write_dataset

from land.data.check import check_dataset
from land.data.folder import load_case, read_manifest
from land.imaging.image_data import check_image_data, check_orientation
from land.imaging.io import read_volume
from land.interface.errors import InputError

FORMATS = [("x.nii.gz", True), ("x.nii", False), ("x.nrrd", True), ("x.nrrd", False), ("x.mha", True),
           ("x.mha", False)]  # fmt: skip


def _write(path: Path, compress: bool) -> Path:
    rng = np.random.default_rng(0)  # noise: compressed data stays large, so a cut lands in the voxels
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (24, 20, 16)).astype(np.int16))
    sitk.WriteImage(image, str(path), compress)
    return path


def _cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize(("name", "compress"), FORMATS)
def test_complete_files_pass_and_truncated_ones_are_refused(tmp_path, name, compress):
    path = _write(tmp_path / name, compress)
    check_image_data(path)
    assert read_volume(path).array.shape == (24, 20, 16)
    _cut(path, 0.6)
    with pytest.raises(InputError, match=r"incomplete|not a complete gzip") as e:
        read_volume(path)
    assert str(path) in str(e.value) and "fix:" in str(e.value)


def test_nifti_header_declaring_more_voxels_than_the_file_holds(tmp_path):
    path = _write(tmp_path / "big.nii", False)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<h", raw, 42, 240)  # dim[1]: 16 -> 240 voxels along x
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="declares 230,400 bytes of voxel data but the file holds 15,360"):
        read_volume(path)
    gz = tmp_path / "big.nii.gz"
    gz.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(InputError, match="incomplete"):
        read_volume(gz)


def test_check_dataset_and_loaders_refuse_a_truncated_case(tmp_path):
    root = write_dataset(tmp_path / "ds", n=2)
    _cut(root / "case001" / "image.nii.gz")
    _cut(root / "case000" / "lung.nii.gz")
    report = check_dataset(root, (32, 32, 32))
    by_name = {c.name: c for c in report.cases}
    assert any("image.nii.gz is incomplete" in p or "image.nii.gz is not a complete" in p
               for p in by_name["case001"].problems)  # fmt: skip
    assert any("lung.nii.gz" in p for p in by_name["case000"].problems) and not report.ok
    with pytest.raises(InputError, match="image.nii.gz"):
        load_case(read_manifest(root)[1])


def test_generate_with_a_truncated_mask_exits_2_naming_it(tiny_model_dir, tmp_path):
    masks = make_masks()
    lung, nodules = tmp_path / "lung.nii.gz", tmp_path / "nodules.nii.gz"
    sitk.WriteImage(masks.lung.to_sitk(), str(lung), True)
    sitk.WriteImage(masks.nodules.to_sitk(), str(nodules), True)
    _cut(lung, 0.5)
    out = tmp_path / "ct.nii.gz"
    result = subprocess.run([sys.executable, "-m", "land", "generate", "--model", str(tiny_model_dir),
                             "--mask", str(lung), "--nodules", str(nodules), "--texture", "1=3,2=4",
                             "--steps", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "lung.nii.gz" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def _sheared_nifti(path: Path, shear: float) -> Path:
    image = sitk.GetImageFromArray(np.zeros((10, 12, 14), np.uint8))
    sitk.WriteImage(image, str(path))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<4f", raw, 280, -1.0, shear, 0.0, 0.0)  # srow_x: x also moves with j
    path.write_bytes(bytes(raw))
    return path


def test_sheared_orientation_is_refused_without_itk_text(tmp_path):
    """Issue 15 item 3: ITK would replace a sheared sform by the qform (a C++ warning only); LAND refuses it
    naming the file and the fix. An orthonormal file and a tiny rounding error pass."""
    check_orientation(_sheared_nifti(tmp_path / "ok.nii", 1e-6))
    with pytest.raises(InputError, match=r"sheared \(non-orthonormal\) orientation matrix \(NIfTI sform\)"):
        read_volume(_sheared_nifti(tmp_path / "sheared.nii", 0.3))
    nrrd = tmp_path / "sheared.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8)), str(nrrd))
    text = nrrd.read_bytes().replace(b"space directions: (1,0,0) (0,1,0) (0,0,1)",
                                     b"space directions: (1,0,0) (0.5,1,0) (0,0,1)")  # fmt: skip
    assert b"(0.5,1,0)" in text
    nrrd.write_bytes(text)
    with pytest.raises(InputError, match="NRRD space directions"):
        read_volume(nrrd)
    script = "\n".join([
        "import sys",
        "from land.imaging.io import read_volume",
        "try:",
        "    read_volume(sys.argv[1])",
        "except Exception as e:",
        "    print(type(e).__name__)",
    ])  # fmt: skip
    sheared = str(tmp_path / "sheared.nii")
    result = subprocess.run(
        [sys.executable, "-c", script, sheared], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "InputError"
    assert "WARNING" not in result.stderr and "ITK" not in result.stderr


def _nrrd_with(path: Path, old: bytes, new: bytes) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8)), str(path))
    text = path.read_bytes()
    assert old in text
    path.write_bytes(text.replace(old, new))
    return path


def test_zero_length_axis_is_named_as_such_not_sheared(tmp_path):
    """Issue 26 item 14: a zero-length axis (spacing 0) is not "sheared": the message says what it is and
    the fix, whatever the header says it with (NRRD space directions or spacings, NIfTI sform, MetaImage)."""
    directions = b"space directions: (1,0,0) (0,1,0) (0,0,1)"
    zero_axis = r"zero-length axis .*spacing 0.*fix: write the real voxel size"
    nrrd = _nrrd_with(tmp_path / "a.nrrd", directions, b"space directions: (1,0,0) (0,0,0) (0,0,1)")
    with pytest.raises(InputError, match=r"zero-length axis in its NRRD space directions \(axis 1: "):
        read_volume(nrrd)
    spacings = _nrrd_with(tmp_path / "b.nrrd", directions, b"spacings: 1 0 1")
    text = spacings.read_bytes()
    spacings.write_bytes(
        text.replace(b"space: left-posterior-superior\n", b"").replace(b"space origin", b"#")
    )
    with pytest.raises(InputError, match=zero_axis) as e:
        read_volume(spacings)
    assert "sheared" not in str(e.value)
    nifti = _sheared_nifti(tmp_path / "c.nii", 0.0)
    raw = bytearray(nifti.read_bytes())
    struct.pack_into("<4f", raw, 296, 0.0, 0.0, 0.0, 0.0)  # srow_y: the j axis has no length
    nifti.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"zero-length axis in its NIfTI sform"):
        read_volume(nifti)
    mha = tmp_path / "d.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8)), str(mha), False)
    mha.write_bytes(mha.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1"))
    with pytest.raises(InputError, match=zero_axis):
        read_volume(mha)
