"""The LAND folder dataset: reading, [0, 1] intensities, patches, data order and ``land check-dataset``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from land.cli import main
from land.data import FolderDataset, PatchDataset, case_indices, check_dataset, hu_to_unit, read_manifest
from land.interface.errors import InputError

SPACING = (8.0, 8.0, 8.0)
ORIGIN = (-124.0, -124.0, -124.0)


def _ball(shape, centre, radius) -> np.ndarray:
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    r = np.asarray(radius, np.float32)
    return ((zz - centre[0]) / r[0]) ** 2 + ((yy - centre[1]) / r[1]) ** 2 + (
        (xx - centre[2]) / r[2]
    ) ** 2 <= 1


def _write(array: np.ndarray, path: Path, spacing=SPACING, origin=ORIGIN) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def write_case(folder: Path, seed: int, size: int = 32, textures: dict | None = None) -> None:
    """A phantom chest: body, two lungs and 1-2 nodules (texture sets the nodule HU), on a size^3 grid."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (size,) * 3
    c = size / 2 + rng.uniform(-1, 1, 3)
    body = _ball(shape, c, (size * 0.45, size * 0.38, size * 0.45))
    lungs = _ball(shape, (c[0], c[1], c[2] - size * 0.2), (size * 0.3, size * 0.25, size * 0.15))
    lungs |= _ball(shape, (c[0], c[1], c[2] + size * 0.2), (size * 0.3, size * 0.25, size * 0.15))
    nodules = np.zeros(shape, np.uint8)
    n_nodules = 1 + seed % 2
    textures = textures or {str(k): int(rng.integers(1, 6)) for k in range(1, n_nodules + 1)}
    for k in range(1, n_nodules + 1):
        side = -1 if k == 1 else 1
        centre = (c[0] + rng.uniform(-2, 2), c[1], c[2] + side * size * 0.2)
        nodules[_ball(shape, centre, (1.6, 1.6, 1.6)) & lungs] = k
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = 40.0
    hu[lungs] = -850.0
    for k, t in textures.items():
        hu[nodules == int(k)] = -700.0 + 180.0 * (int(t) - 1)
    hu += rng.normal(0, 20, shape).astype(np.float32)
    _write(np.rint(hu).astype(np.int16), folder / "image.nii.gz")
    _write(lungs.astype(np.uint8), folder / "lung.nii.gz")
    _write(nodules, folder / "nodules.nii.gz")
    (folder / "textures.json").write_text(
        json.dumps({**textures, "source": "test phantom"}), encoding="utf-8"
    )


