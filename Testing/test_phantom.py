"""Tests of land.world.phantom: geometry, HU, mask consistency, textures, determinism and the dataset
writer."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from land.imaging.volume import Volume
from land.interface.errors import InputError
from land.world.phantom import (
    PhantomCase,
    lung_mask_phantom,
    make_phantom,
    place_nodule,
    read_case,
    write_case,
    write_phantom_dataset,
)

SIZE, SPACING = 64, 4.0


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    return make_phantom(3, SIZE, SPACING, n_nodules=(2, 4))


@pytest.fixture(scope="module")
def case128() -> PhantomCase:
    return make_phantom(11, 128, 2.0)


def body_mask(image: np.ndarray) -> np.ndarray:
    """Body = everything denser than air plus what it encloses, filled per axial slice (lungs, airways)."""
    dense = image > -500
    return np.stack([ndimage.binary_fill_holes(s) for s in dense])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_geometry(case: PhantomCase) -> None:
    for vol in (case.image, case.lung, case.nodules):
        assert vol.array.shape == (SIZE,) * 3
        assert vol.spacing == (SPACING,) * 3
        assert np.allclose(vol.origin, [-(SIZE - 1) * SPACING / 2] * 3)
        assert vol.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert case.image.array.dtype == np.int16
    assert case.lung.array.dtype == np.uint8 and set(np.unique(case.lung.array)) <= {0, 1}
    assert case.nodules.array.dtype in (np.uint8, np.uint16)


def test_anisotropic_geometry() -> None:
    c = make_phantom(1, (48, 40, 32), (5.0, 6.0, 8.0), n_nodules=1, noise_hu=0.0)
    assert c.image.array.shape == (32, 40, 48) and c.image.size == (48, 40, 32)
    assert c.image.spacing == (5.0, 6.0, 8.0)
    assert np.allclose(c.image.origin, [-117.5, -117.0, -124.0])
    assert c.lung.array.sum() > 0 and c.image.same_geometry(c.lung) and c.image.same_geometry(c.nodules)


def test_hu_ranges(case: PhantomCase) -> None:
    img = case.image.array.astype(np.float32)
    lung = case.lung.array.astype(bool)
    body = body_mask(img)
    air = ~ndimage.binary_dilation(body, iterations=2)
    assert abs(np.median(img[air]) + 1000) < 30
    assert -900 <= np.median(img[lung]) <= -700
    tissue = body & ~ndimage.binary_dilation(lung, iterations=1) & (img > -300)
    assert 0 <= np.median(img[tissue]) <= 70  # muscle/blood/liver dominate the soft tissue
    fat = np.mean((img[body & ~lung] > -150) & (img[body & ~lung] < -50))
    assert fat > 0.03  # subcutaneous and mediastinal fat present
    assert np.percentile(img[body], 99.5) > 300 and (img > 150).sum() > 200  # bone
    assert np.mean(img[lung] > 150) < 0.002  # no bone inside the lungs


def test_hu_ranges_128(case128: PhantomCase) -> None:
    img = case128.image.array.astype(np.float32)
    lung = case128.lung.array.astype(bool)
    assert -900 <= np.median(img[lung]) <= -700
    assert img.max() > 600  # cortical bone survives the blur at 2 mm
    spine = img[:, 64:, 60:68]  # posterior midline
    assert np.mean(spine > 150) > 0.05


def test_noise_level() -> None:
    clean = make_phantom(2, SIZE, SPACING, n_nodules=0, noise_hu=0.0).image.array.astype(np.float32)
    noisy = make_phantom(2, SIZE, SPACING, n_nodules=0, noise_hu=20.0).image.array.astype(np.float32)
    inside = (clean > -1000) & (clean < 3000)  # unclipped voxels
    assert 15.0 < np.std((noisy - clean)[inside]) < 25.0


def test_mask_consistency(case: PhantomCase) -> None:
    labels = case.nodules.array
    lung = case.lung.array.astype(bool)
    k = int(labels.max())
    assert k >= 2
    assert sorted(np.unique(labels[labels > 0]).tolist()) == list(range(1, k + 1))
    assert np.all(lung[labels > 0])
    assert (
        sorted(case.textures) == list(range(1, k + 1)) == sorted(case.diameters_mm) == sorted(case.centres_mm)
    )
    assert all(t in (1, 2, 3, 4, 5) for t in case.textures.values())
    assert all(3.0 <= d <= 30.0 for d in case.diameters_mm.values())
    origin, spacing = np.array(case.image.origin), np.array(case.image.spacing)
    for label, centre in case.centres_mm.items():
        x, y, z = np.round((np.array(centre) - origin) / spacing).astype(int)
        assert lung[z, y, x]
        zz, yy, xx = np.nonzero(labels == label)
        centroid = np.array([xx.mean(), yy.mean(), zz.mean()])
        assert np.linalg.norm(centroid - (np.array(centre) - origin) / spacing) < 2


def test_lung_mask_phantom_matches(case: PhantomCase) -> None:
    lung = lung_mask_phantom(3, SIZE, SPACING)
    assert lung.same_geometry(case.lung) and np.array_equal(lung.array, case.lung.array)


def test_texture_ordering() -> None:
    means = {}
    for t in (1, 3, 5):
        c = make_phantom(5, SIZE, SPACING, n_nodules=1, textures=(t,), diameter_range_mm=(18.0, 20.0))
        assert c.textures == {1: t}
        means[t] = c.image.array[c.nodules.array == 1].astype(np.float32).mean()
    assert means[5] > means[3] > means[1]
    assert -750 < means[1] < -500 and means[5] > -250


def test_no_nodules_and_diameter_range() -> None:
    c = make_phantom(4, SIZE, SPACING, n_nodules=0)
    assert c.nodules.array.max() == 0 and c.textures == {} and c.diameters_mm == {} and c.centres_mm == {}
    c = make_phantom(4, SIZE, SPACING, n_nodules=4, diameter_range_mm=(8.0, 12.0), textures=(2, 4))
    assert len(c.textures) == 4 and set(c.textures.values()) <= {2, 4}
    assert all(8.0 <= d <= 12.0 for d in c.diameters_mm.values())


def test_determinism(case: PhantomCase) -> None:
    again = make_phantom(3, SIZE, SPACING, n_nodules=(2, 4))
    assert np.array_equal(again.image.array, case.image.array)
    assert np.array_equal(again.lung.array, case.lung.array)
    assert np.array_equal(again.nodules.array, case.nodules.array)
    assert again.textures == case.textures and again.diameters_mm == case.diameters_mm
    other = make_phantom(4, SIZE, SPACING, n_nodules=(2, 4))
    assert not np.array_equal(other.lung.array, case.lung.array)
    assert dice(other.lung.array > 0, case.lung.array > 0) < 0.99


@pytest.mark.parametrize("fixture", ["case", "case128"])
def test_threshold_dice(fixture: str, request: pytest.FixtureRequest) -> None:
    c: PhantomCase = request.getfixturevalue(fixture)
    img = c.image.array
    lungs = (img < -400) & body_mask(img)
    assert dice(lungs, c.lung.array > 0) > 0.9


def test_place_nodule() -> None:
    image = Volume(np.full((40, 40, 40), -850, np.int16), (1.0, 1.0, 1.0), (-20.0, -20.0, -20.0))
    labels = Volume(np.zeros((40, 40, 40), np.uint8), image.spacing, image.origin)
    n = place_nodule(image, labels, (0.0, 0.0, 0.0), 12.0, texture=5, label=1, rng=0)
    assert n == (labels.array == 1).sum()
    assert abs(n / (4 / 3 * np.pi * 6.0**3) - 1) < 0.3
    assert abs(np.mean(image.array[labels.array == 1]) - 30) < 20
    lung = np.zeros((40, 40, 40), bool)
    lung[:, :, :22] = True
    n2 = place_nodule(image, labels, (2.0, 0.0, 5.0), 8.0, texture=1, label=2, rng=1, lung=lung)
    assert 0 < n2 and np.all(lung[labels.array == 2])
    assert place_nodule(image, labels, (0.0, 0.0, 0.0), 2.0, texture=3, label=3, rng=2) >= 1  # sub-voxel
    with pytest.raises(InputError):
        place_nodule(image, labels, (0.0, 0.0, 0.0), 5.0, texture=6, label=1)
    with pytest.raises(InputError):
        place_nodule(image, labels, (0.0, 0.0, 0.0), 5.0, texture=1, label=300)


def test_invalid_arguments() -> None:
    with pytest.raises(InputError):
        make_phantom(0, 8, 4.0)
    with pytest.raises(InputError):
        make_phantom(0, SIZE, 0.0)
    with pytest.raises(InputError):
        make_phantom(0, SIZE, SPACING, textures=(0, 6))
    with pytest.raises(InputError):
        make_phantom(0, SIZE, SPACING, diameter_range_mm=(10.0, 5.0))
    with pytest.raises(InputError):
        make_phantom(0, SIZE, SPACING, n_nodules=(3, 1))


def test_write_case_roundtrip(case: PhantomCase, tmp_path) -> None:
    write_case(case, tmp_path / "c")
    back = read_case(tmp_path / "c")
    assert back.image.same_geometry(case.image) and back.image.array.dtype == np.int16
    assert np.array_equal(back.image.array, case.image.array)
    assert np.array_equal(back.lung.array, case.lung.array)
    assert np.array_equal(back.nodules.array, case.nodules.array)
    assert back.textures == case.textures and back.diameters_mm == case.diameters_mm
    textures = json.loads((tmp_path / "c" / "textures.json").read_text(encoding="utf-8"))
    assert textures == {str(k): v for k, v in case.textures.items()}  # label -> texture, nothing else
    meta = json.loads((tmp_path / "c" / "case.json").read_text(encoding="utf-8"))
    assert set(meta) == {"diameters_mm", "centres_mm"} and len(meta["centres_mm"]) == len(case.textures)


def test_dataset_writer_resumable(tmp_path) -> None:
    kwargs = dict(seed=20, size=48, spacing=5.0, n_nodules=(1, 2))
    manifest = write_phantom_dataset(tmp_path, 2, **kwargs)
    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))
    assert [r["case"] for r in rows] == ["case_0000", "case_0001"]
    for i, row in enumerate(rows):
        folder = tmp_path / row["case"]
        ref = make_phantom(20 + i, 48, 5.0, n_nodules=(1, 2))
        image = sitk.ReadImage(str(folder / "image.nii.gz"))
        assert image.GetPixelID() == sitk.sitkInt16
        assert image.GetSize() == (48, 48, 48) and image.GetSpacing() == (5.0, 5.0, 5.0)
        assert np.allclose(image.GetOrigin(), ref.image.origin)
        for name in ("lung", "nodules"):
            mask = sitk.ReadImage(str(folder / f"{name}.nii.gz"))
            assert mask.GetSize() == image.GetSize() and np.allclose(mask.GetOrigin(), image.GetOrigin())
        assert np.array_equal(sitk.GetArrayFromImage(image), ref.image.array)
        assert row["size"] == "48x48x48" and row["spacing"] == "5x5x5"
        assert int(row["nodule_count"]) == len(ref.textures)
        assert row["textures"] == ";".join(f"{k}:{v}" for k, v in sorted(ref.textures.items()))
    # resume: complete cases are skipped, an incomplete one is rewritten, the manifest is the same
    kept = (tmp_path / "case_0000" / "image.nii.gz").stat().st_mtime_ns
    (tmp_path / "case_0001" / "textures.json").unlink()
    time.sleep(0.01)
    manifest2 = write_phantom_dataset(tmp_path, 2, **kwargs)
    assert (tmp_path / "case_0000" / "image.nii.gz").stat().st_mtime_ns == kept
    assert (tmp_path / "case_0001" / "textures.json").is_file()
    assert list(csv.DictReader(manifest2.open(encoding="utf-8"))) == rows
    # different parameters: regenerated
    write_phantom_dataset(tmp_path, 1, seed=21, size=48, spacing=5.0, n_nodules=(1, 2))
    assert (tmp_path / "case_0000" / "image.nii.gz").stat().st_mtime_ns != kept
