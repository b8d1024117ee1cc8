"""Tests of the LAND conditioning mask: encoding per mode, max pooling, validation, texture parsing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from land.conditioning.encode import encode_conditioning, nodule_region, pool_to_latent
from land.imaging.maskset import MODES, MaskSet, NoduleOutsideLungWarning, parse_texture_overrides
from land.imaging.volume import Volume
from land.interface.errors import InputError

GEOMETRY = dict(spacing=(0.8, 0.9, 2.5), origin=(-10.5, 20.25, -30.0), direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
BG, LUNG, NOD1, NOD2 = (0, 0, 0), (1, 1, 1), (3, 3, 3), (5, 5, 5)


def make_masks(textures: dict | None = None, nodule2_at: tuple[int, int, int] = NOD2) -> MaskSet:
    lung = np.zeros((8, 8, 8), np.uint8)
    lung[1:7, 1:7, 1:7] = 1
    nod = np.zeros((8, 8, 8), np.int16)
    nod[2:4, 2:4, 2:4] = 1
    nod[nodule2_at] = 2
    return MaskSet(
        lung=Volume(lung, **GEOMETRY),
        nodules=Volume(nod, **GEOMETRY),
        textures={1: 2, 2: 5} if textures is None else textures,
        names={1: "Nodule 1", 2: "Nodule 2"},
    )


@pytest.mark.parametrize(
    ("mode", "lung", "nod1", "nod2"),
    [
        ("none", 0.0, 0.0, 0.0),
        ("nodule", 0.0, 1.0, 1.0),
        ("nodule+lung", 0.1, 1.0, 1.0),
        ("nodule+lung+texture", 0.1, 0.4, 1.0),
    ],
)
def test_encoded_values_per_mode(mode: str, lung: float, nod1: float, nod2: float) -> None:
    masks = make_masks()
    cond = encode_conditioning(masks, mode)
    assert cond.array.dtype == np.float32
    assert cond.same_geometry(masks.lung)
    a = cond.array
    assert a[BG] == 0.0
    assert a[LUNG] == np.float32(lung)
    assert a[NOD1] == np.float32(nod1)
    assert a[NOD2] == np.float32(nod2)
    expected = {0.0, lung, nod1, nod2} if mode != "none" else {0.0}
    assert set(np.unique(a).tolist()) == {float(np.float32(v)) for v in expected}
    assert a.min() >= 0.0 and a.max() <= 1.0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("texture", [1, 3, 5])
def test_nodule_region_finds_the_nodules_in_every_mode(mode: str, texture: int) -> None:
    masks = make_masks({1: texture, 2: texture})
    cond = torch.from_numpy(encode_conditioning(masks, mode).array)
    found = nodule_region(cond).numpy()
    nodules = masks.nodules.array > 0
    assert np.array_equal(found, nodules if mode != "none" else np.zeros_like(nodules))
    pooled = nodule_region(pool_to_latent(cond, 2))[0, 0].numpy()  # also on the latent grid
    assert pooled.sum() == (0 if mode == "none" else 2) and pooled[
        NOD2[0] // 2, NOD2[1] // 2, NOD2[2] // 2
    ] == (mode != "none")


def test_all_textures_encode_as_texture_over_five() -> None:
    for t in range(1, 6):
        a = encode_conditioning(make_masks({1: t, 2: 1}), "nodule+lung+texture").array
        assert a[NOD1] == np.float32(t / 5)


def test_modes_tuple() -> None:
    assert MODES == ("none", "nodule", "nodule+lung", "nodule+lung+texture")


def test_maskset_helpers() -> None:
    masks = make_masks()
    assert masks.labels() == [1, 2]
    assert masks.reference is masks.lung
    assert MaskSet(nodules=masks.nodules).reference is masks.nodules
    assert MaskSet().reference is None and MaskSet().labels() == []


def test_unknown_mode_lists_valid_modes() -> None:
    with pytest.raises(InputError) as e:
        encode_conditioning(make_masks(), "lung+nodule")
    assert "'lung+nodule'" in str(e.value)
    for mode in MODES:
        assert mode in str(e.value)
    assert e.value.exit_code == 2


def test_geometry_mismatch_prints_both_geometries() -> None:
    masks = make_masks()
    masks.nodules.origin = (0.0, 0.0, 0.0)
    with pytest.raises(InputError) as e:
        encode_conditioning(masks, "nodule+lung")
    msg = str(e.value)
    assert "lung mask:" in msg and "nodule map:" in msg
    assert "(-10.5, 20.25, -30.0)" in msg and "(0.0, 0.0, 0.0)" in msg
    assert "fix" in msg


def test_shape_mismatch() -> None:
    masks = make_masks()
    masks.nodules = Volume(np.zeros((8, 8, 4), np.uint8), **GEOMETRY)
    with pytest.raises(InputError, match=r"size \(4, 8, 8\)"):
        encode_conditioning(masks, "nodule")


@pytest.mark.parametrize("bad", [True, False, 2.5, 2.0, np.float64(3.0), 0, 6, -1, "3", None])
def test_invalid_textures_rejected(bad: object) -> None:
    with pytest.raises(InputError) as e:
        encode_conditioning(make_masks({1: bad, 2: 5}), "nodule+lung+texture")
    msg = str(e.value)
    assert "label 1" in msg and repr(bad) in msg and "1..5" in msg


def test_numpy_integer_texture_accepted() -> None:
    a = encode_conditioning(make_masks({1: np.int64(3), 2: 5}), "nodule+lung+texture").array
    assert a[NOD1] == np.float32(0.6)


def test_texture_for_absent_label() -> None:
    with pytest.raises(InputError) as e:
        encode_conditioning(make_masks({1: 2, 2: 5, 7: 3}), "nodule+lung")
    msg = str(e.value)
    assert "7" in msg and "not present" in msg and "'Nodule 1'" in msg


def test_missing_texture_in_texture_mode() -> None:
    masks = make_masks({1: 2})
    with pytest.raises(InputError) as e:
        encode_conditioning(masks, "nodule+lung+texture")
    msg = str(e.value)
    assert "label 2" in msg and "'Nodule 2'" in msg and "label 1 " not in msg
    assert "--texture LABEL=T" in msg and "LAND.Texture" in msg
    encode_conditioning(masks, "nodule+lung")  # textures are not needed without texture


def test_negative_labels_rejected() -> None:
    masks = make_masks()
    masks.nodules.array[0, 0, 0] = -3
    with pytest.raises(InputError, match=r"negative values \(minimum -3\)"):
        encode_conditioning(masks, "nodule")


def test_non_integer_labels_rejected() -> None:
    masks = make_masks()
    masks.nodules = masks.nodules.with_array(masks.nodules.array.astype(np.float32))
    encode_conditioning(masks, "nodule+lung")  # integer-valued floats are fine
    masks.nodules.array[0, 0, 0] = 1.5
    with pytest.raises(InputError, match="non-integer values .*1.5"):
        encode_conditioning(masks, "nodule+lung")


def test_lung_mode_without_lung_mask() -> None:
    masks = make_masks()
    masks.lung = None
    for mode in ("nodule+lung", "nodule+lung+texture"):
        with pytest.raises(InputError, match="needs a lung mask"):
            encode_conditioning(masks, mode)
    assert encode_conditioning(masks, "nodule").array[NOD1] == 1.0


def test_no_nodules_gives_nodule_free_mask() -> None:
    masks = make_masks({})
    masks.nodules = None
    assert not encode_conditioning(masks, "nodule").array.any()
    a = encode_conditioning(masks, "nodule+lung+texture").array
    assert a[LUNG] == np.float32(0.1) and a[NOD1] == np.float32(0.1)


def test_no_masks_at_all() -> None:
    with pytest.raises(InputError, match="no masks"):
        encode_conditioning(MaskSet(), "none")


def _lung_from_2() -> MaskSet:
    """Nodule 2 at (0, 7, 7) outside the lung (2..6 on each axis), no lung voxel among its neighbours."""
    masks = make_masks(nodule2_at=(0, 7, 7))
    masks.lung.array[:2] = masks.lung.array[:, :2] = masks.lung.array[:, :, :2] = 0
    return masks


def test_nodule_outside_lung_warns_with_counts() -> None:
    masks = _lung_from_2()
    masks.nodules.array[0, 0, 0:3] = 1  # 3 voxels of nodule 1 outside too
    masks.nodules.array[7, 7, 7] = 3  # outside, but touching the lung at (6, 6, 6): counts as inside
    with pytest.warns(NoduleOutsideLungWarning) as record:
        encode_conditioning(masks, "nodule+lung")
    assert len(record) == 1
    w = record[0].message
    assert w.counts == {1: 3, 2: 1}
    msg = str(w)
    assert "'Nodule 1'): 3 of 11 voxels" in msg and "'Nodule 2'): 1 of 1 voxels" in msg
    assert "unrealistic" in msg and "paper" in msg


def test_nodule_outside_lung_strict_raises() -> None:
    masks = _lung_from_2()
    with pytest.raises(InputError, match="outside the lung mask") as e:
        encode_conditioning(masks, "nodule+lung+texture", strict=True)
    assert "'Nodule 2'): 1 of 1" in str(e.value)


def test_no_warning_inside_lung_or_without_nodule_modes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_conditioning(make_masks(), "nodule+lung+texture", strict=True)
        encode_conditioning(make_masks(nodule2_at=(7, 7, 7)), "none", strict=True)
        # issue 26 item 5: a voxel that touches the lung (26-neighbourhood) is not outside it
        encode_conditioning(make_masks(nodule2_at=(7, 7, 7)), "nodule+lung+texture", strict=True)


def test_pool_single_voxel_survives() -> None:
    masks = make_masks({})
    masks.nodules.array[:] = 0
    masks.nodules.array[5, 6, 1] = 1
    cond = encode_conditioning(masks, "nodule+lung").array
    pooled = pool_to_latent(cond)
    assert pooled.shape == (1, 1, 2, 2, 2) and pooled.dtype == torch.float32
    assert pooled[0, 0, 1, 1, 0] == 1.0
    assert torch.allclose(pooled[0, 0, 0, 0, 0], torch.tensor(0.1))
    assert int((pooled == 1.0).sum()) == 1


def test_pool_input_forms() -> None:
    a = np.zeros((8, 12, 16), np.float32)
    a[7, 11, 15] = 0.4
    assert pool_to_latent(a).shape == (1, 1, 2, 3, 4)
    assert pool_to_latent(torch.from_numpy(a)[None]).shape == (1, 1, 2, 3, 4)
    assert pool_to_latent(np.stack([a, a])[:, None], factor=2).shape == (2, 1, 4, 6, 8)
    assert pool_to_latent(Volume(a))[0, 0, 1, 2, 3] == np.float32(0.4)


def test_pool_rejects_indivisible_shape() -> None:
    with pytest.raises(InputError) as e:
        pool_to_latent(np.zeros((8, 10, 8), np.float32))
    assert "(8, 10, 8)" in str(e.value) and "divisible by the latent factor 4" in str(e.value)
    with pytest.raises(InputError):
        pool_to_latent(np.zeros((2, 2, 8, 8, 8), np.float32))


def test_parse_texture_overrides() -> None:
    assert parse_texture_overrides("1=5,2=3") == {1: 5, 2: 3}
    assert parse_texture_overrides(" 1 = 5 ; 2=3  10=1 ") == {1: 5, 2: 3, 10: 1}
    assert parse_texture_overrides(["1=5", "2=3"]) == {1: 5, 2: 3}
    assert parse_texture_overrides("") == {} and parse_texture_overrides(None) == {}
    assert parse_texture_overrides("1=4,1=4") == {1: 4}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1", "malformed"),
        ("=3", "malformed"),
        ("1=", "malformed"),
        ("a=3", "label 'a' is not a positive integer"),
        ("0=3", "label '0' is not a positive integer"),
        ("1=2.5", "texture '2.5' of nodule label 1"),
        ("1=x", "texture 'x' of nodule label 1"),
        ("1=6", "texture 6 of nodule label 1"),
        ("1=0", "texture 0 of nodule label 1"),
        ("1=3,1=4", "two textures"),
    ],
)
def test_parse_texture_overrides_errors(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as e:
        parse_texture_overrides(text)
    assert fragment in str(e.value)


@pytest.mark.parametrize("with_nodules", [True, False])
def test_empty_lung_mask_is_an_error_in_every_lung_mode(with_nodules):
    masks = make_masks()
    masks.lung = Volume(np.zeros((8, 8, 8), np.uint8), **GEOMETRY)
    if not with_nodules:
        masks.nodules, masks.textures = None, {}
    for mode in ("nodule+lung", "nodule+lung+texture"):
        with pytest.raises(InputError, match="the lung mask is empty"):
            encode_conditioning(masks, mode)
    if with_nodules:  # modes without lungs do not need them
        assert encode_conditioning(masks, "nodule").array.max() == 1.0