def write_dataset(root: Path, n: int = 3, size: int = 32) -> Path:
    """``n`` phantom cases plus manifest.csv (columns case, split, note)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case", "split", "note"])
        for i in range(n):
            write_case(root / f"case{i:03d}", seed=i, size=size)
            w.writerow([f"case{i:03d}", "train", "phantom"])
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "ds", n=3)


def test_phantom_generator_output_is_accepted_when_available(tmp_path):
    phantom = pytest.importorskip("land.world.phantom")
    out = tmp_path / "ph"
    phantom.write_phantom_dataset(out, n=2, seed=0, size=32, spacing=8.0)
    report = check_dataset(out)
    assert report.ok, report.format_text()


def test_folder_dataset_reads_unit_image_and_conditioning(dataset):
    cases = read_manifest(dataset)
    assert [c.name for c in cases] == ["case000", "case001", "case002"] and cases[0].extra == {
        "note": "phantom"
    }
    item = FolderDataset(dataset, mode="nodule+lung+texture")[1]
    assert item["image"].shape == (1, 32, 32, 32) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    cond = item["cond"]
    assert cond.shape == (1, 32, 32, 32)
    values = np.unique(cond.numpy())
    assert np.isin(values.round(4), np.float32([0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]).round(4)).all(), values
    np.testing.assert_allclose(hu_to_unit(np.array([-2000, -1000, 0, 1000, 3000])), [0, 0, 0.5, 1, 1])


def test_patches_are_deterministic_and_inside(dataset):
    patches = PatchDataset(read_manifest(dataset), (16, 16, 8), cache_volumes=2)
    a, b, c = patches[(0, 7)], patches[(0, 7)], patches[(0, 8)]
    assert a.shape == (1, 8, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(InputError, match="smaller vae.patch_size"):
        PatchDataset(read_manifest(dataset), (64, 64, 64))[(0, 1)]


def test_nodule_centred_patches_and_nodule_masks(dataset):
    cases = read_manifest(dataset)
    nodules = [(sitk.GetArrayFromImage(sitk.ReadImage(str(c.nodules))) != 0) for c in cases]
    images = [sitk.GetArrayFromImage(sitk.ReadImage(str(c.image))) for c in cases]
    plain = PatchDataset(cases, (8, 8, 8))
    centred = PatchDataset(cases, (8, 8, 8), nodule_fraction=1.0, with_nodules=True)
    half = PatchDataset(cases, (8, 8, 8), nodule_fraction=0.5, with_nodules=True)
    hits_plain = hits_half = 0
    for seed in range(40):
        i = seed % len(cases)
        patch, mask = centred[(i, seed)]
        assert patch.shape == mask.shape == (1, 8, 8, 8) and mask.dtype == torch.float32
        assert mask.sum() > 0  # every patch holds part of a nodule
        hits_plain += bool(mask_of(plain[(i, seed)], seed, images[i], nodules[i]).any())
        p2, m2 = half[(i, seed)]
        hits_half += bool(m2.sum() > 0)
        if not m2.sum():
            assert torch.equal(p2, plain[(i, seed)])  # not centred: the same uniform patch as before
    assert hits_plain < hits_half < 40
    with pytest.raises(InputError, match="nodule_fraction"):
        PatchDataset(cases, (8, 8, 8), nodule_fraction=1.5)


def mask_of(patch: torch.Tensor, seed: int, image: np.ndarray, nodules: np.ndarray) -> np.ndarray:
    """The nodule mask under a uniform patch (corner from land.data.sampling.patch_origin)."""
    from land.data.sampling import patch_origin

    z, y, x = patch_origin(nodules.shape, patch.shape[1:], seed)
    d, h, w = patch.shape[1:]
    assert np.array_equal(hu_to_unit(image[z : z + d, y : y + h, x : x + w]), patch[0].numpy())
    return nodules[z : z + d, y : y + h, x : x + w]


def test_data_order_is_a_function_of_seed_and_step_and_splits_ranks():
    n = 10
    assert case_indices(n, 3, 5, 2) == case_indices(n, 3, 5, 2)
    assert case_indices(n, 3, 5, 2) != case_indices(n, 4, 5, 2)
    epoch = [i for step in range(5) for i in case_indices(n, 0, step, 2)]
    assert sorted(epoch) == list(range(n))  # a permutation per epoch
    ranks = [i for step in range(5) for r in range(2) for i in case_indices(n, 0, step, 1, r, 2)]
    assert sorted(ranks[:n]) == list(range(n))  # ranks see disjoint shares


def _break(root: Path) -> None:
    """case000: textures out of range and a label without texture; case001: geometry; case002: file."""
    (root / "case000" / "textures.json").write_text(json.dumps({"1": 7, "source": "x"}), encoding="utf-8")
    lung = sitk.ReadImage(str(root / "case001" / "lung.nii.gz"))
    lung.SetSpacing((8.0, 8.0, 9.0))
    sitk.WriteImage(lung, str(root / "case001" / "lung.nii.gz"))
    (root / "case002" / "nodules.nii.gz").unlink()


def test_check_dataset_reports_problems_per_case(tmp_path):
    root = write_dataset(tmp_path / "bad", n=4)
    assert check_dataset(root, (32, 32, 32), SPACING).ok
    _break(root)
    (root / "case003" / "textures.json").write_text(json.dumps({"1": 3, "2": 4, "9": 2}), encoding="utf-8")
    report = check_dataset(root, (64, 64, 64), SPACING)
    by_name = {c.name: c for c in report.cases}
    text = " | ".join(by_name["case000"].problems)
    assert "texture 7 of label 1 is not an integer 1..5" in text and "have no texture" in text
    assert any("geometry mismatch" in p for p in by_name["case001"].problems)
    assert any("missing file(s): nodules.nii.gz" in p for p in by_name["case002"].problems)
    assert all(any("data.grid_size" in p for p in c.problems) for c in report.cases if c.name != "case002")
    assert any("absent from nodules.nii.gz" in w for w in by_name["case003"].warnings)
    assert not report.ok and len(report.bad_cases) == 4
    with pytest.raises(InputError, match="land check-dataset"):
        report.raise_if_bad()


def test_check_dataset_counts_nodule_voxels_outside_by_the_masks_rule(tmp_path):
    """Issue 26 item 5: ``check-dataset`` counts outside voxels by the same rule as ``generate``: a nodule
    voxel touching the lung (26-neighbourhood) is inside; one further out is reported."""
    root = write_dataset(tmp_path / "ds", n=1)
    case = root / "case000"
    lung = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lung.nii.gz"))) != 0
    nodules = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "nodules.nii.gz")))
    zz, yy, xx = np.nonzero(lung)
    i = int(np.argmax(xx))
    z, y, edge = int(zz[i]), int(yy[i]), int(xx[i])  # a lung voxel of largest x
    nodules[z, y, edge + 1] = 1  # touches the lung
    _write(nodules, case / "nodules.nii.gz")
    assert check_dataset(root).cases[0].warnings == []
    nodules[z, y, edge + 3] = 1  # two voxels away from it
    _write(nodules, case / "nodules.nii.gz")
    warnings = check_dataset(root).cases[0].warnings
    assert warnings == ["nodule voxels outside the lung mask (label 1: 1 voxels)"], warnings


def test_check_dataset_cli_exit_codes(tmp_path, capsys):
    root = write_dataset(tmp_path / "ds", n=2)
    assert main(["check-dataset", str(root), "--config", "tiny"]) == 0
    assert "summary: OK" in capsys.readouterr().out
    assert main(["check-dataset", str(root), "--config", "small", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and "data.grid_size" in report["cases"][0]["problems"][0]
    (root / "manifest.csv").unlink()
    assert main(["check-dataset", str(root)]) == 2
    assert "manifest.csv is missing" in capsys.readouterr().out


def test_case_metadata_lives_in_case_json_and_old_folders_still_read(tmp_path):
    """textures.json holds label -> texture only (the documented format); other metadata goes to case.json;
    a case folder written before case.json (metadata mixed into textures.json) reads the same."""
    from land.data.folder import read_case_meta, read_textures, write_case
    from land.world.phantom import make_phantom

    case = make_phantom(4, size=(24, 24, 24), spacing=(6.0, 6.0, 6.0), n_nodules=1)
    folder = write_case(tmp_path / "new", case.image, case.lung, case.nodules, case.textures, {"source": "x"})
    assert json.loads((folder / "textures.json").read_text(encoding="utf-8")) == {
        str(k): v for k, v in case.textures.items()
    }
    assert read_case_meta(folder) == {"source": "x"}
    old = tmp_path / "old"
    old.mkdir()
    legacy = {"1": 5, "source": "y", "diameters_mm": {"1": 8.0}}
    (old / "textures.json").write_text(json.dumps(legacy), encoding="utf-8")
    assert read_textures(old / "textures.json") == ({1: 5}, [])
    assert read_case_meta(old) == {"source": "y", "diameters_mm": {"1": 8.0}}
    assert read_case_meta(tmp_path / "missing") == {}
