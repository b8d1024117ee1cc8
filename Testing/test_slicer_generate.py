"""Generate through the engine child process (``python -m land generate --progress json``), real MRML.

Small untrained model (``land init-model --config small``, 2 steps): full run, cancel mid-run, failing child.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from slicer_fixtures import *  # noqa: F403
from slicer_fixtures import geometry_matrix

psutil = pytest.importorskip("psutil")

M_REF = geometry_matrix(spacing=(2.2, 1.8, 4.0), origin=(-31.7, 12.9, -50.3), angle_deg=20.0, flip=True)
SHAPE = (24, 40, 36)  # k, j, i


def _case(mrml, textures=(3,)):
    """A reference volume with an awkward geometry and a segmentation: lungs + nodules with textures."""
    from LANDSynthesisLib import segments

    slicer = mrml.slicer
    ref = slicer.util.addVolumeFromArray(np.full(SHAPE, -1000, np.int16), M_REF, name="reference CT")
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "masks")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ref)
    lung = np.zeros(SHAPE, np.uint8)
    lung[4:20, 6:34, 4:32] = 1
    lung_id = segments.addLungSegment(seg)
    slicer.util.updateSegmentBinaryLabelmapFromArray(lung, seg, lung_id, ref)
    for n, texture in enumerate(textures):
        nodule = np.zeros(SHAPE, np.uint8)
        nodule[10:13, 12 + 8 * n : 16 + 8 * n, 12:16] = 1
        sid = segments.addNoduleSegment(seg, texture)
        slicer.util.updateSegmentBinaryLabelmapFromArray(nodule, seg, sid, ref)
    return ref, seg


def _matrix(node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _alive(pids):
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_generate_full(land_logic, mrml, small_model):
    """A complete Generate: progress events, a volume in the reference geometry, SYNTHETIC provenance."""
    ref, seg = _case(mrml, textures=(3, 5))
    events = []
    t0 = time.monotonic()
    node = land_logic.generate(
        seg,
        ref,
        {"modelDirectory": str(small_model), "steps": 2, "seed": 11, "sampler": "ddim", "device": "cpu"},
        onProgress=events.append,
    )
    job = land_logic.job
    elapsed = time.monotonic() - t0
    assert job.command[job.command.index("--texture") + 1] == "1=3,2=5"
    assert node is not None and mrml.scene.GetNodeByID(node.GetID()) is node
    assert node.GetName() == "SYNTHETIC CT land-small-untrained seed 11"
    assert node.GetImageData().GetDimensions() == tuple(reversed(SHAPE))
    np.testing.assert_allclose(_matrix(node), _matrix(ref), atol=1e-6)  # --match-input: same geometry
    assert node.GetAttribute("LAND.Synthetic") == "true" and "SYNTHETIC" in node.GetDescription()
    assert node.GetAttribute("LAND.Seed") == "11" and node.GetAttribute("LAND.Sampler") == "ddim"
    assert node.GetAttribute("LAND.Textures") == "1=3,2=5"
    assert node.GetDisplayNode().GetWindow() == 1500 and node.GetDisplayNode().GetLevel() == -600
    array = mrml.slicer.util.arrayFromVolume(node)
    assert array.dtype == np.int16 and -1000 <= array.min() <= array.max() <= 1000
    steps = [(e["stage"], e["step"], e["total"]) for e in events if "stage" in e]
    assert ("denoise", 1, 2) in steps and ("denoise", 2, 2) in steps and steps[-1][0] == "decode"
    assert any("UNTRAINED" in e["warning"] for e in events if "warning" in e)
    fractions = [e["fraction"] for e in events if "fraction" in e]
    assert fractions[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in fractions)
    assert job.maxPollSeconds < 0.1, job.maxPollSeconds  # the GUI thread never waits on the engine
    assert list(Path(land_logic.tempRoot).iterdir()) == []  # temporary files removed
    assert not _alive(job.child.descendant_pids())
    longest = job.maxPollSeconds * 1000
    print(f"generate: {elapsed:.1f} s, longest poll {longest:.0f} ms, load {job.loadSeconds:.3f} s")


def test_cancel_mid_run(land_logic, mrml, small_model):
    """Cancel while denoising: GenerationCancelled, no process of the child's tree left, no temp files."""
    from LANDSynthesisLib.logic import GenerationCancelled

    ref, seg = _case(mrml)
    land_logic.cancelGraceSeconds = 1.0
    seen = {}

    def on_progress(event):
        if event.get("stage") == "denoise" and "pids" not in seen:
            child = land_logic.job.child
            seen["pids"] = [child.pid] + [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
            land_logic.cancel()

    params = {"modelDirectory": str(small_model), "steps": 50, "device": "cpu"}
    with pytest.raises(GenerationCancelled):
        land_logic.generate(seg, ref, params, onProgress=on_progress)
    assert seen["pids"], "cancel was not reached"
    assert not _alive(seen["pids"] + land_logic.job.child.descendant_pids())
    assert list(Path(land_logic.tempRoot).iterdir()) == []
    assert mrml.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1  # only the reference
    assert not land_logic.isRunning()


def test_failing_child_reports_engine_message(land_logic, mrml, small_model, tmp_path):
    """A model whose weights file is corrupted: the engine's sha256 message reaches the user as it is."""
    from LANDSynthesisLib.logic import LANDSynthesisError

    broken = tmp_path / "broken-model"
    shutil.copytree(small_model, broken)
    weights = broken / "vae.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    ref, seg = _case(mrml)
    with pytest.raises(LANDSynthesisError) as info:
        land_logic.generate(seg, ref, {"modelDirectory": str(broken), "steps": 2, "device": "cpu"})
    message = str(info.value)
    assert "sha256" in message and "vae.safetensors" in message and "corrupt" in message
    assert info.value.exitCode == 3
    assert list(Path(land_logic.tempRoot).iterdir()) == []
    assert mrml.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1
