"""One trainee's reading session on a trame-slicer scene (plain Python; the page is ``teaching_app``).

Reads the teaching set's DICOM cases one by one into Slicer's scene, scrolls by DICOM Instance Number (the
numbering the answer key's ``slice`` uses), sets the window presets of the set's DICOM (lung, mediastinum),
zooms, and keeps the trainee's marks (DICOM patient LPS mm) through :class:`~land_studio.roster.Roster`, which
writes every change to disk and grades on submit. Before submission nothing here reads the answer key; after
it, the key's segmentation and nodule centres are overlaid and each mark shows its verdict.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from land.interface.errors import InputError
from land.teaching.dicom_export import WINDOWS

from .roster import Roster

# name -> (window, level), from the presets written into the set's DICOM
PRESETS = {name.lower(): (width, centre) for name, centre, width in WINDOWS}
MOVE_TOLERANCE_PX = 4  # a press and release closer than this is a click (a mark), else a drag (window/level)


def _lps(ras) -> tuple[float, float, float]:
    return (-float(ras[0]), -float(ras[1]), float(ras[2]))


class TeachingSession:
    """The reading state of trainee ``name`` on ``slicer_app`` (see the module docstring)."""

    def __init__(self, slicer_app, roster: Roster, name: str) -> None:
        self.app, self.roster = slicer_app, roster
        rec = roster.record(name)
        if rec is None:
            raise InputError(f"no trainee {name!r} in this session; start from the class page")
        self.name = rec["name"]
        self.marks: list[dict[str, Any]] = list(rec["marks"])
        self.submitted = bool(rec.get("submitted_at"))
        self.caseIndex = -1
        self.volume = None
        self.window = "lung"
        self.instances: list[tuple[int, float]] = []  # (Instance Number, z in mm) in instance order
        self._nodes: list = []  # nodes of the current case other than the volume (marks, key overlay)
        self._press: tuple[int, int] | None = None

    # ------------------------------------------------------------------ cases
    @property
    def case(self) -> str:
        return self.roster.cases[self.caseIndex] if self.caseIndex >= 0 else ""

    def view(self):
        views = self.app.view_manager.get_slice_views()
        return views[0] if views else None

    def loadCase(self, index: int) -> None:
        cases = self.roster.cases
        if not 0 <= index < len(cases):
            raise InputError(f"there are cases 1..{len(cases)}")
        folder = self.roster.caseFolder(cases[index])
        files = sorted(str(f) for f in folder.iterdir() if f.is_file())
        volumes = [v for v in self.app.io_manager.load_volumes(files) or [] if v is not None]
        if not volumes:
            raise InputError(f"could not read the DICOM series of {cases[index]}")
        self._clear()
        self.volume = max(volumes, key=lambda v: int(np.prod(v.GetImageData().GetDimensions())))
        for other in volumes:
            if other is not self.volume:
                self.app.scene.RemoveNode(other)
        self.volume.SetName(cases[index])
        self.caseIndex = index
        self.instances = self._instanceTable(files)
        self.app.display_manager.show_volume_in_slice_background(self.volume)
        self.app.display_manager.reset_views()
        self.setWindow(self.window)
        self.setSlice(self.instances[len(self.instances) // 2][0])
        self._showOverlay()

    @staticmethod
    def _instanceTable(files: list[str]) -> list[tuple[int, float]]:
        import pydicom

        table = []
        for f in files:
            ds = pydicom.dcmread(
                f, stop_before_pixels=True, specific_tags=["InstanceNumber", "ImagePositionPatient"]
            )
            table.append((int(ds.InstanceNumber), float(ds.ImagePositionPatient[2])))
        return sorted(table)

    def _clear(self) -> None:
        for node in [*self._nodes, self.volume]:
            if node is not None and node.GetScene() is not None:
                self.app.scene.RemoveNode(node)
        self._nodes, self.volume = [], None

    # ------------------------------------------------------------------ reading
    def sliceNumber(self) -> int:
        """The Instance Number of the DICOM slice shown (nearest to the view's slice position)."""
        view = self.view()
        if view is None or not self.instances:
            return 0
        z = view.get_slice_value()
        return min(self.instances, key=lambda t: abs(t[1] - z))[0]

    def setSlice(self, number: int) -> None:
        view = self.view()
        if view is None or not self.instances:
            return
        number = int(np.clip(int(number), self.instances[0][0], self.instances[-1][0]))
        z = min(self.instances, key=lambda t: abs(t[0] - number))[1]
        view.set_slice_value(z)

    def scroll(self, delta: int) -> None:
        self.setSlice(self.sliceNumber() + int(delta))

    def setWindow(self, preset: str) -> None:
        if preset not in PRESETS:
            raise InputError(f"window preset {preset!r}: one of {', '.join(PRESETS)}")
        self.window = preset
        if self.volume is not None:
            display = self.volume.GetDisplayNode()
            display.AutoWindowLevelOff()
            display.SetWindowLevel(*PRESETS[preset])

    def zoom(self, factor: float) -> None:
        """factor > 0 zooms in (0.2: the field of view shrinks by 20 %), < 0 out; 0 fits the image."""
        view = self.view()
        if view is None:
            return
        if factor == 0:
            number = self.sliceNumber()
            view.fit_view_to_content()  # also centres the slice: go back to the one being read
            self.setSlice(number)
        else:
            view.zoom(float(factor))

    def viewGeometry(self) -> dict[str, Any] | None:
        """The slice view's pixel -> RAS matrix and size (what a click maps through; no key data)."""
        view = self.view()
        if view is None:
            return None
        node = view._view_node  # the vtkMRMLSliceNode of the view
        m = node.GetXYToRAS()
        width, height = view.render_window().GetSize()
        return {
            "xy_to_ras": [m.GetElement(i, j) for i in range(4) for j in range(4)],
            "width": int(width),
            "height": int(height),
        }

    # ------------------------------------------------------------------ marks
    def _refuseAfterSubmit(self) -> None:
        if self.submitted:
            raise InputError("Your reads are submitted; marks can no longer change.")

    def addMark(self, lps: tuple[float, float, float], case: str | None = None) -> dict[str, Any]:
        self._refuseAfterSubmit()
        case = case or self.case
        if not case:
            raise InputError("Open a case first.")
        mark = {"case": case, "x": float(lps[0]), "y": float(lps[1]), "z": float(lps[2])}
        self.marks = self.roster.saveMarks(self.name, [*self.marks, mark])
        self._showOverlay()
        return mark

    def addMarkAtPixel(self, x: float, y: float) -> dict[str, Any] | None:
        """A mark where the view's pixel (x, y) (origin bottom left, as VTK's events) lies in the patient."""
        geometry = self.viewGeometry()
        if geometry is None or self.volume is None:
            return None
        m = np.array(geometry["xy_to_ras"]).reshape(4, 4)
        ras = m @ np.array([float(x), float(y), 0.0, 1.0])
        return self.addMark(_lps(ras[:3]))

    def removeMark(self, index: int) -> None:
        self._refuseAfterSubmit()
        marks = list(self.marks)
        if not 0 <= index < len(marks):
            raise InputError("no such mark")
        del marks[index]
        self.marks = self.roster.saveMarks(self.name, marks)
        self._showOverlay()

    def watchClicks(self) -> None:
        """Marks from clicks in the slice view (a press and release without a drag)."""
        view = self.view()
        if view is None:
            return
        interactor = view.interactor()

        def press(obj, _event):
            self._press = obj.GetEventPosition()

        def release(obj, _event):
            start, self._press = self._press, None
            end = obj.GetEventPosition()
            if start is None or self.submitted or self.volume is None:
                return
            if max(abs(end[0] - start[0]), abs(end[1] - start[1])) <= MOVE_TOLERANCE_PX:
                try:
                    self.addMarkAtPixel(*end)
                except InputError:
                    pass
                if self.onMarksChanged is not None:
                    self.onMarksChanged()

        interactor.AddObserver("LeftButtonPressEvent", press, 10.0)
        interactor.AddObserver("LeftButtonReleaseEvent", release, 10.0)

    onMarksChanged = None  # the page's hook, called after a click placed a mark

    # ------------------------------------------------------------------ submit and overlay
    def submit(self) -> dict[str, Any]:
        result = self.roster.submit(self.name, self.marks)
        self.submitted = True
        self._showOverlay()
        return result

    def graded(self) -> dict[str, Any] | None:
        return self.roster.graded(self.name) if self.submitted else None

    def _fiducials(self, name: str, points: list[tuple[tuple[float, float, float], str]], color) -> None:
        node = self.app.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
        for lps, label in points:
            i = node.AddControlPoint(-lps[0], -lps[1], lps[2])  # LPS -> RAS
            node.SetNthControlPointLabel(i, label)
        node.SetLocked(True)
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(*color)
            display.SetColor(*color)
        self._nodes.append(node)

    def _showOverlay(self) -> None:
        """The trainee's marks of this case, and after submission the key (segmentation and centres)."""
        for node in self._nodes:
            if node.GetScene() is not None:
                self.app.scene.RemoveNode(node)
        self._nodes = []
        if not self.case:
            return
        graded = self.graded()
        if graded is None:
            mine = [
                ((m["x"], m["y"], m["z"]), str(i + 1))
                for i, m in enumerate(self.marks)
                if m["case"] == self.case
            ]
            self._fiducials("Your marks", mine, (0.2, 0.6, 1.0))
            return
        case = graded["cases"][self.case]
        for verdict, color in (
            ("hit", (0.1, 0.9, 0.2)),
            ("duplicate", (0.6, 0.9, 0.2)),
            ("false", (1.0, 0.2, 0.2)),
        ):
            pts = [((m["x"], m["y"], m["z"]), verdict) for m in case["marks"] if m["verdict"] == verdict]
            if pts:
                self._fiducials(f"Marks: {verdict}", pts, color)
        key = [
            ((n["x"], n["y"], n["z"]), f"N{n['nodule']} {'found' if n['found'] else 'missed'}")
            for n in case["nodules"]
        ]
        if key:
            self._fiducials("Key", key, (1.0, 0.85, 0.1))
        seg = self.roster.segmentation(self.case)
        if seg is not None:
            node = self.app.io_manager.load_segmentation(str(seg))
            if node is not None:
                display = node.GetDisplayNode()
                if display is not None:
                    display.SetAllSegmentsOpacity2DFill(0.0)  # outlines only: the CT stays readable
                self._nodes.append(node)

    def close(self) -> None:
        self._clear()

    # ------------------------------------------------------------------ page state
    def state(self) -> dict[str, Any]:
        """What the page shows. Before submission: the trainee's own marks only, no key data."""
        mine = [{**m, "index": i} for i, m in enumerate(self.marks)]
        return {
            "name": self.name,
            "cases": list(self.roster.cases),
            "case_index": self.caseIndex,
            "case": self.case,
            "slice": self.sliceNumber(),
            "slices": [self.instances[0][0], self.instances[-1][0]] if self.instances else [0, 0],
            "window": self.window,
            "marks": mine,
            "case_marks": [m for m in mine if m["case"] == self.case],
            "submitted": self.submitted,
            "view": self.viewGeometry(),
        }
