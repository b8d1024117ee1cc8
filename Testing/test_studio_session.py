"""LAND Studio's session below the page (issue 27): trame-slicer's real scene and segment editor, the desktop
module's logic, ``land generate`` as a child process. The browser test drives the same through the page."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("trame_slicer") is None,
    reason="LAND Studio needs the studio extra (pip install -e '.[studio]')",
)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LANDStudio"))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from land_studio.session import StudioSession
    from trame_slicer.core import SlicerApp

    studio = StudioSession(SlicerApp(), tmp_path_factory.mktemp("studio"))
    yield studio
    studio.close()
    studio.restore()


def ct_chest() -> Path:
    slicerio = pytest.importorskip("slicerio")
    return Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"


def test_bad_input_is_a_message_and_nothing_is_lost(session, tmp_path):
    from LANDSynthesisLib.options import LANDInputError

    session.loadDemoMasks()
    before = session.segments()
    junk = tmp_path / "notes.nii.gz"
    junk.write_text("not an image", encoding="utf-8")
    with pytest.raises(LANDInputError, match="notes.nii.gz"):
        session.loadCT([junk])
    with pytest.raises(LANDInputError, match="does not exist"):
        session.loadCT([tmp_path / "missing.nrrd"])
    with pytest.raises(LANDInputError, match="texture"):
        session.setTexture(before[1]["id"], 7)
    assert session.segments() == before  # the demo masks are still there, unchanged


def test_ct_lungs_from_ct_nodule_and_cancel(session):
    from LANDSynthesisLib.options import LANDInputError

    message = session.loadCT([ct_chest()])
    assert "CTChest4" in message
    assert [s["name"] for s in session.segments()] == ["Lungs"]
    with pytest.raises(LANDInputError, match="(?i)lung"):
        session.startGeneration({"steps": 2})  # nothing painted yet: the module's own check says so
    session.startLungsFromCT()
    t0 = time.monotonic()
    while (summary := session.pollLungs()) is None:
        assert time.monotonic() - t0 < 300
        time.sleep(0.1)
    assert summary.startswith("Lungs from CT:")
    assert session.segments()[0]["voxels"] > 10000
    nodule = session.addNodule(3)
    assert session.activeSegmentId() == nodule
    rows = {r["id"]: r for r in session.segments()}
    assert rows[nodule]["name"] == "Nodule 1" and rows[nodule]["texture"] == 3

    session.startGeneration({"steps": 2})
    with pytest.raises(LANDInputError, match="running"):
        session.loadDemoMasks()  # a second action while one runs is refused, the job goes on
    while session.logic.job.state == "preparing":
        session.pollGeneration()
        time.sleep(0.05)
    session.cancelGeneration()
    t0 = time.monotonic()
    while session.pollGeneration():
        assert time.monotonic() - t0 < 60
        time.sleep(0.05)
    assert session.logic.job.state == "cancelled"
    assert session.result is None
    assert not any((session.workDir / "jobs").iterdir())  # the job's temporary folder is gone


def test_threshold_and_islands_on_a_real_ct(session):
    import numpy as np
    import slicer
    from LANDSynthesisLib.options import LANDInputError
    from scipy import ndimage

    session.loadCT([ct_chest()])
    lungs = session.activeSegmentId()
    ct = slicer.util.arrayFromVolume(session.reference)
    with pytest.raises(LANDInputError, match="empty"):
        session.applyThreshold(-400, -1000)
    voxels = session.applyThreshold(-1000, -400)  # air and lung: the segment is exactly that range
    assert session.effect == "threshold"
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(session.segmentation, lungs, session.reference)
    assert voxels == int(((ct >= -1000) & (ct <= -400)).sum()) == int(np.count_nonzero(mask))
    parts = ndimage.label(mask)[1]
    assert parts > 1  # outside air, lungs, airways, noise
    kept = session.applyIslands("keep_largest")
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(session.segmentation, lungs, session.reference)
    assert 0 < kept < voxels and kept == int(np.count_nonzero(mask)) and ndimage.label(mask)[1] == 1
    with pytest.raises(LANDInputError, match="islands mode"):
        session.applyIslands("everything")
    session.setEffect("scissors")
    assert session.effect == "scissors" and session.scissorsMode == "erase_inside"
    session.setEffect("none")
