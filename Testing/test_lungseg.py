"""Lung segmentation: classical method on phantoms (any geometry) and on real chest CT, lungmask errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from land.imaging.lungseg import lung_volume_litres, segment_lungs
from land.imaging.volume import Volume
from land.interface.errors import InputError
from land.world.phantom import _sample_anatomy, make_phantom

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lung-pet-ct-dx"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def central_airway(image: Volume, lung: np.ndarray) -> np.ndarray:
    """Phantom trachea / main bronchi: air below -900 HU inside the body, outside the lungs, near the
    midline (the phantom is centred at x = 0)."""
    body = ndi.binary_fill_holes(
        image.array > -500,
        structure=np.array([[[0] * 3] * 3, [[0, 1, 0], [1, 1, 1], [0, 1, 0]], [[0] * 3] * 3]),
    )
    x_mm = image.origin[0] + np.arange(image.array.shape[2]) * image.spacing[0]
    near_midline = (np.abs(x_mm) < 30.0)[None, None, :]
    return (image.array < -900) & body & (lung == 0) & near_midline


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(0, 128, 2.0)


def test_phantom_dice_and_trachea_excluded(phantom):
    mask = segment_lungs(phantom.image)
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) <= {0, 1}
    assert mask.same_geometry(phantom.image)
    assert dice(mask.array, phantom.lung.array) > 0.95
    airway = central_airway(phantom.image, phantom.lung.array)
    assert airway.sum() > 200
    assert np.count_nonzero(mask.array[airway]) < 0.02 * airway.sum()
    assert mask.metadata["LAND.LungSeg.TracheaFound"] == "true"
    assert float(mask.metadata["LAND.LungSeg.VolumeL"]) == pytest.approx(lung_volume_litres(mask), abs=1e-3)
    # every nodule of the phantom lies inside the lung mask (holes and juxtapleural bumps are filled)
    nodules = phantom.nodules.array > 0
    assert np.count_nonzero(mask.array[nodules]) > 0.95 * nodules.sum()


def cropped_phantom(seed: int, top_mm: float, pocket: bool) -> tuple[Volume, np.ndarray]:
    """A 128 x 2.5 mm phantom cut off at ``top_mm`` (its top slice cuts the trachea, as a scan starting below
    the larynx), optionally with a paratracheal air pocket (a tracheal diverticulum) in the top slices that
    opens into the trachea through a short duct; and the phantom's trachea and main bronchi lumen."""
    ph = make_phantom(seed, 128, 2.5, n_nodules=0)
    img = ph.image
    z_mm = img.origin[2] + np.arange(img.array.shape[0]) * img.spacing[2]
    k = int(np.searchsorted(z_mm, top_mm))
    ct = Volume(img.array[:k].copy(), img.spacing, img.origin, img.direction)
    airway = central_airway(ct, ph.lung.array[:k])
    if pocket:
        ys, xs = np.nonzero(airway[-1])
        cy, cx = ys.mean(), xs.mean()
        sxy, sz = img.spacing[0], img.spacing[2]
        zz, yy, xx = np.indices(ct.array.shape)
        dz = (zz - (k - 1)) * sz  # mm below the top slice
        px, py = cx - 14.0 / sxy, cy + 4.0 / sxy
        sac = ((xx - px) * sxy / 6) ** 2 + ((yy - py) * sxy / 6) ** 2 + (dz / 16) ** 2 <= 1
        duct = (np.abs(dz + 12) <= 2.6) & (np.abs(yy - cy) * sxy <= 3.0) & (xx >= px) & (xx <= cx)
        ct.array[sac | duct] = -1000.0
    return ct, airway


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pocket", [False, True], ids=["plain", "pocket"])
def test_scan_starting_below_the_larynx(seed, pocket):
    """Top slice through the trachea: the carina where the trachea divides (not the top slice, which has
    two air regions when a paratracheal pocket opens into the trachea), no trachea or bronchus as lung."""
    ct, airway = cropped_phantom(seed, 100.0, pocket)
    mask = segment_lungs(ct)
    assert mask.metadata["LAND.LungSeg.TracheaFound"] == "true"
    assert float(mask.metadata["LAND.LungSeg.CarinaZmm"]) == pytest.approx(
        _sample_anatomy(seed).carina_z, abs=5.0
    )
    assert airway.sum() > 400
    assert np.count_nonzero(mask.array[airway]) == 0
    if pocket:  # the pocket is airway too, not lung
        assert np.count_nonzero(mask.array[ct.array == -1000.0]) == 0


def test_anisotropic_flipped_geometry():
    ph = make_phantom(1, (96, 96, 40), (2.6, 2.6, 6.0), n_nodules=0)
    ref = ph.lung.array
    # z stored top-down (direction z = -1) with a different origin: same physical image
    flipped = Volume(
        np.ascontiguousarray(ph.image.array[::-1]),
        ph.image.spacing,
        (ph.image.origin[0], ph.image.origin[1], ph.image.origin[2] + 39 * 6.0),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    )
    mask = segment_lungs(flipped)
    assert mask.same_geometry(flipped)
    assert dice(mask.array[::-1], ref) > 0.9


