"""land.interface.events: the one progress protocol of every command, read by both Slicer modules with
parse_event."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import make_masks

from land.imaging.io import write_seg_nrrd
from land.interface.contract import EXIT_INPUT, WARNING_UNTRAINED_MODEL
from land.interface.events import (
    DoneEvent,
    ErrorEvent,
    ProgressEvent,
    Reporter,
    WarningEvent,
    event_dict,
    event_line,
    parse_event,
)

LAND = [sys.executable, "-m", "land"]


@pytest.mark.parametrize(
    "event",
    [
        ProgressEvent("denoise", 3, 14, 12.5),
        ProgressEvent("case", 0, 5, None, {"case": "case_000", "nodules": 2}),
        WarningEvent("nodule 2 lies outside the lungs", "nodule_outside_lung"),
        ErrorEvent("--out must end in .nii.gz", EXIT_INPUT),
        DoneEvent(True, {"out": "/tmp/ct.nii.gz"}),
        DoneEvent(False, {"failed": 3}),
    ],
)
def test_every_event_survives_its_json_line(event):
    line = event_line(event)
    assert "\n" not in line and json.loads(line) == event_dict(event)
    assert parse_event(line) == event
    assert parse_event("  " + line + "\r\n") == event  # as read from a pipe


def test_lines_that_are_not_events_parse_to_none():
    for line in ["", "wrote SYNTHETIC CT ct.nii.gz", "{not json", "[1, 2]", '{"loss": 0.3}', "{}",
                 '{"stage": "denoise"}']:  # fmt: skip
        assert parse_event(line) is None, line
    # odd values do not raise: the reader keeps going
    assert parse_event('{"stage": "x", "step": "?", "total": null}') == ProgressEvent("x", 0, 0, None)
    assert parse_event('{"error": "boom", "exit_code": "?"}') == ErrorEvent("boom", 1)


def test_details_cannot_overwrite_the_events_own_fields():
    d = event_dict(ProgressEvent("sample", 2, 8, None, {"step": 99, "total": 1, "out": "a.nii.gz"}))
    assert (d["step"], d["total"], d["out"]) == (2, 8, "a.nii.gz")
    assert event_dict(DoneEvent(False, {"done": True}))["done"] is False


def test_reporter_writes_events_and_keeps_a_given_eta(capsys):
    reporter = Reporter("json")
    reporter({"stage": "case", "step": 0, "total": 4, "eta_s": None, "case": "case_000"})
    reporter({"stage": "denoise", "step": 1, "total": 2})
    reporter.warning("low memory", "other_code")
    reporter.done(out="x")
    captured = capsys.readouterr()
    events = [parse_event(line) for line in captured.out.splitlines()]
    assert events[0] == ProgressEvent("case", 0, 4, None, {"case": "case_000"})
    assert isinstance(events[1], ProgressEvent) and events[1].eta_s is not None and events[1].eta_s >= 0
    assert events[2] == WarningEvent("low memory", "other_code") and "warning: low memory" in captured.err
    assert events[3] == DoneEvent(True, {"out": "x"})
    Reporter("none").done(out="x")
    assert capsys.readouterr().out == ""


def test_generate_prints_only_events_and_ends_with_done_or_error(tiny_model_dir, tmp_path):
    """A real `land generate --progress json`: every stdout line is an event; the last is done (exit 0) or
    the error whose exit code is the process's."""
    seg = tmp_path / "case.seg.nrrd"
    write_seg_nrrd(seg, make_masks())
    out = tmp_path / "ct.nii.gz"
    common = ["generate", "--model", str(tiny_model_dir), "--mask", str(seg), "--steps", "2",
              "--device", "cpu", "--progress", "json"]  # fmt: skip
    ok = subprocess.run([*LAND, *common, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    events = [parse_event(line) for line in ok.stdout.splitlines()]
    assert None not in events, ok.stdout
    assert WarningEvent in {type(e) for e in events}
    assert any(isinstance(e, WarningEvent) and e.code == WARNING_UNTRAINED_MODEL for e in events)
    stages = [e.stage for e in events if isinstance(e, ProgressEvent)]
    assert stages.index("denoise") < stages.index("decode")
    for stage in ("denoise", "decode"):
        steps = [(e.step, e.total) for e in events if isinstance(e, ProgressEvent) and e.stage == stage]
        assert steps[-1][0] == steps[-1][1] and [s for s, _ in steps] == sorted(s for s, _ in steps)
    assert events[-1] == DoneEvent(True, {"out": str(out)})

    bad = subprocess.run([*LAND, *common, "--out", str(tmp_path / "ct.png")], capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    last = parse_event(bad.stdout.splitlines()[-1])
    assert isinstance(last, ErrorEvent) and last.exit_code == bad.returncode == EXIT_INPUT
    assert ".nii.gz" in last.message and "Traceback" not in bad.stderr
