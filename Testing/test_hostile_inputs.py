"""Nothing the user made is lost and no input is silently reinterpreted (issue 26, the second hostile
battery): every case runs the real command or reader on real files written to ``tmp_path``."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_masks

from land.cli import main
from land.imaging.io import read_masks, write_seg_nrrd
from land.imaging.maskset import outside_lung_counts
from land.interface.errors import InputError

REFUSED = "would overwrite your input"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def seg(tmp_path: Path) -> Path:
    path = tmp_path / "o" / "self.nrrd"
    path.parent.mkdir()
    write_seg_nrrd(path, make_masks())
    return path


# ------------------------------------------------------------------ 1. an output never resolves to an input
@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "inside the model folder"])
def test_generate_refuses_an_output_that_is_an_input(how, seg, tiny_model_dir, tmp_path, capsys):
    before = digest(seg)
    model_before = tree_state(tiny_model_dir)
    out = {"same path": seg, "symlink": tmp_path / "link.nrrd", "hard link": tmp_path / "hard.nrrd",
           "inside the model folder": tiny_model_dir / "ct.nrrd"}[how]  # fmt: skip
    if how == "symlink":
        out.symlink_to(seg)
    elif how == "hard link":
        os.link(seg, out)
    code = main(["generate", "--model", str(tiny_model_dir), "--mask", str(seg), "--steps", "1",
                 "--device", "cpu", "--progress", "none", "--out", str(out)])  # fmt: skip
    assert code == 2
    assert REFUSED in capsys.readouterr().err
    assert digest(seg) == before and tree_state(tiny_model_dir) == model_before


def test_generate_refuses_a_nifti_sidecar_that_is_an_input(tiny_model_dir, tmp_path, capsys):
    """ct.nii.gz writes ct.json beside it: that name must not be an input either."""
    model = tmp_path / "ct"
    model.mkdir()
    (model / "model.json").write_text("{}", encoding="utf-8")
    code = main(["generate", "--model", str(tmp_path / "ct"), "--out", str(tmp_path / "ct.nii.gz"),
                 "--mask", str(tmp_path / "ct.json")])  # fmt: skip
    assert code == 2 and REFUSED in capsys.readouterr().err


def _dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.csv").write_text("case_id\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "command",
    [
        "teaching-set", "sample-set", "evaluate", "prepare-lidc", "train-vae", "train-ldm", "train-pipeline",
    ],
)  # fmt: skip
def test_every_writing_command_refuses_an_output_in_its_inputs(command, tiny_model_dir, tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    before = tree_state(data)
    inside = str(data / "out")
    argv = {
        "teaching-set": ["--cases", "1", "--lung-masks", str(data), "--model", str(tiny_model_dir),
                         "--out", inside],
        "sample-set": ["--model", str(tiny_model_dir), "--masks", str(data), "--n", "1", "--out", str(data)],
        "evaluate": ["--real", str(data), "--generated", str(tmp_path), "--no-fid", "--out", inside],
        "prepare-lidc": ["--dicom-root", str(data), "--out", str(data)],
        "train-vae": ["--data", str(data), "--config", "tiny", "--out", inside],
        "train-ldm": ["--data", str(tmp_path), "--config", "tiny", "--vae", str(data), "--out", str(data)],
        "train-pipeline": ["--data", str(data), "--config", "tiny", "--out", inside],
    }[command]  # fmt: skip
    code = main([command, "--progress", "none", *argv] if command != "evaluate" else [command, *argv])
    assert code == 2
    assert REFUSED in capsys.readouterr().err
    assert tree_state(data) == before and not (data / "out").exists()


# ------------------------------------------------------------------ 2. a .seg.nrrd without segment fields
def test_seg_nrrd_without_segment_fields_is_refused(tmp_path, tiny_model_dir, capsys):
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:10, 2:10, 2:10] = 1  # lung?
    labels[5:7, 5:7, 5:7] = 2  # or a nodule? Without segment fields nobody can tell
    path = tmp_path / "case.seg.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(path))
    with pytest.raises(InputError, match="no segment fields .* lungs from its nodules; fix: save"):
        read_masks(path)
    code = main(["generate", "--model", str(tiny_model_dir), "--mask", str(path), "--progress", "none",
                 "--out", str(tmp_path / "ct.nii.gz")])  # fmt: skip
    assert code == 2 and "no segment fields" in capsys.readouterr().err
    assert not (tmp_path / "ct.nii.gz").exists()


# ------------------------------------------------------------------ 3. lung masks are masks
def _image(array: np.ndarray, path: Path, spacing=(2.0, 2.0, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _lung_like(values: tuple[float, ...], dtype) -> np.ndarray:
    a = np.zeros((12, 10, 10), dtype)
    for i, v in enumerate(values):
        a[1 + i, 2:8, 2:8] = v
    return a


@pytest.mark.parametrize(
    ("values", "dtype", "ext", "found"),
    [
        ((0.3, 0.7), np.float32, "nrrd", r"non-integer values \(e.g. 0.3, 0.7\)"),
        ((1, np.nan), np.float32, "nrrd", "36 NaN/infinite voxels"),
        ((1, np.inf), np.float64, "mha", "NaN/infinite voxels"),
        ((1, np.nan), np.float32, "nii.gz", "NaN/infinite voxels, which would be read as 0"),
        ((1, -np.inf), np.float32, "nii", "NaN/infinite voxels, which would be read as 0"),
        ((-1024, 40, 2976), np.int16, "nii.gz", "values -1024…2976: this looks like a CT, not a mask"),
        ((-1000.5, 12.25), np.float32, "nrrd", r"values -1000.5…12.25: this looks like a CT"),
        ((1, 300), np.uint16, "nrrd", "values 0…300: this looks like an image"),
        (tuple(range(1, 8)) + (9, 10), np.uint8, "nrrd", "9 different non-zero values"),
    ],
)
def test_a_lung_mask_that_is_not_a_mask_is_refused(values, dtype, ext, found, tmp_path):
    path = _image(_lung_like(values, dtype), tmp_path / f"lung.{ext}")
    with pytest.raises(InputError, match=found):
        read_masks(path)


def test_lung_masks_with_left_right_labels_are_lung(tmp_path):
    path = _image(_lung_like((1, 2, 255), np.uint8), tmp_path / "lungs.nii.gz")
    masks = read_masks(path)
    assert int(masks.lung.array.sum()) == 3 * 36 and set(np.unique(masks.lung.array)) == {0, 1}


def test_a_ct_given_as_the_nodule_map_says_so(tmp_path):
    lung = _image(_lung_like((1,), np.uint8), tmp_path / "lung.nrrd")
    ct = _image(_lung_like((-1024, 3000), np.int16), tmp_path / "ct.nrrd")
    with pytest.raises(InputError, match="this looks like a CT, not a mask"):
        read_masks(lung, ct)


# ------------------------------------------------------------------ 4. NIfTI voxel sizes ITK would change
def _patch_nifti(path: Path, pixdim: tuple[float, float, float]) -> None:
    """Write ``pixdim`` 1..3 into a NIfTI-1 file's header, leaving its sform as it was."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())
    data[80:92] = struct.pack("<3f", *pixdim)
    with opener(path, "wb") as f:
        f.write(bytes(data))


