"""The LANDSynthesis panel's matched pair (issue 25): the contract's ``pair`` option from a nodule segment,
the twin without it loaded beside the CT (named after the nodule, SYNTHETIC, linked both ways); real MRML
and the real engine child process with the tiny test model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from slicer_fixtures import *  # noqa: F403

SHAPE = (48, 64, 64)  # k, j, i: 4 mm voxels, a 256 mm field like the tiny model's grid


def _case(mrml):
    """Lungs and two nodules far apart (left: Nodule 1, right: Nodule 2), an empty third nodule segment."""
    from LANDSynthesisLib import segments

    slicer = mrml.slicer
    m = np.diag([-4.0, -4.0, 4.0, 1.0])  # LPS-like axes in RAS
    m[:3, 3] = (128.0, 128.0, -96.0)
    ref = slicer.util.addVolumeFromArray(np.full(SHAPE, -1000, np.int16), m, name="reference CT")
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "masks")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ref)
    lung = np.zeros(SHAPE, np.uint8)
    lung[8:40, 10:54, 6:58] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(lung, seg, segments.addLungSegment(seg), ref)
    ids = []
    for i0 in (10, 50):
        nodule = np.zeros(SHAPE, np.uint8)
        nodule[22:26, 30:34, i0 : i0 + 4] = 1
        ids.append(segments.addNoduleSegment(seg, 5))
        slicer.util.updateSegmentBinaryLabelmapFromArray(nodule, seg, ids[-1], ref)
    ids.append(segments.addNoduleSegment(seg, 3))  # never painted
    return ref, seg, ids


def _matrix(node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_pair_options_go_through_the_contract(land_logic, tmp_path):
    from LANDSynthesisLib.logic import GenerationParameters, LANDInputError

    argv = GenerationParameters(pairNodule=2).engineOptions("ct.nrrd").to_argv()
    assert argv[argv.index("--pair") + 1] == "2"
    assert "--pair" not in GenerationParameters().engineOptions("ct.nrrd").to_argv()
    with pytest.raises(LANDInputError, match="--pair takes a nodule label"):
        GenerationParameters(pairNodule=0).check()
    command = land_logic.teachingSetCommand(
        {"outputDirectory": str(tmp_path / "set"), "cases": 4, "pairRate": 0.5}
    )
    out = str((tmp_path / "set").resolve())
    assert command == [sys.executable, "-m", "land", "teaching-set", "--cases", "4", "--out", out,
                       "--pair-rate", "0.5", "--progress", "json"]  # fmt: skip
    with pytest.raises(LANDInputError, match="pair rate"):
        land_logic.teachingSetCommand({"outputDirectory": str(tmp_path / "set"), "pairRate": 2})


def test_pair_nodule_is_checked_before_anything_runs(land_logic, mrml, tiny_model_dir):
    from LANDSynthesisLib import segments
    from LANDSynthesisLib.logic import LANDInputError

    ref, seg, ids = _case(mrml)
    base = {"modelDirectory": str(tiny_model_dir), "steps": 2, "device": "cpu"}
    lungs = segments.lungSegmentIds(seg)[0]
    for pair, message in ((lungs, "not a nodule segment"), (ids[2], "'Nodule 3' is empty")):
        with pytest.raises(LANDInputError, match=message):
            land_logic.start(seg, ref, {**base, "pairSegmentId": pair})
    with pytest.raises(LANDInputError, match="needs nodules"):
        land_logic.start(None, None, {**base, "mode": "none", "pairNodule": 1})
    assert not land_logic.isRunning() and list(Path(land_logic.tempRoot).iterdir()) == []


def test_generate_loads_the_matched_twin_beside_the_ct(land_logic, mrml, tiny_model_dir):
    slicer = mrml.slicer
    ref, seg, ids = _case(mrml)
    seg.GetSegmentation().GetSegment(ids[1]).SetName("Nodule right")
    params = {"modelDirectory": str(tiny_model_dir), "steps": 2, "seed": 7, "device": "cpu",
              "pairSegmentId": ids[1], "replacePrevious": True}  # fmt: skip
    node = land_logic.generate(seg, ref, params)
    job = land_logic.job
    assert job.command[job.command.index("--pair") + 1] == "2"  # the segment's engine label
    twin = job.pairNode
    assert twin is not None and twin.GetName() == f"{node.GetName()} without Nodule right"
    assert twin.GetAttribute("LAND.Synthetic") == "true" and twin.GetDescription().startswith("SYNTHETIC")
    assert "without nodule 2 (matched pair)" in twin.GetDescription()
    assert (
        twin.GetAttribute("LAND.PairOf") == node.GetID()
        and node.GetAttribute("LAND.MatchedPair") == twin.GetID()
    )
    assert (
        twin.GetAttribute("LAND.PairRemovedNodule") == "2"
        and twin.GetAttribute("LAND.PairNoduleName") == "Nodule right"
    )
    a, b = slicer.util.arrayFromVolume(node), slicer.util.arrayFromVolume(twin)
    assert a.shape == b.shape == SHAPE  # both in the reference geometry
    np.testing.assert_allclose(_matrix(twin), _matrix(node), atol=1e-9)
    diff = np.abs(a.astype(np.int32) - b)
    assert diff[:, :, 40:].max() > 0  # around the right nodule: drawn anew
    assert diff[:, :, :16].max() == 0  # 136 mm and more from it: identical
    parameterNode = land_logic.getParameterNode()
    assert parameterNode.GetNodeReference("LastPairResult") is twin
    assert job.resultText() == f"{node.GetName()} and {twin.GetName()}"
    assert list(Path(land_logic.tempRoot).iterdir()) == []
    # "Replace previous result" replaces the CT and its twin; a result without a pair has no twin
    again = land_logic.generate(seg, ref, {**params, "pairSegmentId": None, "seed": 8})
    assert mrml.scene.GetNodeByID(node.GetID()) is None and mrml.scene.GetNodeByID(twin.GetID()) is None
    assert land_logic.job.pairNode is None and parameterNode.GetNodeReference("LastPairResult") is None
    assert "--pair" not in land_logic.job.command and again.GetAttribute("LAND.MatchedPair") is None