def test_no_lungs_gives_empty_mask():
    soft = Volume(np.full((20, 40, 40), 40, np.int16), (5.0, 5.0, 5.0))
    mask = segment_lungs(soft)
    assert mask.array.sum() == 0 and "no lung-sized air region" in mask.metadata["LAND.LungSeg.Notes"]


def test_method_errors(tmp_path, phantom):
    with pytest.raises(InputError, match="unknown lung segmentation method"):
        segment_lungs(phantom.image, method="magic")
    with pytest.raises(InputError, match="only used by method='lungmask'"):
        segment_lungs(phantom.image, weights=tmp_path / "w.pth")
    with pytest.raises(InputError, match="weights"):
        segment_lungs(phantom.image, method="lungmask")
    with pytest.raises(InputError, match="not found"):
        segment_lungs(phantom.image, method="lungmask", weights=tmp_path / "missing.pth")
    if importlib.util.find_spec("lungmask") is None:
        weights = tmp_path / "unet_r231.pth"
        weights.write_bytes(b"not really")
        with pytest.raises(InputError, match="pip install lungmask"):
            segment_lungs(phantom.image, method="lungmask", weights=weights)


# ------------------------------------------------------------------------------------------- real CT


def read_series(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    uid = reader.GetGDCMSeriesIDs(str(folder))[0]
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return Volume.from_sitk(reader.Execute())


def top_trachea(ct: Volume) -> np.ndarray:
    """The trachea lumen in the CT's most superior slice: the air region (below -700 HU, 30-800 mm^2) nearest
    the body's left-right centre, and the slice index."""
    z_top = int(
        np.argmax(
            [ct.to_sitk().TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (0, ct.array.shape[0] - 1)]
        )
    )
    top = ct.array[0 if z_top == 0 else -1]
    body = ndi.binary_fill_holes(top > -500)
    labels, n = ndi.label((top < -700) & body)
    cols = np.flatnonzero(body.any(axis=0))
    mid = 0.5 * (cols[0] + cols[-1])
    pix = ct.spacing[0] * ct.spacing[1]
    best, best_off = None, np.inf
    for lab in range(1, n + 1):
        region = labels == lab
        area = region.sum() * pix
        off = abs(np.argwhere(region)[:, 1].mean() - mid) * ct.spacing[0]
        if 30 < area < 800 and off < 30 and off < best_off:
            best, best_off = region, off
    assert best is not None, "no trachea in the top slice"
    return best, (0 if z_top == 0 else ct.array.shape[0] - 1)


CARINA_Z_MM = {"A0001": -249.0, "A0002": 232.0}  # slice z of the carina (5 mm and 8 mm slices)


@pytest.mark.skipif(not REAL_CT.is_dir(), reason="real chest CT samples (../shared/data) not available")
@pytest.mark.parametrize("case", ["A0001", "A0002"])
def test_real_chest_ct(case):
    ct = read_series(REAL_CT / case)
    mask = segment_lungs(ct)
    assert mask.same_geometry(ct)
    litres = lung_volume_litres(mask)
    assert 2.0 < litres < 8.0, litres
    # two lungs: substantial lung on both sides of the body's midline
    body_cols = np.flatnonzero((ct.array > -500).any(axis=(0, 1)))
    mid = int(0.5 * (body_cols[0] + body_cols[-1]))
    right, left = mask.array[:, :, :mid].sum(), mask.array[:, :, mid:].sum()
    voxel_l = float(np.prod(ct.spacing)) / 1e6
    assert right * voxel_l > 0.7 and left * voxel_l > 0.7
    assert 0.5 < right / left < 2.0
    # the trachea at the top centre is not lung
    trachea, z = top_trachea(ct)
    assert np.count_nonzero(mask.array[z][trachea]) == 0
    assert mask.metadata["LAND.LungSeg.TracheaFound"] == "true"
    # the carina where the trachea divides (read on these scans), well below the top slice
    assert float(mask.metadata["LAND.LungSeg.CarinaZmm"]) == pytest.approx(CARINA_Z_MM[case], abs=4.0)
    # cut off 40 mm above the carina (the top slice through the trachea): the same carina, no trachea as lung
    top = ct.to_sitk().TransformPhysicalPointToIndex((0.0, 0.0, CARINA_Z_MM[case] + 40.0))[2]
    cut = Volume(ct.array[: top + 1], ct.spacing, ct.origin, ct.direction)
    cut_mask = segment_lungs(cut)
    assert cut_mask.metadata["LAND.LungSeg.CarinaZmm"] == mask.metadata["LAND.LungSeg.CarinaZmm"]
    trachea, z = top_trachea(cut)
    assert np.count_nonzero(cut_mask.array[z][trachea]) == 0
