"""Tests of land.imaging.io: volumes, masks (.seg.nrrd and label images), model grid resampling, synthetic
output."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from land.conditioning.encode import encode_conditioning
from land.conditioning.model_grid import FieldOfViewWarning, from_model_grid, to_model_grid
from land.imaging import io as land_io
from land.imaging.io import (
    SegmentationWarning,
    read_masks,
    read_provenance,
    read_volume,
    write_seg_nrrd,
    write_volume,
)
from land.imaging.maskset import MaskSet, NoduleOutsideLungWarning
from land.imaging.volume import Volume
from land.interface.errors import InputError


def rotation(deg_z: float, deg_x: float) -> tuple[float, ...]:
    cz, sz = math.cos(math.radians(deg_z)), math.sin(math.radians(deg_z))
    cx, sx = math.cos(math.radians(deg_x)), math.sin(math.radians(deg_x))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return tuple((rz @ rx).ravel().tolist())


GEOMETRY = dict(spacing=(0.7, 0.9, 2.5), origin=(-12.3, 45.6, -78.9), direction=rotation(30, 20))
SHAPE = (12, 20, 16)  # z, y, x


def make_masks() -> MaskSet:
    lung = np.zeros(SHAPE, np.uint8)
    lung[2:10, 3:17, 2:14] = 1
    nod = np.zeros(SHAPE, np.uint8)
    nod[4:6, 6:9, 4:7] = 1
    nod[7, 12:14, 9:11] = 2
    return MaskSet(
        lung=Volume(lung, **GEOMETRY),
        nodules=Volume(nod, **GEOMETRY),
        textures={1: 2, 2: 4},
        names={1: "Nodule A", 2: "Ground glass"},
    )


def physical(vol: Volume, index_xyz: np.ndarray) -> np.ndarray:
    """Physical point(s) of x, y, z voxel index (shape (3,) or (3, N))."""
    index_xyz = np.asarray(index_xyz, float)
    col = (3,) + (1,) * (index_xyz.ndim - 1)
    d = np.asarray(vol.direction).reshape(3, 3)
    return np.asarray(vol.origin).reshape(col) + d @ (np.asarray(vol.spacing).reshape(col) * index_xyz)


def centroid_mm(vol: Volume, label: int) -> np.ndarray:
    return physical(vol, np.argwhere(vol.array == label).mean(axis=0)[::-1])


# --------------------------------------------------------------------------------------------- volumes


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.nrrd", "ct.nhdr", "ct.mha"])
def test_read_volume_formats(tmp_path: Path, name: str) -> None:
    vol = Volume(np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE), **GEOMETRY)
    sitk.WriteImage(vol.to_sitk(), str(tmp_path / name))
    back = read_volume(tmp_path / name)
    assert back.same_geometry(vol)
    np.testing.assert_array_equal(back.array, vol.array)


def test_read_volume_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found: .*missing.nrrd") as e:
        read_volume(tmp_path / "missing.nrrd")
    assert e.value.exit_code == 2
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkUInt8), str(tmp_path / "slice.nrrd"))
    with pytest.raises(InputError, match="2D image .* not a 3D volume"):
        read_volume(tmp_path / "slice.nrrd")
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkUInt8), str(tmp_path / "series.nii.gz"))
    with pytest.raises(InputError, match="4D image"):
        read_volume(tmp_path / "series.nii.gz")
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkVectorUInt8, 3), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="3 values per voxel"):
        read_volume(tmp_path / "rgb.nrrd")
    (tmp_path / "junk.nrrd").write_text("this is not an image", encoding="utf-8")
    with pytest.raises(InputError, match="could not read .*junk.nrrd"):
        read_volume(tmp_path / "junk.nrrd")
    (tmp_path / "ct.png").write_bytes(b"")
    with pytest.raises(InputError, match="unsupported file type"):
        read_volume(tmp_path / "ct.png")


def test_read_volume_squeezes_singleton_4th_dimension(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image([4, 5, 6, 1], sitk.sitkInt16), str(tmp_path / "one.nii.gz"))
    assert read_volume(tmp_path / "one.nii.gz").array.shape == (6, 5, 4)


# ------------------------------------------------------------------------------------------- seg.nrrd


def test_seg_nrrd_round_trip(tmp_path: Path) -> None:
    masks = make_masks()
    path = tmp_path / "masks.seg.nrrd"
    write_seg_nrrd(path, masks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.seg.nrrd"]
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("Segment0_Name") == "Lungs"
    assert image.GetMetaData("Segment1_Name") == "Nodule A"
    assert image.GetMetaData("Segment2_Tags").endswith("LAND.Texture:4|")
    assert image.GetMetaData("Segment0_Extent") == "0 15 0 19 0 11"
    back = read_masks(path)
    assert back.names == {1: "Nodule A", 2: "Ground glass"}
    assert back.textures == {1: 2, 2: 4}
    assert back.lung.same_geometry(masks.lung) and back.nodules.same_geometry(masks.nodules)
    np.testing.assert_array_equal(back.nodules.array, masks.nodules.array)
    # the nodules overwrite the lung in the single layer; the reader puts them back into the lung
    assert (sitk.GetArrayFromImage(image)[masks.nodules.array > 0] > 1).all()
    np.testing.assert_array_equal(back.lung.array, masks.lung.array)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_conditioning(back, "nodule+lung+texture", strict=True)


def test_seg_nrrd_overrides_and_noncontiguous_labels(tmp_path: Path) -> None:
    masks = make_masks()
    masks.nodules.array[masks.nodules.array == 2] = 5
    masks.textures, masks.names = {1: 2}, {}
    write_seg_nrrd(tmp_path / "m.seg.nrrd", masks)
    back = read_masks(tmp_path / "m.seg.nrrd", texture_overrides="2=3")
    assert back.names == {1: "Nodule 1", 2: "Nodule 5"}  # renumbered 1..K in segment order
    assert back.textures == {1: 2, 2: 3}
    assert read_masks(tmp_path / "m.seg.nrrd", texture_overrides={1: 5}).textures == {1: 5}
    with pytest.raises(InputError, match=r"label\(s\) 3, which the masks do not have.*'Nodule 5'"):
        read_masks(tmp_path / "m.seg.nrrd", texture_overrides="3=1")
    with pytest.raises(InputError, match="only the segmentation"):
        read_masks(tmp_path / "m.seg.nrrd", tmp_path / "m.seg.nrrd")


def _edit_segment_metadata(path: Path, key: str, value: str) -> None:
    image = sitk.ReadImage(str(path))
    image.SetMetaData(key, value)
    sitk.WriteImage(image, str(path), True)


def test_seg_nrrd_invalid_texture_tag(tmp_path: Path) -> None:
    path = tmp_path / "m.seg.nrrd"
    write_seg_nrrd(path, make_masks())
    _edit_segment_metadata(path, "Segment1_Tags", "Segmentation.Status:inprogress|LAND.Texture:2.5|")
    with pytest.raises(InputError) as e:
        read_masks(path)
    assert "'2.5'" in str(e.value) and "'Nodule A'" in str(e.value) and "1..5" in str(e.value)
    assert read_masks(path, texture_overrides="1=3").textures == {1: 3, 2: 4}  # the override wins


def test_seg_nrrd_lung_segment_names(tmp_path: Path) -> None:
    path = tmp_path / "m.seg.nrrd"
    write_seg_nrrd(path, make_masks())
    _edit_segment_metadata(path, "Segment0_Name", "lung left")
    _edit_segment_metadata(path, "Segment1_Name", "Lung nodule")
    back = read_masks(path)
    assert back.lung is not None and back.names == {1: "Lung nodule", 2: "Ground glass"}


def test_seg_nrrd_without_lung(tmp_path: Path) -> None:
    masks = make_masks()
    masks.lung = None
    write_seg_nrrd(tmp_path / "n.seg.nrrd", masks)
    back = read_masks(tmp_path / "n.seg.nrrd")
    assert back.lung is None and back.labels() == [1, 2]
    assert back.nodules.same_geometry(masks.nodules)


def test_slicerio_reads_our_segmentation(tmp_path: Path) -> None:
    slicerio = pytest.importorskip("slicerio")
    path = tmp_path / "m.seg.nrrd"
    write_seg_nrrd(path, make_masks())
    seg = slicerio.read_segmentation(str(path))
    assert slicerio.segment_names(seg) == ["Lungs", "Nodule A", "Ground glass"]
    nodule = slicerio.segment_from_name(seg, "Ground glass")
    assert nodule["tags"] == {"LAND.Texture": "4"}
    assert nodule["terminology"]["type"][2] == "Nodule"
    assert slicerio.segment_from_name(seg, "Lungs")["terminology"]["type"][2] == "Lung"
    # slicerio's voxels are i, j, k (x, y, z) ordered
    mask = slicerio.segment_mask(seg, "Nodule A")
    np.testing.assert_array_equal(mask.transpose(2, 1, 0), make_masks().nodules.array == 1)
    d = np.asarray(GEOMETRY["direction"]).reshape(3, 3) * np.asarray(GEOMETRY["spacing"])
    np.testing.assert_allclose(seg["ijkToLPS"][:3, :3], d, atol=1e-6)
    np.testing.assert_allclose(seg["ijkToLPS"][:3, 3], GEOMETRY["origin"], atol=1e-6)


@pytest.mark.parametrize("overlap", [False, True])
def test_read_segmentation_written_by_slicerio(tmp_path: Path, overlap: bool) -> None:
    slicerio = pytest.importorskip("slicerio")
    masks = make_masks()
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(GEOMETRY["direction"]).reshape(3, 3) * np.asarray(GEOMETRY["spacing"])
    ijk_to_lps[:3, 3] = GEOMETRY["origin"]
    seg = slicerio.create_segmentation(SHAPE[::-1], ijk_to_lps)
    lung = masks.lung.array.astype(bool)
    nod = masks.nodules.array
    if not overlap:  # Slicer's default: the nodules are cut out of the lung segment
        lung = lung & (nod == 0)
    to_ijk = (2, 1, 0)
    slicerio.add_segment(seg, lung.transpose(to_ijk), {"id": "S1", "name": "Lungs"})
    slicerio.add_segment(
        seg, (nod == 1).transpose(to_ijk), {"id": "S2", "name": "A", "tags": {"LAND.Texture": "3"}}
    )
    slicerio.add_segment(seg, np.zeros(SHAPE[::-1], bool), {"id": "S3", "name": "empty"})
    slicerio.add_segment(
        seg, (nod == 2).transpose(to_ijk), {"id": "S4", "name": "B", "tags": {"LAND.Texture": "1"}}
    )
    assert seg["voxels"].ndim == (4 if overlap else 3)
    slicerio.write_segmentation(str(tmp_path / "s.seg.nrrd"), seg)
    with pytest.warns(SegmentationWarning, match="'empty' .* is empty"):
        back = read_masks(tmp_path / "s.seg.nrrd")
    assert back.names == {1: "A", 2: "B"} and back.textures == {1: 3, 2: 1}
    np.testing.assert_array_equal(back.nodules.array, nod)
    np.testing.assert_array_equal(back.lung.array, masks.lung.array)
    assert back.lung.same_geometry(masks.lung)


def test_juxtapleural_nodule_cut_from_lung_still_warns(tmp_path: Path) -> None:
    masks = make_masks()
    masks.nodules.array[masks.nodules.array == 2] = 0
    masks.nodules.array[5, 10, 0:3] = 2  # pokes out of the lung through its x=2 face
    write_seg_nrrd(tmp_path / "m.seg.nrrd", masks)
    back = read_masks(tmp_path / "m.seg.nrrd")
    # its voxels at x = 0, 1 lie outside the lung (x 2..13), the one at x = 2 was lung before the nodule was
    # painted over it in the one shared layer; the lung under nodule A is restored too. The voxel at x = 1
    # touches the lung (partial-volume tolerance of one voxel): only the one at x = 0 is outside.
    with pytest.warns(NoduleOutsideLungWarning, match="voxels touching the lung count as inside") as record:
        encode_conditioning(back, "nodule+lung")
    assert record[0].message.counts == {2: 1}


def _ball(shape, centre, radius) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


@pytest.mark.parametrize("layout", ["one layer", "separate images"])
def test_nodule_at_the_lung_edge_counts_as_inside_whatever_the_layout(tmp_path: Path, layout: str) -> None:
    """Issue 15 item 8, issue 26 item 5: a nodule painted on the lung against its edge is inside it, also when
    Slicer's one shared layer cut it out of the lung segment (nodule 3: 13 voxels against the convex edge,
    reported as "1 of 13 voxels" outside before voxels touching the lung counted as inside); the part of a
    nodule that juts out further than one voxel is still reported."""
    shape = (40, 40, 40)
    lung = _ball(shape, (20, 20, 20), 15)
    nodules = np.zeros(shape, np.uint8)
    nodules[_ball(shape, (20, 20, 31.5), 3) & lung] = 1  # inside, touching the lung's edge at x = 35
    nodules[_ball(shape, (20, 34.5, 20), 3)] = 2  # centred on the edge: about half of it juts out
    nodules[_ball(shape, (15.33, 17.91, 33.98), 1.84) & lung] = 3  # small, painted against the edge
    assert np.count_nonzero(nodules == 3) == 13
    geo = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))
    masks = MaskSet(Volume(lung.astype(np.uint8), **geo), Volume(nodules, **geo), {1: 5, 2: 3, 3: 4})
    if layout == "one layer":
        write_seg_nrrd(tmp_path / "m.seg.nrrd", masks)  # nodules overwrite the lung, as in Slicer
        layer = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.seg.nrrd")))
        assert not (layer == 1)[nodules != 0].any()
        masks = read_masks(tmp_path / "m.seg.nrrd")
    with pytest.warns(NoduleOutsideLungWarning) as record:
        encode_conditioning(masks, "nodule+lung+texture")
    counts = record[0].message.counts
    # outside by the rule (not lung, no lung voxel among the 26 neighbours), judged on the true lung
    touching = ndimage.binary_dilation(lung, np.ones((3, 3, 3), bool))
    by_rule = int(np.count_nonzero((nodules == 2) & ~touching))
    not_lung = int(np.count_nonzero((nodules == 2) & ~lung))
    assert set(counts) == {2} and by_rule > 10, (counts, by_rule)
    if layout == "separate images":  # the lung is known: the rule's count exactly
        assert counts[2] == by_rule
    else:  # the lung under the nodule is estimated (land.interface.masks.lung_under), then the same rule
        assert by_rule <= counts[2] < not_lung, (counts, by_rule, not_lung)
    assert int(np.count_nonzero(nodules == 2)) > 1.6 * counts[2]


@pytest.mark.parametrize("layout", ["one layer", "separate images"])
def test_small_nodule_against_the_lung_edge_passes_strict_and_one_outside_does_not(
    tmp_path: Path, layout: str
) -> None:
    """Issue 26 item 5: a 13-voxel nodule painted in the lung against its convex edge passes ``--strict``
    (it was "1 of 13 voxels outside" in one layer); the same nodule moved 3 voxels out of the lung, where
    none of its voxels touches the lung, is still refused."""
    shape = (40, 40, 40)
    lung = _ball(shape, (20, 20, 20), 15)
    geo = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))
    inside = _ball(shape, (15.33, 17.91, 33.98), 1.84) & lung
    outside = np.roll(inside, 3, axis=2)
    for name, nodule in (("inside", inside), ("outside", outside)):
        masks = MaskSet(Volume(lung.astype(np.uint8), **geo), Volume(nodule.astype(np.uint8), **geo), {1: 4})
        if layout == "one layer":
            write_seg_nrrd(tmp_path / f"{name}.seg.nrrd", masks)
            masks = read_masks(tmp_path / f"{name}.seg.nrrd")
        if name == "inside":
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                encode_conditioning(masks, "nodule+lung+texture", strict=True)
        else:
            with pytest.raises(InputError, match=r"label 1\b[^:]*: 13 of 13 voxels.*strict"):
                encode_conditioning(masks, "nodule+lung+texture", strict=True)


def test_segment_hidden_by_another_layer_names_both(tmp_path: Path) -> None:
    """Issue 15 item 9: nodule 'A' wholly covered by nodule 'B' in another layer is named as hidden."""
    slicerio = pytest.importorskip("slicerio")
    masks = make_masks()
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(GEOMETRY["direction"]).reshape(3, 3) * np.asarray(GEOMETRY["spacing"])
    seg = slicerio.create_segmentation(SHAPE[::-1], ijk_to_lps)
    nod = masks.nodules.array.transpose(2, 1, 0)
    slicerio.add_segment(seg, masks.lung.array.transpose(2, 1, 0) != 0, {"id": "S1", "name": "Lungs"})
    slicerio.add_segment(seg, nod == 1, {"id": "S2", "name": "A", "tags": {"LAND.Texture": "3"}})
    slicerio.add_segment(seg, nod != 0, {"id": "S3", "name": "B", "tags": {"LAND.Texture": "5"}})
    slicerio.write_segmentation(str(tmp_path / "s.seg.nrrd"), seg)
    hidden = "segment 'A' .* is hidden: every voxel of it is also in segment 'B'"
    with pytest.raises(InputError, match=hidden):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_masks(tmp_path / "s.seg.nrrd")


def test_segments_sharing_a_label_value_in_one_layer_are_named_as_such(tmp_path: Path) -> None:
    """Issue 26 item 14: two segments with the same label value in the same layer are the same voxels; the
    message says so and how to fix it (it said "hidden ... (another layer)"). Two lung segments may share
    a value (both are lung)."""
    write_seg_nrrd(tmp_path / "ok.seg.nrrd", make_masks())
    image = sitk.ReadImage(str(tmp_path / "ok.seg.nrrd"))
    assert image.GetMetaData("Segment1_LabelValue") == "2" and image.GetMetaData("Segment2_LabelValue") == "3"
    image.SetMetaData("Segment2_LabelValue", "2")
    sitk.WriteImage(image, str(tmp_path / "dup.seg.nrrd"), True)
    pattern = (
        r"segments 'Nodule A' and 'Ground glass' of .*dup.seg.nrrd share label value 2 in layer 0.*"
        r"fix: correct the Segment<N>_LabelValue fields"
    )
    with pytest.raises(InputError, match=pattern) as e:
        read_masks(tmp_path / "dup.seg.nrrd")
    assert "another layer" not in str(e.value) and "hidden" not in str(e.value)
    image.SetMetaData("Segment2_LabelValue", "3")
    image.SetMetaData("Segment1_LabelValue", "1")
    image.SetMetaData("Segment1_Name", "Lung right")
    sitk.WriteImage(image, str(tmp_path / "lungs.seg.nrrd"), True)
    back = read_masks(tmp_path / "lungs.seg.nrrd")
    assert back.names == {1: "Ground glass"}


# ------------------------------------------------------------------------------------- label images


def test_lung_and_label_images(tmp_path: Path) -> None:
    masks = make_masks()
    lung = masks.lung.with_array(masks.lung.array * 255)
    sitk.WriteImage(lung.to_sitk(), str(tmp_path / "lung.nii.gz"))
    sitk.WriteImage(
        masks.nodules.with_array(masks.nodules.array.astype(np.float32)).to_sitk(), str(tmp_path / "n.nrrd")
    )
    back = read_masks(tmp_path / "lung.nii.gz", tmp_path / "n.nrrd", texture_overrides=["1=4", "2=1"])
    assert back.lung.same_geometry(masks.lung)
    assert set(np.unique(back.lung.array).tolist()) == {0, 1}
    assert np.issubdtype(back.nodules.array.dtype, np.integer)
    np.testing.assert_array_equal(back.nodules.array, masks.nodules.array)
    assert back.names == {1: "Nodule 1", 2: "Nodule 2"} and back.textures == {1: 4, 2: 1}
    only_nodules = read_masks(None, tmp_path / "n.nrrd")
    assert only_nodules.lung is None and only_nodules.textures == {}
    only_lung = read_masks(tmp_path / "lung.nii.gz")
    assert only_lung.nodules is None and only_lung.labels() == []


def test_label_image_errors(tmp_path: Path) -> None:
    masks = make_masks()
    sitk.WriteImage(masks.lung.to_sitk(), str(tmp_path / "lung.nrrd"))
    shifted = Volume(masks.nodules.array, GEOMETRY["spacing"], (0.0, 0.0, 0.0), GEOMETRY["direction"])
    sitk.WriteImage(shifted.to_sitk(), str(tmp_path / "shifted.nrrd"))
    with pytest.raises(InputError, match="different geometry"):
        read_masks(tmp_path / "lung.nrrd", tmp_path / "shifted.nrrd")
    frac = masks.nodules.with_array(masks.nodules.array * np.float32(0.5))
    sitk.WriteImage(frac.to_sitk(), str(tmp_path / "frac.nrrd"))
    with pytest.raises(InputError, match="non-integer values"):
        read_masks(tmp_path / "lung.nrrd", tmp_path / "frac.nrrd")
    neg = masks.nodules.with_array(masks.nodules.array.astype(np.int16) * -1)
    sitk.WriteImage(neg.to_sitk(), str(tmp_path / "neg.nrrd"))
    with pytest.raises(InputError, match="negative values"):
        read_masks(tmp_path / "lung.nrrd", tmp_path / "neg.nrrd")
    with pytest.raises(InputError, match="not found: .*nodules.nrrd"):
        read_masks(tmp_path / "lung.nrrd", tmp_path / "nodules.nrrd")
    with pytest.raises(InputError, match="no masks"):
        read_masks(None)


# ----------------------------------------------------------------------------------------- model grid


def grid_axes_error(grid: Volume, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| along the grid's axes, in grid voxels."""
    d = np.asarray(grid.direction).reshape(3, 3)
    return np.abs(np.linalg.solve(d, a - b)) / np.asarray(grid.spacing)


