"""Deformed wide-field phantoms: image and masks stay aligned, pairs differ only by their nodules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from land.imaging.grid import bounding_box
from land.world.phantom import make_phantom
from land.world.phantom_deform import JITTER_MM, LUNG_WIDTH_FRACTION

SIZE, SPACING = 64, 5.0  # 320 mm field of view, as the wide-field demo grid


@pytest.fixture(scope="module")
def cases():
    return [make_phantom(s, SIZE, SPACING, n_nodules=(2, 3), deform=True, keep_without_nodules=True)
            for s in (11, 12, 13)]  # fmt: skip


def test_deformed_masks_label_the_deformed_image(cases):
    for case in cases:
        img, lung, nod = case.image.array, case.lung.array > 0, case.nodules.array
        # the lungs (away from their border, outside nodules and vessels) are aerated lung in the image
        core = ndi.binary_erosion(lung, iterations=2) & (nod == 0)
        assert np.median(img[core]) < -700
        # the body around the lungs is not
        shell = ndi.binary_dilation(lung, iterations=3) & ~ndi.binary_dilation(lung, iterations=1)
        assert np.median(img[shell]) > -500
        for label, texture in case.textures.items():
            inside = img[nod == label]
            assert inside.size and lung[nod == label].all()
            if inside.size >= 8:  # smaller ones are mostly partial volume at 5 mm
                assert np.mean(inside) > np.median(img[core]) + 100, (label, texture)


def test_pairs_differ_only_at_their_nodules(cases):
    for case in cases:
        delta = np.abs(case.image.array.astype(np.int32) - case.image_without_nodules.array)
        nodules = case.nodules.array > 0
        assert delta[nodules].max() > 100
        # partial volume (the warp's linear interpolation, then the 3-tap blur) spreads a nodule by up to
        # 1.4 + 1 voxels along each axis
        cube = np.ones((3, 3, 3), bool)
        assert delta[~ndi.binary_dilation(nodules, cube, iterations=1)].max() < 100
        assert not delta[~ndi.binary_dilation(nodules, cube, iterations=3)].any()


def test_deformation_varies_the_anatomy_and_centres_the_lungs(cases):
    widths = []
    for case in cases:
        box = bounding_box(case.lung.array > 0)
        assert box is not None
        centre = 0.5 * (box[0] + box[1])
        assert np.all(np.abs(centre - (SIZE - 1) / 2) * SPACING <= JITTER_MM + 2.5 * SPACING)
        widths.append((box[1][0] - box[0][0] + 1) * SPACING)
    plain = make_phantom(11, SIZE, SPACING).lung.array > 0
    plain_box = bounding_box(plain)
    assert plain_box is not None
    assert max(widths) - min(widths) > 2 * SPACING  # the cases differ in size
    again = make_phantom(11, SIZE, SPACING, n_nodules=(2, 3), deform=True, keep_without_nodules=True)
    assert np.array_equal(again.image.array, cases[0].image.array)  # deterministic per seed
    assert not np.array_equal(plain, cases[0].lung.array > 0)


def test_lung_from_ct_draws_the_mask_from_the_image():
    case = make_phantom(21, SIZE, SPACING, n_nodules=2, deform=True, lung_from_ct=True)
    anatomical = make_phantom(21, SIZE, SPACING, n_nodules=2, deform=True)
    assert np.array_equal(case.image.array, anatomical.image.array)
    drawn, truth = case.lung.array > 0, anatomical.lung.array > 0
    dice = 2 * np.count_nonzero(drawn & truth) / (drawn.sum() + truth.sum())
    assert 0.8 < dice < 1.0
    assert drawn[case.nodules.array > 0].all()


def test_lungs_span_half_to_nearly_all_of_the_grid_width():
    """The x scale is drawn so the lungs span LUNG_WIDTH_FRACTION of the grid's width, the range real adult
    lungs cover on a 320 mm grid (the wide end is where real masks lie: 0.96 for a 307 mm chest)."""
    lo, hi = LUNG_WIDTH_FRACTION
    fractions = []
    for seed in range(30, 38):
        box = bounding_box(make_phantom(seed, SIZE, SPACING, n_nodules=0, deform=True).lung.array > 0)
        assert box is not None
        fractions.append((box[1][0] - box[0][0] + 1) / SIZE)
    # rotation, elastic field and whole voxels move the extent by a few percent
    assert all(lo - 0.06 <= f <= min(hi + 0.05, 1.0) for f in fractions), fractions
    assert max(fractions) - min(fractions) > 0.15 and max(fractions) > 0.85, fractions
