"""LAND Studio's teaching session below the browser (issue 27): a trainee's reading session on trame-slicer's
real scene (DICOM cases, slices by Instance Number, marks from a pixel of the slice view), graded on submit by
``land teaching-score``'s rule, answers kept on disk across a restart, and no key data before submission."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from test_teaching import run_cli

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("trame_slicer") is None,
    reason="LAND Studio needs the studio extra (pip install -e '.[studio]')",
)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LANDStudio"))


@pytest.fixture(scope="module")
def teaching_set(tiny_model_dir, tmp_path_factory) -> Path:
    """2 cases, each with nodules, from the tiny test model (2 steps)."""
    out = tmp_path_factory.mktemp("studio-teach") / "set"
    code, text = run_cli(["teaching-set", "--model", str(tiny_model_dir), "--cases", "2", "--out", str(out),
                          "--nodule-rate", "1", "--diameters", "10-16", "--steps", "2", "--seed", "3",
                          "--progress", "none"])  # fmt: skip
    assert code == 0, text
    return out


@pytest.fixture(scope="module")
def slicer_app():
    import land_studio  # noqa: F401 - sets the off-screen render window
    from trame_slicer.core import SlicerApp
    from trame_slicer.views.direct_view_factory import DirectViewFactory
    from trame_slicer.views.view_layout_definition import ViewLayoutDefinition

    app = SlicerApp()
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    app.view_manager.create_view(ViewLayoutDefinition.axial_view())
    return app


def key_strings(set_dir: Path) -> list[str]:
    """Spellings of the key's numbers and words as they would appear if any of it leaked."""
    doc = json.loads((set_dir / "key" / "answers.json").read_text(encoding="utf-8"))
    out = ['"nodules"', '"diameter_mm"', '"missed"', '"texture"', '"found"', "answers"]
    for c in doc["cases"]:
        for n in c["nodules"]:
            out += [f"{n['diameter_mm']}", f"{n['diameter_mm']:.1f}"]
    return out


def pixel_of(session, lps) -> tuple[float, float]:
    m = np.array(session.viewGeometry()["xy_to_ras"]).reshape(4, 4)
    xy = np.linalg.solve(m, np.array([-lps[0], -lps[1], lps[2], 1.0]))
    return float(xy[0]), float(xy[1])


def test_read_mark_submit_grade_equals_teaching_score(teaching_set, slicer_app, tmp_path):
    from land_studio.roster import Roster
    from land_studio.teaching import TeachingSession

    from land.interface.errors import InputError
    from land.teaching.answers import read_answers

    roster = Roster(teaching_set, tmp_path / "work")
    roster.claim("Ada Reader", "browser-1")
    session = TeachingSession(slicer_app, roster, "Ada Reader")
    session.loadCase(0)
    before = json.dumps(session.state()) + json.dumps(roster.record("Ada Reader"))
    assert not [s for s in key_strings(teaching_set) if s in before]  # nothing of the key before submit
    with pytest.raises(InputError, match="Submit"):
        roster.graded("Ada Reader")

    cases, nodules = read_answers(teaching_set)  # the test reads the key from disk, the session does not
    target = next(n for n in nodules if n.case == cases[0])
    session.scroll(1)
    assert session.sliceNumber() == session.instances[len(session.instances) // 2][0] + 1
    session.setSlice(target.slice)
    assert session.sliceNumber() == target.slice
    session.setWindow("mediastinum")
    assert session.volume.GetDisplayNode().GetWindow() == 400.0
    session.zoom(0.2)
    session.zoom(0)
    hit = session.addMarkAtPixel(*pixel_of(session, target.centre_mm))  # a click on the nodule's centre
    assert np.linalg.norm(np.subtract((hit["x"], hit["y"], hit["z"]), target.centre_mm)) < 1.0
    session.loadCase(1)
    false = next(p for p in [(0.0, 0.0, 0.0), (0.0, 90.0, 0.0), (90.0, 0.0, 40.0)]
                 if all(np.linalg.norm(np.subtract(p, n.centre_mm)) > n.radius_mm + 5
                        for n in nodules if n.case == cases[1]))  # fmt: skip
    session.addMark(false)
    session.addMark((5.0, 5.0, 5.0))
    session.removeMark(2)
    assert [m["case"] for m in session.marks] == cases[:2]

    result = session.submit()
    reads = tmp_path / "reads.csv"  # the same marks, written by the test, graded by the CLI
    reads.write_text("case,x,y,z\n" + "".join(f"{m['case']},{m['x']!r},{m['y']!r},{m['z']!r}\n"
                                              for m in session.marks), encoding="utf-8")  # fmt: skip
    code, text = run_cli(["teaching-score", "--answers", str(teaching_set), "--reads", str(reads), "--json"])
    assert code == 0 and json.loads(text) == result
    assert (result["detected"], result["false_positives"], result["marks"]) == (1, 1, 2)
    graded = session.graded()
    verdicts = {m["case"]: m["verdict"] for c in graded["cases"].values() for m in c["marks"]}
    assert verdicts == {cases[0]: "hit", cases[1]: "false"}
    found = [n["found"] for n in graded["cases"][cases[0]]["nodules"] if n["nodule"] == target.nodule]
    assert found == [True]
    names = [n.GetName() for n in session._nodes]
    assert "Key" in names and f"{cases[1]}.seg" in names  # the key overlaid once submitted
    with pytest.raises(InputError, match="submitted"):
        session.addMark((1.0, 2.0, 3.0))


def test_answers_survive_a_restart_and_names_are_bound_to_a_browser(teaching_set, slicer_app, tmp_path):
    from land_studio.roster import Roster
    from land_studio.teaching import TeachingSession

    from land.interface.errors import InputError

    work = tmp_path / "work"
    first = Roster(teaching_set, work)
    first.claim("Bo", "browser-b")
    first.saveMarks("Bo", [{"case": first.cases[0], "x": 1.0, "y": 2.0, "z": 3.0}])
    with pytest.raises(InputError, match="taken"):
        first.claim("Bo", "another-browser")  # same name from another browser: refused
    # a restarted server: a new roster and a new session on the same work folder
    again = Roster(teaching_set, work)
    session = TeachingSession(slicer_app, again, "Bo")
    assert session.marks == [{"case": again.cases[0], "x": 1.0, "y": 2.0, "z": 3.0}] and not session.submitted
    result = session.submit()
    third = Roster(teaching_set, work)
    assert third.record("Bo")["result"] == result and TeachingSession(slicer_app, third, "Bo").submitted
    assert third.submit("Bo") == result  # submitting again changes nothing
    rows = third.rows()
    assert [r["name"] for r in rows] == ["Bo"] and rows[0]["false_positives"] == 1
    lines = third.csvText().splitlines()
    assert lines[0].startswith("name,submitted_at,cases,marks,nodules,detected,sensitivity")
    assert lines[1].startswith("Bo,") and len(lines) == 2


def test_bad_folders_and_names_are_clear(tmp_path, teaching_set):
    from land_studio.roster import Roster, clean_name, slug

    from land.interface.errors import InputError

    with pytest.raises(InputError, match="answer key"):
        Roster(tmp_path)
    with pytest.raises(InputError, match="name"):
        clean_name("   ")
    assert slug("Ann Lee") != slug("ann-lee") and slug("Ann  Lee") == slug("Ann Lee")
    roster = Roster(teaching_set, tmp_path / "w")
    roster.claim("Cy", "b")
    with pytest.raises(InputError, match="not in this teaching set"):
        roster.saveMarks("Cy", [{"case": "case_999", "x": 0, "y": 0, "z": 0}])
