"""The LANDSynthesis "Teaching set" logic: ``land teaching-set`` command lines, and a run of the real
command in the background child process, and the error an engine without the command gives."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from slicer_fixtures import *  # noqa: F403

psutil = pytest.importorskip("psutil")


def _available() -> bool:
    from LANDSynthesisLib.logic import teachingSetAvailability

    return teachingSetAvailability()[0]


def test_teaching_set_command_line(land_logic, tmp_path):
    from LANDSynthesisLib.logic import LANDInputError

    out = tmp_path / "set"
    full = land_logic.teachingSetCommand(
        {
            "outputDirectory": str(out),
            "cases": 12,
            "modelDirectory": "/models/land",
            "noduleRate": 0.75,
            "textures": "5, 3,3",
            "diameters": (4, 25.5),
            "steps": 30,
            "seed": 9,
        }
    )
    assert full == [
        sys.executable, "-m", "land", "teaching-set", "--model", "/models/land", "--cases", "12",
        "--out", str(out), "--nodule-rate", "0.75", "--textures", "3,5", "--diameters", "4-25.5",
        "--steps", "30", "--seed", "9", "--progress", "json",
    ]  # fmt: skip
    minimal = land_logic.teachingSetCommand({"outputDirectory": str(out), "cases": 3})
    assert minimal == [sys.executable, "-m", "land", "teaching-set", "--cases", "3", "--out", str(out)] + [
        "--progress",
        "json",
    ]
    assert land_logic.teachingSetCommand({"outputDirectory": str(out), "diameters": "8"})[-4:-2] == [
        "--diameters",
        "8-8",
    ]
    bad = {
        "cases": 0,
        "textures": "1,6",
        "diameters": "25-4",
        "noduleRate": 1.5,
        "steps": 0,
        "seed": -1,
    }
    for key, value in bad.items():
        with pytest.raises(LANDInputError):
            land_logic.teachingSetCommand({"outputDirectory": str(out), key: value})
    with pytest.raises(LANDInputError, match="does not exist"):
        land_logic.teachingSetCommand({"outputDirectory": str(tmp_path / "no" / "such" / "set")})
    with pytest.raises(LANDInputError, match="output folder"):
        land_logic.teachingSetCommand({"cases": 2})
    with pytest.raises(LANDInputError, match="unknown teaching-set parameter"):
        land_logic.teachingSetCommand({"outputDirectory": str(out), "case": 2})


def test_teaching_progress_lines(land_logic, tmp_path):
    """Progress lines in ``land generate``'s shape, with or without case numbers, become one bar 0..1."""
    from LANDSynthesisLib.logic import TeachingSetJob, TeachingSetParameters

    job = TeachingSetJob(TeachingSetParameters(outputDirectory=str(tmp_path / "set"), cases=2), None)
    events = []
    land_logic._onProgress = events.append
    land_logic.job = job
    lines = [
        {"stage": "case", "step": 0, "total": 2, "eta_s": None, "case": "case_001"},
        {"stage": "denoise", "step": 5, "total": 10, "eta_s": 3},
        {"stage": "case", "step": 1, "total": 2, "eta_s": 60.0, "case": "case_002"},
        {"stage": "decode", "step": 1, "total": 1, "eta_s": 0},
        {"stage": "case", "step": 2, "total": 2, "eta_s": 0.0, "case": "case_002"},
        {"warning": "model land-small is UNTRAINED"},
        {"done": True, "out": str(tmp_path / "elsewhere"), "complete": True},
    ]
    for line in lines:
        land_logic._handleLine(job, "stdout", json.dumps(line))
    fractions = [e["fraction"] for e in events if "fraction" in e]
    assert fractions == pytest.approx([0.0, 0.225, 0.5, 1.0, 1.0, 1.0])
    texts = [e["text"] for e in events if "text" in e]
    assert texts[0].startswith("Case 1/2 (case_001)") and texts[1].startswith(
        "Case 1/2: Denoising: step 5/10"
    )
    assert texts[3].startswith("Case 2/2: Decoding") and "answer key" in texts[4]
    assert job.warnings == ["model land-small is UNTRAINED"]
    assert job.outputDirectory == tmp_path / "elsewhere"
    land_logic.job = None


def test_teaching_set_missing_command_is_reported(land_logic, tmp_path, monkeypatch):
    """An older engine beside this module (no land/teaching/cli.py): a clear error, nothing started."""
    import LANDSynthesisLib.jobs as jobs
    import LANDSynthesisLib.logic as logic
    from LANDSynthesisLib.logic import LANDSynthesisError

    old_engine = tmp_path / "engine"
    (old_engine / "land").mkdir(parents=True)
    (old_engine / "land" / "__init__.py").write_text("", encoding="utf-8")
    monkeypatch.setattr(jobs, "engineDirectory", lambda: old_engine)  # where the availability check looks
    assert logic.teachingSetAvailability()[0] is False
    with pytest.raises(LANDSynthesisError, match="no 'land teaching-set' command"):
        land_logic.startTeachingSet({"outputDirectory": str(tmp_path / "set"), "cases": 1})
    assert not land_logic.isRunning() and list(Path(land_logic.tempRoot).iterdir()) == []


@pytest.mark.skipif(not _available(), reason="land teaching-set is not in this engine yet (issue 8)")
def test_teaching_set_real_command(land_logic, small_model, tmp_path):
    """The real ``land teaching-set`` in the child process: progress, the folder written, nothing left behind;
    then a cancelled run leaves no process of its tree."""
    from LANDSynthesisLib.logic import GenerationCancelled

    out = tmp_path / "teaching"
    events = []
    params = {
        "outputDirectory": str(out),
        "cases": 1,
        "modelDirectory": str(small_model),
        "noduleRate": 1.0,
        "textures": "5",
        "diameters": "8-12",
        "steps": 2,
        "seed": 4,
    }
    t0 = time.monotonic()

    def on_progress(event):
        events.append(event)
        if "stage" in event and not any("closed" in e for e in events):
            events.append({"closed": True})
            land_logic.cleanup(sceneClosing=True)  # File > Close Scene: a teaching set keeps running

    folder = land_logic.runTeachingSet(params, onProgress=on_progress, timeout=1200)
    assert any("closed" in e for e in events)
    job = land_logic.job
    assert folder == out.resolve() and folder.is_dir() and any(folder.iterdir())
    assert (folder / "key" / "answers.json").is_file() and (folder / "key" / "answers.csv").is_file()
    assert any((folder / "dicom").iterdir())
    fractions = [e["fraction"] for e in events if "fraction" in e]
    assert fractions[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in fractions)
    assert any("stage" in e for e in events)
    assert job.maxPollSeconds < 0.1, job.maxPollSeconds
    assert list(Path(land_logic.tempRoot).iterdir()) == []
    print(f"teaching set of 1 case: {time.monotonic() - t0:.0f} s")

    seen = {}

    def cancel_early(event):
        if "stage" in event and "pids" not in seen:
            child = land_logic.job.child
            seen["pids"] = [child.pid] + [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
            land_logic.cancel()

    land_logic.cancelGraceSeconds = 1.0
    with pytest.raises(GenerationCancelled):
        land_logic.runTeachingSet(
            {**params, "cases": 3, "steps": 50, "outputDirectory": str(tmp_path / "c")},
            onProgress=cancel_early,
        )
    alive = []
    for pid in seen["pids"] + land_logic.job.child.descendant_pids():
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    assert not alive and not land_logic.isRunning()
    assert list(Path(land_logic.tempRoot).iterdir()) == []