@pytest.mark.parametrize(
    ("pixdim", "ext", "found"),
    [
        ((0.0, 8.0, 8.0), "nii.gz", "voxel size 0 x 8 x 8 mm .*must be positive"),
        ((-8.0, 8.0, 8.0), "nii", "voxel size -8 x 8 x 8 mm"),
        ((1.0, 8.0, 8.0), "nii.gz", "pixdim says 1 x 8 x 8 mm, the sform 8 x 8 x 8 mm"),
    ],
)
def test_nifti_voxel_sizes_itk_would_change_are_refused(pixdim, ext, found, tmp_path):
    path = _image(_lung_like((1,), np.uint8), tmp_path / f"lung.{ext}", spacing=(8.0, 8.0, 8.0))
    assert read_masks(path).lung.spacing == (8.0, 8.0, 8.0)
    _patch_nifti(path, pixdim)
    with pytest.raises(InputError, match=found + ".*fix: write the real voxel size"):
        read_masks(path)


# ------------------------------------------------------------------ 5. nodules judged where they were painted
def _anisotropic_case(tmp_path: Path, x0: int = 99, lung_end: int = 170) -> tuple[Path, Path, int]:
    """Lungs at 0.7 x 0.7 x 5 mm; inside them a plate-like nodule 1.4 x 18.2 x 25 mm (260 voxels) that lies
    between the voxel centres of a 4 mm model grid along x."""
    shape = (40, 200, 200)  # z, y, x
    lung = np.zeros(shape, np.uint8)
    lung[5:35, 30:170, 30:lung_end] = 1
    nodules = np.zeros(shape, np.uint8)
    nodules[18:23, 87:113, x0 : x0 + 2] = 1
    spacing = (0.7, 0.7, 5.0)
    lung_path = _image(lung, tmp_path / "lung.nii.gz", spacing)
    nodule_path = _image(nodules, tmp_path / "nodules.nii.gz", spacing)
    return lung_path, nodule_path, int(np.count_nonzero(nodules))


