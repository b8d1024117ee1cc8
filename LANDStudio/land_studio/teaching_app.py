"""One trainee's reading page (trame, Vuetify 3) around a :class:`~land_studio.teaching.TeachingSession`.

Started by the class launcher (:mod:`land_studio.launcher`) as its own process, one per trainee, on its own
port; the browser connects only with that process's secret (wslink's ``secret``, given once in the URL the
launcher redirects to), so no other browser sees this trainee's page. The process stops when no browser has
been connected for ``--idle-exit`` seconds, or when the launcher is gone.

Left: the case (previous / next), window presets, slice (scroll buttons, slider; the mouse wheel in the view
scrolls too), zoom, the trainee's marks on this case, Submit; once submitted, the grade (``land
teaching-score``'s rule, :class:`~land_studio.roster.Roster`) and per case the hits, misses and false marks,
with the key overlaid in the view. Right: Slicer's axial slice view; a click (no drag) places a mark.
The hidden ``#land-state`` element carries the page state as JSON for tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from . import ensure_module_path

ensure_module_path()

from trame.app import get_server  # noqa: E402
from trame.widgets import html  # noqa: E402
from trame.widgets import vuetify3 as v3  # noqa: E402
from trame_server.utils.asynchronous import create_task  # noqa: E402
from trame_slicer import module as trame_slicer_module  # noqa: E402
from trame_slicer.core import LayoutManager, SlicerApp  # noqa: E402
from trame_slicer.rca_view import register_rca_factories  # noqa: E402

from .app import FAVICON  # noqa: E402
from .page_frame import build_page  # noqa: E402
from .roster import Roster  # noqa: E402
from .teaching import PRESETS, TeachingSession  # noqa: E402

log = logging.getLogger("land_studio.teaching")
POLL_SECONDS = 0.2


class TeachingApp:
    def __init__(self, roster: Roster, name: str, server=None) -> None:
        self.server = server or get_server("land-teaching", client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicerApp = SlicerApp()
        register_rca_factories(self.slicerApp.view_manager, self.server)
        self.layoutManager = LayoutManager(self.slicerApp.scene, self.slicerApp.view_manager, self.server)
        self.layoutManager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.session = TeachingSession(self.slicerApp, roster, name)
        self._initState()
        self._buildUi()
        self.layoutManager.set_layout("Axial Only")
        self.session.watchClicks()
        self._action(self.session.loadCase, 0)
        self.ctrl.on_server_ready.add(self._onReady)
        self.parent = os.getppid()

    # ------------------------------------------------------------------ state
    def _initState(self) -> None:
        s = self.state
        s.trame__title = "LAND teaching session"
        s.trame__favicon = FAVICON
        s.land_ready = False
        s.land_error = ""
        s.land_message = "Read each case, click on every nodule you see, then Submit."
        s.land_teaching = {}
        s.land_grade = None
        s.land_slice = 0
        s.land_window = self.session.window
        self.state.change("land_slice")(self._onSlice)

    def _refresh(self) -> None:
        """Push the session's state to the page when it changed (marks, slice, case, grade)."""
        teaching = self.session.state()
        if teaching != self.state.land_teaching:
            self.state.land_teaching = teaching
            self.state.land_slice = teaching["slice"]
            self.state.land_window = teaching["window"]
        if self.session.submitted and self.state.land_grade is None:
            self.state.land_grade = self.session.graded()

    def _action(self, function, *args) -> Any:
        self.state.land_error = ""
        try:
            return function(*args)
        except Exception as e:  # noqa: BLE001 - shown in the page, nothing is lost
            log.exception("teaching action failed")
            self.state.land_error = str(e) or type(e).__name__
            return None
        finally:
            self._refresh()

    # ------------------------------------------------------------------ actions
    def openCase(self, index: int) -> None:
        self._action(self.session.loadCase, int(index))

    def scroll(self, delta: int) -> None:
        self._action(self.session.scroll, int(delta))

    def _onSlice(self, land_slice=None, **_) -> None:
        try:
            number = int(land_slice)
        except (TypeError, ValueError):
            return
        if number != self.session.sliceNumber():
            self._action(self.session.setSlice, number)

    def setWindow(self, preset: str) -> None:
        self._action(self.session.setWindow, preset)

    def zoom(self, factor: float) -> None:
        self._action(self.session.zoom, float(factor))

    def removeMark(self, index: int) -> None:
        self._action(self.session.removeMark, int(index))

    def submit(self) -> None:
        result = self._action(self.session.submit)
        if result is not None:
            self.state.land_message = "Submitted. Your marks are graded below; the key is shown in yellow."

    # ------------------------------------------------------------------ polling
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if os.getppid() != self.parent:  # the launcher is gone: so is the class
                await self.server.stop()
                return
            try:
                with self.state:
                    self._refresh()  # clicks (marks) and the mouse wheel (slice) change the session
            except Exception:  # noqa: BLE001 - the loop must survive
                log.exception("teaching poll failed")

    def _onReady(self, **_) -> None:
        self.state.land_ready = True
        create_task(self._poll())

    # ------------------------------------------------------------------ page
    def _buildUi(self) -> None:
        self.layout = build_page(
            self.server,
            self.layoutManager,
            "LAND teaching session",
            "{{ land_teaching.name }} · SYNTHETIC cases",
            self._panel,
            "{ready: land_ready, error: land_error, message: land_message, "
            "teaching: land_teaching, grade: land_grade}",
        )

    def _panel(self) -> None:
        with v3.VContainer(classes="pa-2"):
            v3.VAlert(
                v_if="land_error",
                text=("land_error",),
                type="error",
                density="compact",
                id="land-error",
                classes="mb-2",
            )
            html.Div("{{ land_message }}", id="land-message", classes="text-body-2 mb-2")
            # --- case
            with html.Div(classes="d-flex align-center mb-2"):
                v3.VBtn(
                    "◀",
                    size="small",
                    id="land-case-prev",
                    disabled=("land_teaching.case_index <= 0",),
                    click=(self.openCase, "[land_teaching.case_index - 1]"),
                )
                html.Div(
                    "{{ land_teaching.case }} ({{ land_teaching.case_index + 1 }} of "
                    "{{ (land_teaching.cases || []).length }})",
                    classes="mx-2",
                    id="land-case",
                )
                v3.VBtn(
                    "▶",
                    size="small",
                    id="land-case-next",
                    disabled=("land_teaching.case_index >= (land_teaching.cases || []).length - 1",),
                    click=(self.openCase, "[land_teaching.case_index + 1]"),
                )
            # --- window, slice, zoom
            with v3.VBtnToggle(
                v_model=("land_window",), mandatory=True, density="compact", divided=True, classes="mb-2"
            ):
                for preset in PRESETS:
                    v3.VBtn(
                        preset,
                        value=preset,
                        click=(self.setWindow, f"['{preset}']"),
                        id=f"land-window-{preset}",
                    )
            with html.Div(classes="d-flex align-center"):
                v3.VBtn("▼", size="small", id="land-slice-down", click=(self.scroll, "[-1]"))
                v3.VSlider(
                    v_model=("land_slice",),
                    min=("land_teaching.slices[0]",),
                    max=("land_teaching.slices[1]",),
                    step=1,
                    hide_details=True,
                    density="compact",
                    classes="mx-2",
                    id="land-slice-slider",
                )
                v3.VBtn("▲", size="small", id="land-slice-up", click=(self.scroll, "[1]"))
            html.Div(
                "slice {{ land_teaching.slice }} of {{ land_teaching.slices[1] }}",
                classes="text-caption",
                id="land-slice",
            )
            with html.Div(classes="d-flex ga-1 my-2"):
                v3.VBtn("Zoom in", size="small", id="land-zoom-in", click=(self.zoom, "[0.2]"))
                v3.VBtn("Zoom out", size="small", id="land-zoom-out", click=(self.zoom, "[-0.2]"))
                v3.VBtn("Fit", size="small", id="land-zoom-fit", click=(self.zoom, "[0]"))
            v3.VDivider(classes="my-2")
            # --- marks
            html.Div(
                "Your marks on this case (click a nodule in the view to mark it):", classes="text-body-2"
            )
            with v3.VList(density="compact", id="land-marks"):
                with v3.VListItem(
                    v_for="m in land_teaching.case_marks", key="m.index", id=("`land-mark-${m.index}`",)
                ):
                    with html.Div(classes="d-flex align-center"):
                        html.Span(
                            "#{{ m.index + 1 }}  x {{ m.x.toFixed(1) }}, y {{ m.y.toFixed(1) }}, "
                            "z {{ m.z.toFixed(1) }} mm",
                            classes="text-caption mr-2",
                        )
                        v3.VBtn(
                            "remove",
                            size="x-small",
                            v_if="!land_teaching.submitted",
                            click=(self.removeMark, "[m.index]"),
                            id=("`land-remove-${m.index}`",),
                        )
            html.Div(
                "{{ (land_teaching.marks || []).length }} mark(s) on all cases", classes="text-caption mb-2"
            )
            v3.VBtn(
                "Submit all cases",
                color="primary",
                block=True,
                id="land-submit",
                click=self.submit,
                disabled=("land_teaching.submitted",),
            )
            # --- grade (only once submitted: before that land_grade is null and holds no key data)
            with html.Div(v_if="land_grade", id="land-grade", classes="mt-3"):
                html.Div(
                    "Detected {{ land_grade.result.detected }} of {{ land_grade.result.nodules }} nodules"
                    " (sensitivity {{ land_grade.result.sensitivity === null ? '-' : "
                    "(100 * land_grade.result.sensitivity).toFixed(0) + ' %' }}), "
                    "{{ land_grade.result.false_positives }} false mark(s) "
                    "({{ land_grade.result.fp_per_case.toFixed(2) }} per case), "
                    "{{ land_grade.result.duplicates }} duplicate(s)",
                    classes="text-body-2",
                    id="land-grade-summary",
                )
                with html.Div(v_if="land_grade.cases[land_teaching.case]", classes="mt-2"):
                    html.Div("This case:", classes="text-caption")
                    with html.Div(
                        v_for="n in land_grade.cases[land_teaching.case].nodules",
                        key="n.nodule",
                        classes="text-caption",
                    ):
                        html.Span(
                            "nodule {{ n.nodule }} ({{ n.diameter_mm.toFixed(0) }} mm, slice {{ n.slice }}):"
                            " {{ n.found ? 'found' : 'MISSED' }}",
                            classes=("n.found ? 'text-success' : 'text-warning'",),
                        )
                        v3.VBtn("go", size="x-small", variant="text", click=(self._goTo, "[n.slice]"))
                    html.Div(
                        "mark #{{ m.index + 1 }}: {{ m.verdict }}",
                        v_for="m in land_grade.cases[land_teaching.case].marks",
                        key="m.index",
                        classes=("m.verdict === 'false' ? 'text-error text-caption' : 'text-caption'",),
                    )

    def _goTo(self, number: int) -> None:
        self._action(self.session.setSlice, int(number))


def serve(args) -> int:
    """``land studio --teaching-set DIR --trainee NAME``: one trainee's page (started by the launcher)."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    t0 = time.monotonic()
    roster = Roster(args.teaching_set, args.work_dir)
    app = TeachingApp(roster, args.trainee)
    if args.secret_file:  # the launcher's per-session secret: only the browser sent here may connect
        app.server.cli.set_defaults(authKeyFile=str(Path(args.secret_file)))
    print(
        f"LAND teaching page for {args.trainee!r} on http://{args.host}:{args.port}/ "
        f"(set up in {time.monotonic() - t0:.1f} s)",
        flush=True,
    )
    try:
        app.server.start(
            host=args.host,
            port=args.port,
            open_browser=False,
            show_connection_info=False,
            timeout=args.idle_exit,
        )
    finally:
        app.session.close()
    return 0
