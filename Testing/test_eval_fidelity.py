"""Conditional fidelity metrics on constructed volumes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from land.eval.fidelity import NoduleStat, dice, fidelity_summary, lung_dice, nodule_stats
from land.interface.errors import InputError

SHAPE = (64, 64, 64)


def _chest(rng: np.random.Generator):
    """Body (40 HU) in air, two lungs (-850 HU) as ellipsoids; noise 20 HU."""
    zz, yy, xx = np.indices(SHAPE)
    body = ((yy - 32) / 28.0) ** 2 + ((xx - 32) / 30.0) ** 2 <= 1
    right = ((zz - 32) / 22.0) ** 2 + ((yy - 32) / 18.0) ** 2 + ((xx - 20) / 9.0) ** 2 <= 1
    left = ((zz - 32) / 22.0) ** 2 + ((yy - 32) / 18.0) ** 2 + ((xx - 44) / 9.0) ** 2 <= 1
    ct = np.full(SHAPE, -1000.0)
    ct[body] = 40.0
    ct[right | left] = -850.0
    return ct + rng.normal(0, 20, SHAPE), right, left


def test_lung_dice_known_answers():
    rng = np.random.default_rng(0)
    ct, right, left = _chest(rng)
    lungs = right | left
    assert lung_dice(ct, lungs, (2.0, 2.0, 2.0)) > 0.98
    one_lung = ct.copy()
    one_lung[right] = 40.0 + rng.normal(0, 20, int(right.sum()))  # right lung filled with soft tissue
    expected = 2 * left.sum() / (left.sum() + lungs.sum())
    assert lung_dice(one_lung, lungs, (2.0, 2.0, 2.0)) == pytest.approx(expected, abs=0.02)
    assert lung_dice(np.full(SHAPE, 40.0), lungs, (2.0, 2.0, 2.0)) == 0.0
    with pytest.raises(InputError, match="differs"):
        lung_dice(ct, lungs[:-1], (2.0, 2.0, 2.0))
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def _brute_force_shell(nodule, lung, others, spacing_xyz, gap, shell):
    """Shell voxels by explicit distances (mm) to every nodule voxel: an independent reference."""
    sz, sy, sx = spacing_xyz[::-1]
    pts = np.argwhere(nodule) * [sz, sy, sx]
    cand = np.argwhere(lung & ~others)
    d = np.sqrt((((cand * [sz, sy, sx])[:, None, :] - pts[None]) ** 2).sum(-1)).min(1)
    keep = cand[(d > gap) & (d <= gap + shell)]
    out = np.zeros(nodule.shape, bool)
    out[tuple(keep.T)] = True
    return out


def test_nodule_stats_match_brute_force_on_anisotropic_grid():
    rng = np.random.default_rng(1)
    shape, spacing = (20, 26, 30), (1.0, 1.5, 2.0)  # x, y, z mm: anisotropic catches axis-order mistakes
    zz, yy, xx = np.indices(shape)
    lung = np.ones(shape, bool)
    lung[:, :, :3] = False
    labels = np.zeros(shape, np.uint8)
    labels[((zz - 10) * 2.0) ** 2 + ((yy - 12) * 1.5) ** 2 + ((xx - 14) * 1.0) ** 2 <= 16] = 1
    labels[((zz - 10) * 2.0) ** 2 + ((yy - 13) * 1.5) ** 2 + ((xx - 24) * 1.0) ** 2 <= 9] = 2
    ct = -850.0 + rng.normal(0, 25, shape)
    ct[labels == 1] = 30.0 + rng.normal(0, 5, int((labels == 1).sum()))
    ct[labels == 2] = -840.0 + rng.normal(0, 25, int((labels == 2).sum()))
    stats = {
        s.label: s for s in nodule_stats(ct, lung, labels, {1: 5, 2: 1}, spacing, shell_mm=4.0, gap_mm=1.0)
    }
    for label in (1, 2):
        nod = labels == label
        ring = _brute_force_shell(nod, lung, labels != 0, spacing, 1.0, 4.0)
        s = stats[label]
        assert s.voxels == int(nod.sum()) and s.texture == {1: 5, 2: 1}[label]
        assert s.mean_hu == pytest.approx(ct[nod].mean())
        assert s.surround_mean_hu == pytest.approx(ct[ring].mean())
        assert s.surround_std_hu == pytest.approx(ct[ring].std())
        assert s.contrast_hu == pytest.approx(ct[nod].mean() - ct[ring].mean())
        assert s.cnr == pytest.approx(s.contrast_hu / s.surround_std_hu)
    assert stats[1].visible and stats[1].contrast_hu > 800
    assert not stats[2].visible  # lung-like nodule: contrast below the noise
    assert stats[1].inside_lung_fraction == 1.0
    volume = int((labels == 1).sum()) * 1.0 * 1.5 * 2.0
    assert stats[1].diameter_mm == pytest.approx((6 * volume / math.pi) ** (1 / 3))
    assert 7.0 < stats[1].diameter_mm < 9.0  # the ellipsoid's semi-axes are 4 mm


def test_nodule_outside_lung_and_no_surround():
    lung = np.zeros((16, 16, 16), bool)
    lung[:, :, :8] = True
    labels = np.zeros_like(lung, np.uint8)
    labels[6:10, 6:10, 6:10] = 1  # half in the lung (x 6, 7), half outside (x 8, 9)
    labels[6:10, 6:10, 12:15] = 2  # fully outside
    ct = np.where(lung, -850.0, 40.0)
    ct[labels == 1] = 0.0
    s1, s2 = nodule_stats(ct, lung, labels, {1: 3}, (1.0, 1.0, 1.0))
    assert s1.inside_lung_fraction == 0.5 and s1.surround_std_hu == 0.0
    assert s1.surround_mean_hu == -850.0 and s1.cnr == math.inf and s1.visible
    assert s2.texture is None and s2.inside_lung_fraction == 0.0
    assert math.isnan(s2.surround_mean_hu) and math.isnan(s2.cnr) and not s2.visible
    assert s2.to_json()["cnr"] is None


def _stat(label, texture, hu, visible=True, inside=1.0, diameter=8.0):
    return NoduleStat(
        label,
        texture,
        10,
        hu,
        -850.0,
        20.0,
        hu + 850.0,
        (hu + 850) / 20,
        visible,
        inside,
        diameter_mm=diameter,
    )


def test_fidelity_summary_known_values():
    cases = [
        {"lung_dice": 0.9, "nodules": [_stat(1, 1, -600.0), _stat(2, 3, -300.0, visible=False)]},
        {"lung_dice": 0.7, "nodules": [_stat(1, 5, 20.0, inside=0.2).to_json(), _stat(2, 1, -700.0)]},
        {"lung_dice": None, "nodules": []},
    ]
    s = fidelity_summary(cases)
    assert s["cases"] == 3 and s["cases_with_dice"] == 2 and s["nodules"] == 4
    assert s["lung_dice_mean"] == pytest.approx(0.8) and s["lung_dice_std"] == pytest.approx(0.1)
    # ranks: texture (1.5, 3, 4, 1.5), HU (2, 3, 4, 1): Pearson of ranks = 4.5 / sqrt(4.5 * 5)
    assert s["texture_hu_spearman_rho"] == pytest.approx(4.5 / math.sqrt(22.5))
    assert s["share_visible"] == 0.75 and s["share_outside_lung"] == 0.25
    assert s["mean_hu_by_texture"] == {"1": -650.0, "3": -300.0, "5": 20.0}
    assert s["by_texture"]["1"]["n"] == 2
    small = s["by_size"]["below"]
    assert s["by_size"]["split_mm"] == 6.0 and small["nodules"] == 0 and small["share_visible"] is None
    assert s["by_size"]["at_or_above"]["nodules"] == 4
    assert s["by_size"]["at_or_above"]["texture_hu_spearman_rho"] == s["texture_hu_spearman_rho"]
    cases[0]["nodules"][1] = _stat(2, 3, -300.0, visible=False, diameter=4.0)
    split = fidelity_summary(cases)["by_size"]
    assert split["below"]["nodules"] == 1 and split["below"]["share_visible"] == 0.0
    assert split["at_or_above"]["nodules"] == 3 and split["at_or_above"]["share_visible"] == 1.0
    flat = fidelity_summary([{"lung_dice": 1.0, "nodules": [_stat(1, 2, -500.0)]}])
    assert flat["texture_hu_spearman_rho"] is None and flat["share_outside_lung"] == 0.0


def test_visibility_is_signed_a_dark_hole_is_not_a_nodule():
    """Every texture is denser than lung: a sphere darker than the lung by far more than the noise is
    not a visible nodule, while the same sphere as bright is."""
    rng = np.random.default_rng(3)
    shape = (24, 24, 24)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    lung = np.ones(shape, bool)
    labels = np.zeros(shape, np.uint8)
    labels[(zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 16] = 1
    ct = -700.0 + rng.normal(0, 20, shape)
    dark = ct.copy()
    dark[labels == 1] = -1000.0
    bright = ct.copy()
    bright[labels == 1] = -400.0
    (d,) = nodule_stats(dark, lung, labels, {1: 5}, (1.0, 1.0, 1.0))
    (b,) = nodule_stats(bright, lung, labels, {1: 5}, (1.0, 1.0, 1.0))
    assert d.contrast_hu < -250 and abs(d.contrast_hu) > d.surround_std_hu and not d.visible
    assert b.contrast_hu > 250 and b.visible


def test_false_nodules_count_compact_unpainted_blobs_only():
    from land.eval.fidelity import false_nodules

    spacing = (2.0, 2.0, 2.0)
    shape = (60, 60, 60)
    zz, yy, xx = np.indices(shape)
    lung = np.zeros(shape, bool)
    lung[5:55, 5:55, 5:55] = True
    ct = np.where(lung, -850.0, 40.0)
    labels = np.zeros(shape, np.uint8)

    def ball(c, r_vox):
        return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r_vox**2

    ct[ball((20, 20, 20), 3)] = 30.0  # 12 mm solid blob nobody painted: a false nodule
    ct[ball((40, 40, 40), 3)] = 30.0  # the same blob, painted: not false
    labels[ball((40, 40, 40), 3)] = 1
    ct[ball((20, 40, 40), 0.8)] = 30.0  # about 3 mm: below the size rule
    ct[(np.abs(yy - 30) <= 1) & (np.abs(xx - 12) <= 1) & (zz > 8) & (zz < 52)] = 40.0  # a vessel: long, thin
    ct[ball((40, 20, 20), 3)] = -500.0  # ground glass denser than lung but below the threshold
    found = false_nodules(ct, lung, labels, spacing)
    assert len(found) == 1
    assert found[0]["diameter_mm"] == pytest.approx(12.0, rel=0.15) and found[0]["mean_hu"] == 30.0
    assert len(false_nodules(ct, lung, labels, spacing, threshold_hu=-600)) == 2  # the ground glass too
    assert false_nodules(ct, lung, np.where(ct > -300, 1, 0) * lung, spacing) == []  # all painted


def test_spearman_over_few_nodules_carries_a_small_sample_note():
    def case(n: int) -> dict:
        return {"lung_dice": 1.0, "nodules": [{"texture": 1 + i % 5, "mean_hu": -700.0 + 50 * (i % 5) + i}
                                              for i in range(n)]}  # fmt: skip

    few = fidelity_summary([case(4)])
    assert few["texture_hu_spearman_rho"] is not None
    assert few["texture_hu_spearman_note"] == "over 4 nodules only: a small sample, the rho is unreliable"
    assert fidelity_summary([case(12)])["texture_hu_spearman_note"] is None