def test_to_model_grid_keeps_physical_alignment() -> None:
    masks = make_masks()
    size, spacing = (24, 20, 16), (1.5, 1.5, 1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, grid = to_model_grid(masks, size, spacing)
    assert grid.size == size and grid.array.dtype == np.uint8 and not grid.array.any()
    assert np.allclose(grid.spacing, spacing) and np.allclose(grid.direction, GEOMETRY["direction"])
    assert out.lung.same_geometry(grid) and out.nodules.same_geometry(grid)
    assert out.textures == masks.textures and out.names == masks.names
    assert out.labels() == [1, 2]
    for label in (1, 2):
        err = grid_axes_error(grid, centroid_mm(out.nodules, label), centroid_mm(masks.nodules, label))
        assert (err <= 0.5 + 1e-6).all(), (label, err)
    # lung centred: its bounding-box centre (input) is the grid centre, within half a model voxel (the
    # grid's voxels sit on the spacing lattice from the input's origin, as in prepared training data)
    idx = np.argwhere(masks.lung.array > 0)
    lung_centre = physical(masks.lung, ((idx.min(0) + idx.max(0)) / 2)[::-1])
    grid_centre = physical(grid, (np.asarray(size) - 1) / 2)
    assert (grid_axes_error(grid, lung_centre, grid_centre) <= 0.5 + 1e-6).all()
    # the lung volume is about preserved
    vol_in = masks.lung.array.sum() * np.prod(GEOMETRY["spacing"])
    vol_out = out.lung.array.sum() * np.prod(spacing)
    assert abs(vol_out / vol_in - 1) < 0.25


def test_to_model_grid_centres_image_without_lung() -> None:
    masks = make_masks()
    masks.lung = None
    out, grid = to_model_grid(masks, (8, 8, 8), (2.0, 2.0, 2.0))
    image_centre = physical(masks.nodules, (np.asarray(masks.nodules.size) - 1) / 2)
    assert (grid_axes_error(grid, physical(grid, np.full(3, 3.5)), image_centre) <= 0.5 + 1e-6).all()
    assert out.lung is None


def test_to_model_grid_warns_when_lung_is_cut() -> None:
    masks = make_masks()
    with pytest.warns(FieldOfViewWarning) as record:
        out, _ = to_model_grid(masks, (4, 4, 4), (1.0, 1.0, 1.0))
    msg = str(record[0].message)
    assert "% of the lung mask" in msg and "cut off" in msg
    frac = float(msg.split("%")[0]) / 100
    lung = masks.lung.array > 0
    assert 0.9 < frac < 1.0
    assert out.lung.array.all() and lung.sum()


def test_to_model_grid_drops_nodule_outside_and_keeps_tiny_nodule() -> None:
    masks = make_masks()
    masks.nodules.array[masks.nodules.array == 2] = 0
    masks.nodules.array[0, 0, 0] = 2  # far outside a small grid
    masks.nodules.array[6, 9, 7] = 3  # one 0.7 x 0.9 x 2.5 mm voxel: smaller than a 3 mm model voxel
    masks.textures = {1: 2, 2: 4, 3: 5}
    with pytest.warns(FieldOfViewWarning, match="'Ground glass'.* is dropped"):
        out, grid = to_model_grid(masks, (6, 6, 6), (3.0, 3.0, 3.0))
    assert out.labels() == [1, 3] and out.textures == {1: 2, 3: 5} and 2 not in out.names
    assert (out.nodules.array == 3).sum() == 1
    err = grid_axes_error(grid, centroid_mm(out.nodules, 3), centroid_mm(masks.nodules, 3))
    assert (err <= 0.5 + 1e-6).all()


def test_training_and_inference_place_the_grid_by_one_rule() -> None:
    """prepare-lidc's crop and generate's model grid are the same grid for the same lungs; on a scan already
    at the model spacing the grid's voxels are the scan's own (a crop, no interpolation)."""
    from land.data.prepare import crop_grid

    masks = make_masks()
    lung = masks.lung.array != 0
    _, inference = to_model_grid(masks, (16, 16, 16), (1.0, 1.0, 1.0))
    training, start = crop_grid(masks.lung, lung, size=16, spacing=1.0)
    assert inference.same_geometry(training)
    axes = np.asarray(masks.lung.direction).reshape(3, 3)
    lattice = np.asarray(masks.lung.origin) + axes @ np.asarray(start, float)
    np.testing.assert_allclose(training.origin, lattice, atol=1e-9)
    ref = Volume(np.zeros((30, 40, 50), np.uint8), (1.0, 1.0, 1.0), (-7.25, 3.5, 11.0), GEOMETRY["direction"])
    ref.array[5:20, 8:30, 10:41] = 1
    _, at_spacing = to_model_grid(MaskSet(lung=ref), (24, 24, 24), (1.0, 1.0, 1.0))
    index = np.linalg.solve(axes, np.subtract(at_spacing.origin, ref.origin))  # mm = voxels at 1 mm
    np.testing.assert_allclose(index, np.round(index), atol=1e-9)  # the first grid voxel is a scan voxel


def test_to_model_grid_rejects_bad_grid() -> None:
    with pytest.raises(InputError, match="three positive integers"):
        to_model_grid(make_masks(), (8, 8, 0), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="three positive numbers"):
        to_model_grid(make_masks(), (8, 8, 8), (1.0, -1.0, 1.0))


def test_from_model_grid_puts_values_back() -> None:
    masks = make_masks()
    with pytest.warns(FieldOfViewWarning):  # a small grid, so that part of the reference lies outside
        _, grid = to_model_grid(masks, (16, 16, 8), (1.0, 1.0, 2.0))
    # a CT that is a linear function of position: linear interpolation reproduces it exactly
    gz, gy, gx = np.indices(grid.array.shape)
    pts = physical(grid, np.stack([gx, gy, gz], -1).reshape(-1, 3).T).T
    coeff = np.array([3.0, -2.0, 5.0])
    ct = Volume.like(grid, (pts @ coeff).reshape(grid.array.shape).astype(np.float32))
    back = from_model_grid(ct, masks.lung)
    assert back.same_geometry(masks.lung) and back.array.dtype == np.float32
    rz, ry, rx = np.indices(SHAPE)
    ref_pts = physical(masks.lung, np.stack([rx, ry, rz], -1).reshape(-1, 3).T).T
    expected = (ref_pts @ coeff).reshape(SHAPE)
    d = np.asarray(grid.direction).reshape(3, 3)
    cont = (np.linalg.solve(d, (ref_pts - np.asarray(grid.origin)).T).T / np.asarray(grid.spacing)).reshape(
        (*SHAPE, 3)
    )
    inside = ((cont >= 0) & (cont <= np.asarray(grid.size) - 1)).all(-1)
    # (a margin: reference voxels can fall exactly on the field of view's edge, where rounding decides)
    outside = ((cont < -0.5 - 1e-6) | (cont > np.asarray(grid.size) - 0.5 + 1e-6)).any(-1)
    assert inside.sum() > 100 and outside.sum() > 100
    np.testing.assert_allclose(back.array[inside], expected[inside], atol=1e-2)
    assert (back.array[outside] == -1000).all()
    as_int = from_model_grid(ct.with_array(ct.array.astype(np.int16)), masks.lung, default_hu=-1024)
    assert as_int.array.dtype == np.int16 and (as_int.array[outside] == -1024).all()


# ---------------------------------------------------------------------------------- synthetic outputs

PROVENANCE = {
    "model_id": "land-paper-v1",
    "seed": 42,
    "sampler": "ddim",
    "steps": 50,
    "textures": {"1": 3},
    "mode": "nodule+lung+texture",
}


def test_write_nifti_descrip_and_sidecar(tmp_path: Path) -> None:
    ct = Volume(np.full(SHAPE, -500, np.int16), **GEOMETRY)
    path = tmp_path / "ct.nii.gz"
    write_volume(path, ct, PROVENANCE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.json", "ct.nii.gz"]
    image = sitk.ReadImage(str(path))
    assert image.GetMetaData("descrip") == "SYNTHETIC CT - LAND land-paper-v1 seed 42"
    back = Volume.from_sitk(image)
    assert back.same_geometry(ct) and (back.array == -500).all()
    record = read_provenance(path)
    assert record == json.loads((tmp_path / "ct.json").read_text(encoding="utf-8"))
    assert {k: record[k] for k in PROVENANCE} == PROVENANCE
    assert record["synthetic"] == "true" and record["land_version"] and record["created"]


def test_write_nrrd_fields(tmp_path: Path) -> None:
    ct = Volume(np.full(SHAPE, 7, np.int16), **GEOMETRY)
    path = tmp_path / "ct.nrrd"
    write_volume(path, ct, {**PROVENANCE, "description": "SYNTHETIC CT - custom"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nrrd"]
    header = path.read_bytes().split(b"\n\n")[0].decode()
    assert "content: SYNTHETIC CT - custom" in header
    assert "LAND.Synthetic:=true" in header and "LAND.ModelId:=land-paper-v1" in header
    assert "LAND.Seed:=42" in header and 'LAND.Textures:={"1": 3}' in header
    image = sitk.ReadImage(str(path))
    assert Volume.from_sitk(image).same_geometry(ct)
    record = read_provenance(path)
    assert {k: record[k] for k in PROVENANCE} == PROVENANCE
    assert record["description"] == "SYNTHETIC CT - custom"


def test_provenance_from_volume_metadata_and_description_fix(tmp_path: Path) -> None:
    ct = Volume(np.zeros((4, 4, 4), np.int16), metadata={"model": "m1", "seed": "3", "description": "a CT"})
    write_volume(tmp_path / "a.nii", ct)
    assert sitk.ReadImage(str(tmp_path / "a.nii")).GetMetaData("descrip") == "SYNTHETIC - a CT"
    ct.metadata.pop("description")
    write_volume(tmp_path / "b.nrrd", ct)
    assert read_provenance(tmp_path / "b.nrrd")["description"] == "SYNTHETIC CT - LAND m1 seed 3"
    long = {"model_id": "x" * 120, "seed": 1}
    write_volume(tmp_path / "c.nii", ct, long)
    descrip = sitk.ReadImage(str(tmp_path / "c.nii")).GetMetaData("descrip")
    assert descrip.startswith("SYNTHETIC CT - LAND x") and len(descrip) <= 79


def test_read_provenance_without_land_fields(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(tmp_path / "plain.nrrd"))
    assert read_provenance(tmp_path / "plain.nrrd") == {}
    with pytest.raises(InputError, match="not found"):
        read_provenance(tmp_path / "none.nrrd")


def test_write_errors_leave_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ct = Volume(np.zeros((4, 4, 4), np.int16))
    with pytest.raises(InputError, match="unsupported file type"):
        write_volume(tmp_path / "ct.mha", ct, PROVENANCE)
    with pytest.raises(InputError, match="does not exist"):
        write_volume(tmp_path / "no" / "ct.nrrd", ct, PROVENANCE)
    (tmp_path / "ct.nii.gz").write_bytes(b"old")

    def failing_write(image: sitk.Image, name: str, *args: object) -> None:
        Path(name).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(land_io.sitk, "WriteImage", failing_write)
    for name in ("ct.nii.gz", "ct.nrrd", "m.seg.nrrd"):
        with pytest.raises(InputError, match="could not write .*disk full"):
            if name.startswith("m."):
                write_seg_nrrd(tmp_path / name, make_masks())
            else:
                write_volume(tmp_path / name, ct, PROVENANCE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
    assert (tmp_path / "ct.nii.gz").read_bytes() == b"old"
