"""Classifier-free guidance in the LANDSynthesis logic (real MRML, no engine run): ``--guidance W
--guidance-mode M`` on the ``land generate`` / ``land teaching-set`` command lines exactly when the user
overrides the model's recommendation, the engine's range check before any process starts, model.json's
recommended guidance and the parameter node's defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from slicer_fixtures import *  # noqa: F403

CUSTOM = {"guidanceFromModel": False, "guidanceScale": 4.5, "guidanceMode": "full"}


def _model(folder: Path, guidance: dict | None = None) -> Path:
    """A model directory with only model.json (enough for the logic; the engine is never run here)."""
    folder.mkdir()
    meta = {
        "name": "fake",
        "grid": {"size": [8, 8, 8], "spacing": [2, 2, 2]},
        "conditioning": {"mode": "none"},
    }
    if guidance is not None:
        meta["guidance"] = guidance
    (folder / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


@pytest.fixture
def started(monkeypatch):
    """Replaces the child process: records each command line and stops there (no process is started)."""
    from LANDSynthesisLib import logic

    commands: list[list[str]] = []

    def record(command, **kwargs):
        commands.append(list(command))
        raise RuntimeError("recorded")

    monkeypatch.setattr(logic, "ChildProcess", record)
    return commands


def _generate_command(land_logic, started, parameters) -> list[str]:
    from LANDSynthesisLib.logic import GenerationJob

    job = land_logic.start(None, None, {"mode": "none", "device": "cpu", **parameters})
    while land_logic.poll():
        pass
    assert job.state == GenerationJob.FAILED and job.error == "recorded"
    assert started[-1] == job.command
    return job.command


def _flags(command: list[str]) -> list[str]:
    at = [i for i, a in enumerate(command) if a.startswith("--guidance")]
    return [a for i in at for a in command[i : i + 2]]


def test_generate_command_has_guidance_flags_only_when_not_from_model(land_logic, mrml, started, tmp_path):
    model = str(_model(tmp_path / "model", {"scale": 2.5, "mode": "nodules"}))
    assert _flags(_generate_command(land_logic, started, {"modelDirectory": model})) == []
    # the model's recommendation: whatever the (unused) scale and mode say, no flags
    unused = {"modelDirectory": model, "guidanceScale": 25.0, "guidanceMode": "bogus"}
    assert _flags(_generate_command(land_logic, started, unused)) == []
    custom = _generate_command(land_logic, started, {"modelDirectory": model, **CUSTOM})
    assert _flags(custom) == ["--guidance", "4.5", "--guidance-mode", "full"]
    assert custom.count("--guidance") == 1 and custom.count("--guidance-mode") == 1
    # turning guidance off for a guided model is an explicit override too
    off = {"modelDirectory": model, "guidanceFromModel": False, "guidanceScale": 1, "guidanceMode": "none"}
    off_flags = _flags(_generate_command(land_logic, started, off))
    assert off_flags == ["--guidance", "1", "--guidance-mode", "none"]
    assert list(Path(land_logic.tempRoot).iterdir()) == []


def test_out_of_range_guidance_is_refused_before_any_process(land_logic, mrml, started, tmp_path):
    from LANDSynthesisLib.logic import LANDInputError

    model = str(_model(tmp_path / "model"))
    out = str(tmp_path / "set")
    for bad, message in (
        ({"guidanceScale": 25.0}, r"guidance 25 is out of range; use a value from 0 to 20"),
        ({"guidanceScale": -1.0}, r"from 0 to 20"),
        ({"guidanceScale": float("nan")}, r"not a number"),
        ({"guidanceMode": "lungs"}, r"unknown guidance mode 'lungs'; choose one of: none, full, nodules"),
    ):
        parameters = {**CUSTOM, **bad}
        with pytest.raises(LANDInputError, match=message):
            land_logic.start(None, None, {"modelDirectory": model, "mode": "none", **parameters})
        with pytest.raises(LANDInputError, match=message):
            land_logic.startTeachingSet({"outputDirectory": out, "modelDirectory": model, **parameters})
        assert land_logic.job is None and started == []
    assert list(Path(land_logic.tempRoot).iterdir()) == [] and not Path(out).exists()


def test_teaching_set_command_guidance_flags(land_logic, tmp_path):
    out = tmp_path / "set"
    base = {"outputDirectory": str(out), "cases": 3, "seed": 9}
    assert _flags(land_logic.teachingSetCommand(base)) == []
    assert _flags(land_logic.teachingSetCommand({**base, "guidanceScale": 25.0})) == []  # not used
    assert land_logic.teachingSetCommand({**base, **CUSTOM})[-8:] == [
        "--seed", "9", "--guidance", "4.5", "--guidance-mode", "full", "--progress", "json",
    ]  # fmt: skip


def test_model_guidance_and_parameter_node_defaults(land_logic, mrml, tmp_path):
    from LANDSynthesisLib import logic as L

    assert L.readModelInfo(_model(tmp_path / "plain")).guidance == (1.0, "none")
    guided = _model(tmp_path / "guided", {"scale": 2.5, "mode": "nodules"})
    assert L.readModelInfo(guided).guidance == (2.5, "nodules")
    with pytest.raises(L.LANDSynthesisError, match="not a valid LAND model description.*from 0 to 20"):
        L.readModelInfo(_model(tmp_path / "bad", {"scale": 99, "mode": "full"}))

    for defaults in (L.GenerationParameters(), L.TeachingSetParameters()):
        guidance = (defaults.guidanceFromModel, defaults.guidanceScale, defaults.guidanceMode)
        assert guidance == (True, 3.0, "nodules"), type(defaults).__name__
    node = land_logic.getParameterNode()
    assert node.GetParameter("GuidanceFromModel") == "true"
    assert float(node.GetParameter("Guidance")) == defaults.guidanceScale
    assert node.GetParameter("GuidanceMode") == defaults.guidanceMode
    node.SetParameter("GuidanceFromModel", "false")
    node.SetParameter("Guidance", "7.5")
    land_logic.setDefaultParameters(node)  # keeps what the user set
    assert node.GetParameter("GuidanceFromModel") == "false" and node.GetParameter("Guidance") == "7.5"


def test_the_panels_field_of_view_reaches_the_engine():
    from LANDSynthesisLib.options import GenerationParameters, LANDInputError

    argv = GenerationParameters(fit="scale").engineOptions("ct.nrrd").to_argv()
    assert argv[argv.index("--fit") + 1] == "scale"
    assert GenerationParameters().engineOptions("ct.nrrd").fit == "crop"
    with pytest.raises(LANDInputError, match="unknown --fit 'stretch'"):
        GenerationParameters(fit="stretch").check()