def test_resampling_keeps_a_thin_nodule_at_its_size(tmp_path):
    from land.conditioning.model_grid import to_model_grid

    lung, nodules, painted = _anisotropic_case(tmp_path)
    masks = read_masks(lung, nodules)
    assert painted == 260 and outside_lung_counts(masks) == {}
    grid, _ = to_model_grid(masks, (32, 32, 32), (4.0, 4.0, 4.0))
    # 260 x 0.7 x 0.7 x 5 mm = 637 mm³ = 10 model voxels of 64 mm³, not the one nearest neighbours gave
    kept = int(np.count_nonzero(grid.nodules.array == 1))
    assert 9 <= kept <= 10, kept
    assert outside_lung_counts(grid) == {}


def test_strict_judges_nodules_on_the_painted_grid(tiny_model_dir, tmp_path, capsys):
    """The nodule lies inside the lungs, against their edge, where it was painted; resampling must not make
    --strict refuse it."""
    lung, nodules, _ = _anisotropic_case(tmp_path, x0=99, lung_end=101)
    assert outside_lung_counts(read_masks(lung, nodules)) == {}
    out = tmp_path / "ct.nrrd"
    code = main(["generate", "--model", str(tiny_model_dir), "--mask", str(lung), "--nodules", str(nodules),
                 "--texture", "1=5", "--strict", "--steps", "1", "--device", "cpu", "--progress", "none",
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "outside the lung" not in err and out.is_file()


def test_a_nodule_smaller_than_a_model_voxel_is_kept_and_named(tmp_path):
    from land.conditioning.model_grid import FieldOfViewWarning, to_model_grid

    shape = (20, 40, 40)
    lung = np.zeros(shape, np.uint8)
    lung[2:18, 5:35, 5:35] = 1
    nodules = np.zeros(shape, np.uint8)
    nodules[10, 20, 21] = 1  # 0.5 mm³
    paths = (
        _image(lung, tmp_path / "l.nrrd", (0.5, 0.5, 2.0)),
        _image(nodules, tmp_path / "n.nrrd", (0.5, 0.5, 2.0)),
    )
    with pytest.warns(
        FieldOfViewWarning, match=r"smaller than one voxel of the model grid .*label 1 .*0.5 mm³"
    ):
        grid, _ = to_model_grid(read_masks(*paths), (16, 16, 16), (4.0, 4.0, 4.0))
    assert int(np.count_nonzero(grid.nodules.array == 1)) == 1


# ------------------------------------------------------------------ 6. a signal during the final write
class _SignalAfterDecoding(io.StringIO):
    """stdout of ``--progress json`` that sends this process a real SIGTERM when the last decode step is
    reported: the signal arrives after generation, while the CT is being written."""

    def write(self, text: str) -> int:
        if text.startswith("{"):
            event = json.loads(text)
            if event.get("stage") == "decode" and event.get("step") == event.get("total"):
                os.kill(os.getpid(), signal.SIGTERM)
        return super().write(text)


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd"])
def test_sigterm_during_the_final_write_exits_130_and_leaves_nothing(name, seg, tiny_model_dir, tmp_path,
                                                                       monkeypatch, capsys):  # fmt: skip
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "stdout", _SignalAfterDecoding())
    out = tmp_path / name
    try:
        code = main(["generate", "--model", str(tiny_model_dir), "--mask", str(seg), "--steps", "1",
                     "--device", "cpu", "--progress", "json", "--out", str(out)])  # fmt: skip
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == 130, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no CT, no sidecar, no partial file
    assert json.loads(sys.stdout.getvalue().splitlines()[-1])["exit_code"] == 130
