"""The LAND Studio page (trame, Vuetify 3) around a :class:`~land_studio.session.StudioSession`.

Left: load (a CT file upload or server path, the demo masks), the LAND segment list (Lungs, Nodule N with a
texture 1-5 each), the segment editor's Paint / Erase with a brush size, "Lungs from CT", the model card,
Generate (sampler steps, seed) with progress and Cancel, and Download. Right: Slicer's slice view.

The page's state is also written, as JSON, into a hidden element ``#land-state`` so a browser test reads what
the page shows instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import tempfile
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
from trame_slicer.utils import write_client_files_to_dir  # noqa: E402

from land.interface.contract import DEFAULT_SAMPLER, DEFAULT_STEPS, MAX_SEED, SAMPLER_TITLES  # noqa: E402

from .page_frame import build_page  # noqa: E402
from .session import StudioSession  # noqa: E402

log = logging.getLogger("land_studio")
POLL_SECONDS = 0.2
MAX_UPLOAD_MB = 512
FAVICON = (
    "data:image/svg+xml,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>"
    "<circle cx='8' cy='8' r='7' fill='%23c5a591'/></svg>"
)


class StudioApp:
    def __init__(self, server=None, work_dir: str | None = None, token: str | None = None,
                 max_upload_mb: int = MAX_UPLOAD_MB, queue=None,
                 keep_jobs: bool = False) -> None:  # fmt: skip
        self.server = server or get_server("land-studio", client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.token = token or None
        self.maxUploadBytes = int(max_upload_mb) * 1024 * 1024
        self.slicerApp = SlicerApp()
        register_rca_factories(self.slicerApp.view_manager, self.server)
        self.layoutManager = LayoutManager(self.slicerApp.scene, self.slicerApp.view_manager, self.server)
        self.layoutManager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.session = StudioSession(self.slicerApp, work_dir, queue=queue, keep_jobs=keep_jobs)
        self.parent: int | None = None  # the launcher's pid, when a launcher started this page
        self.clients: set[str] = set()  # the browsers' websockets (the launcher gives a page one browser)
        self.session.editor.segmentation_modified.connect(self._segmentsChanged)
        self._initState()
        self._buildUi()
        self.layoutManager.set_layout("Axial Only")
        self.ctrl.on_server_ready.add(self._onReady)

    # ------------------------------------------------------------------ state
    def _initState(self) -> None:
        s = self.state
        s.trame__title = "LAND Studio"
        s.trame__favicon = FAVICON
        s.land_authorized = self.token is None
        s.land_access_code = ""
        s.land_ready = False
        s.land_loaded = False
        s.land_message = "Start from the demo masks, or load a CT to paint on."
        s.land_error = ""
        s.land_segments = []
        s.land_active_segment = ""
        s.land_effect = "none"
        s.land_brush_mm = self.session.brushMm
        s.land_ct_path = ""
        s.land_upload = None
        s.land_samplers = [{"value": k, "title": t} for k, t in SAMPLER_TITLES.items()]
        s.land_sampler = DEFAULT_SAMPLER
        s.land_steps = DEFAULT_STEPS[DEFAULT_SAMPLER]
        s.land_seed = 0
        s.land_job = {"state": "idle", "fraction": 0.0, "text": ""}
        s.land_warnings = []
        s.land_lungs_running = False
        s.land_result = None
        s.land_queue = None
        s.land_threshold = [-1000, -400]
        s.land_island_size = 1000
        s.land_scissors_mode = self.session.scissorsMode
        # the server's name of the Generate action: what its button sends (a test sends it too)
        s.land_triggers = {"generate": self.ctrl.trigger_name(self.generate)}
        try:
            s.land_model = self.session.modelCard()
        except Exception as e:  # noqa: BLE001 - no model: the page says so, painting still works
            s.land_model = {"name": "", "summary": str(e), "guidance": "", "card": "", "trained": False}
        self.state.change("land_brush_mm")(self._onBrush)
        self.state.change("land_upload")(self._onUpload)
        self.state.change("land_sampler")(self._onSampler)

    def _segmentsChanged(self, *_args) -> None:
        self._refreshSegments()

    def _refreshSegments(self) -> None:
        self.state.land_segments = self.session.segments()
        self.state.land_active_segment = self.session.activeSegmentId()
        self.state.land_loaded = self.session.segmentation is not None
        self.state.dirty("land_segments")

    # ------------------------------------------------------------------ actions
    def _action(self, function, *args) -> Any:
        """Run a page action: refused without the access code; any failure becomes the page's message."""
        if not self.state.land_authorized:
            self.state.land_error = "Enter the access code first."
            return None
        self.state.land_error = ""
        try:
            return function(*args)
        except Exception as e:  # noqa: BLE001 - shown in the page, nothing is lost
            log.exception("LAND Studio action failed")
            self.state.land_error = str(e) or type(e).__name__
            return None
        finally:
            self._refreshSegments()
            self.state.land_effect = self.session.effect

    def checkAccessCode(self) -> None:
        code = str(self.state.land_access_code or "")
        if self.token is None or hmac.compare_digest(code.encode(), self.token.encode()):
            self.state.land_authorized, self.state.land_error = True, ""
        else:
            self.state.land_error = "Wrong access code."

    def loadDemo(self) -> None:
        message = self._action(self.session.loadDemoMasks)
        if message:
            self.state.land_message, self.state.land_result = message, None

    def loadPath(self) -> None:
        path = str(self.state.land_ct_path or "").strip()
        message = self._action(self.session.loadCT, [Path(path).expanduser()] if path else [])
        if message:
            self.state.land_message, self.state.land_result = message, None

    def _onUpload(self, land_upload=None, **_) -> None:
        files = land_upload if isinstance(land_upload, list) else [land_upload] if land_upload else []
        if not files:
            return
        self.state.land_upload = None
        too_big = [f.get("name", "?") for f in files if int(f.get("size") or 0) > self.maxUploadBytes]
        if too_big:
            self.state.land_error = (
                f"{', '.join(too_big)} is larger than the upload limit of {self.maxUploadBytes // 2**20} MB; "
                "give its path on the server instead."
            )
            return
        folder = Path(tempfile.mkdtemp(prefix="upload-", dir=self.session.workDir))
        paths = write_client_files_to_dir(files, folder)
        message = self._action(self.session.loadCT, [Path(p) for p in paths])
        if message:
            self.state.land_message, self.state.land_result = message, None

    def selectSegment(self, segmentId: str) -> None:
        self._action(self.session.selectSegment, segmentId)

    def addNodule(self) -> None:
        self._action(self.session.addNodule, 5)

    def addLungs(self) -> None:
        self._action(self.session.addLungs)

    def removeSegment(self, segmentId: str) -> None:
        self._action(self.session.removeSegment, segmentId)

    def setTexture(self, segmentId: str, texture: int) -> None:
        self._action(self.session.setTexture, segmentId, int(texture))

    def setEffect(self, name: str) -> None:
        self._action(self.session.setEffect, name)

    def _onBrush(self, land_brush_mm=None, **_) -> None:
        try:
            self.session.setBrush(float(land_brush_mm))
        except (TypeError, ValueError):
            pass

    def _onSampler(self, land_sampler=None, **_) -> None:
        if land_sampler in DEFAULT_STEPS:
            self.state.land_steps = DEFAULT_STEPS[land_sampler]

    def lungsFromCT(self) -> None:
        if self._action(self.session.startLungsFromCT) is None and self.state.land_error:
            return
        self.state.land_lungs_running = True
        self.state.land_message = "Lungs from CT: segmenting…"

    def generate(self) -> None:
        def start():
            try:
                steps = int(self.state.land_steps) if str(self.state.land_steps).strip() else None
                seed = int(self.state.land_seed)
            except (TypeError, ValueError):
                raise ValueError("Steps and seed must be whole numbers.") from None
            if not 0 <= seed <= MAX_SEED:
                raise ValueError(f"The seed must be 0..{MAX_SEED}.")
            self.state.land_warnings = []
            self.session.startGeneration(
                {"sampler": self.state.land_sampler, "steps": steps, "seed": seed},
                onProgress=self._onProgress,
            )
            return True

        if self._action(start):
            self.state.land_job = {"state": "preparing", "fraction": 0.0, "text": "Preparing inputs…"}

    def cancel(self) -> None:
        self._action(self.session.cancelGeneration)

    def _onProgress(self, event: dict[str, Any]) -> None:
        if "warning" in event:
            self.state.land_warnings = [*self.state.land_warnings, event["warning"]]
            return
        self.state.land_job = {
            "state": event.get("state", ""),
            "fraction": float(event.get("fraction", 0.0)),
            "text": event.get("text", ""),
        }

    def download(self):
        path = self._action(self.session.writeResult)
        if path is None:
            return None
        self.state.land_result = {**(self.state.land_result or {}), "path": str(path)}
        return self.server.protocol.addAttachment(Path(path).read_bytes())

    def downloadDicom(self):
        path = self._action(self.session.writeDicom)
        if path is None:
            return None
        return self.server.protocol.addAttachment(Path(path).read_bytes())

    def applyThreshold(self) -> None:
        voxels = self._action(self.session.applyThreshold, self.state.land_threshold[0],
                              self.state.land_threshold[1])  # fmt: skip
        if voxels is not None:
            self.state.land_message = f"Threshold applied: {voxels} voxels in the segment."

    def applyIslands(self, mode: str) -> None:
        voxels = self._action(self.session.applyIslands, mode, int(self.state.land_island_size or 0))
        if voxels is not None:
            self.state.land_message = f"Islands ({mode.replace('_', ' ')}): {voxels} voxels left."

    def setScissorsMode(self, mode: str) -> None:
        self._action(self.session.setScissorsMode, mode)
        self.state.land_scissors_mode = self.session.scissorsMode

    # ------------------------------------------------------------------ polling
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if (
                self.parent is not None and os.getppid() != self.parent
            ):  # the launcher is gone: so is the class
                self.browserGone()
                await self.server.stop()
                return
            try:
                with self.state:
                    self._pollOnce()
            except Exception:  # noqa: BLE001 - the loop must survive; the page shows the error
                log.exception("LAND Studio poll failed")

    def _pollOnce(self) -> None:
        s = self.session
        if s.lungsTask is not None:
            try:
                summary = s.pollLungs()
            except Exception as e:  # noqa: BLE001
                self.state.land_lungs_running = False
                self.state.land_error = str(e)
            else:
                if summary is not None:
                    self.state.land_lungs_running = False
                    self.state.land_message = summary
                    self._refreshSegments()
        job = s.logic.job
        if job is not None and not job.done:
            active = s.pollGeneration()
            self.state.land_queue = s.queuePlace
            if not active:
                self._refreshSegments()
                if job.state == job.SUCCEEDED and s.result is not None:
                    self.state.land_result = {
                        "name": s.result.GetName(),
                        "node_id": s.result.GetID(),
                        "description": s.result.GetAttribute("LAND.Description") or "",
                        "seconds": round(job.elapsed, 1),
                    }
                    self.state.land_message = f"Generated {s.result.GetName()} in {job.elapsed:.0f} s."
                elif job.state == job.FAILED:
                    self.state.land_error = job.error or "the generation failed"

    def _onReady(self, **_) -> None:
        self.state.land_ready = True
        self._watchClients()
        create_task(self._poll())

    def _watchClients(self) -> None:
        """Know when the last browser goes away (wslink's connect / close of a websocket)."""
        protocol = self.server.protocol
        onConnect, onClose = protocol.onConnect, protocol.onClose

        def connected(request, client_id):
            self.clients.add(client_id)
            return onConnect(request, client_id)

        def closed(client_id):
            self.clients.discard(client_id)
            if not self.clients:
                self.browserGone()
            return onClose(client_id)

        protocol.onConnect, protocol.onClose = connected, closed

    def browserGone(self) -> None:
        """The tab was closed (or the browser went away): cancel its generation; the job's folder goes with
        it (LANDSynthesisLogic removes it when the cancelled job ends) and the queue moves on."""
        if self.session.logic.isRunning():
            log.warning("LAND Studio: the browser went away; cancelling its generation")
            self.session.cancelGeneration()

    # ------------------------------------------------------------------ page
    def _buildUi(self) -> None:
        self.layout = build_page(
            self.server,
            self.layoutManager,
            "LAND Studio",
            "Every generated image is SYNTHETIC",
            self._panel,
            "{ready: land_ready, authorized: land_authorized, loaded: land_loaded, "
            "segments: land_segments, active: land_active_segment, effect: land_effect, "
            "job: land_job, result: land_result, error: land_error, message: land_message, "
            "warnings: land_warnings, lungs_running: land_lungs_running, queue: land_queue, "
            "triggers: land_triggers}",
        )

    def _panel(self) -> None:
        with v3.VContainer(classes="pa-2"):
            with html.Div(v_if="!land_authorized"):
                v3.VTextField(v_model=("land_access_code",), label="Access code", type="password",
                              id="land-access-code", density="compact")  # fmt: skip
                v3.VBtn("Enter", click=self.checkAccessCode, id="land-access-enter", block=True)
            with html.Div(v_if="land_authorized"):
                v3.VAlert(v_if="land_error", text=("land_error",), type="error", density="compact",
                          id="land-error", classes="mb-2")  # fmt: skip
                html.Div("{{ land_message }}", id="land-message", classes="text-body-2 mb-2")
                # --- load
                v3.VBtn("Start from the demo masks", click=self.loadDemo, id="land-demo", block=True,
                        classes="mb-2", disabled=("land_job.state == 'running'",))  # fmt: skip
                v3.VFileInput(v_model=("land_upload",), label="Upload a CT (NIfTI, NRRD, DICOM files)",
                              multiple=True, density="compact", id="land-upload", show_size=True)  # fmt: skip
                with html.Div(classes="d-flex"):
                    v3.VTextField(v_model=("land_ct_path",), label="or a CT path on the server",
                                  density="compact", id="land-ct-path")  # fmt: skip
                    v3.VBtn("Load", click=self.loadPath, id="land-load-path", classes="ml-1")
                v3.VDivider(classes="my-2")
                # --- segments
                with html.Div(classes="d-flex flex-wrap ga-1 mb-2"):
                    v3.VBtn("Lungs", click=self.addLungs, id="land-add-lungs", size="small",
                            disabled=("!land_loaded",))  # fmt: skip
                    v3.VBtn("Add nodule", click=self.addNodule, id="land-add-nodule", size="small",
                            disabled=("!land_loaded",))  # fmt: skip
                    v3.VBtn("Lungs from CT", click=self.lungsFromCT, id="land-lungs-from-ct", size="small",
                            loading=("land_lungs_running",), disabled=("!land_loaded",))  # fmt: skip
                with v3.VList(density="compact", id="land-segments"):
                    with v3.VListItem(
                        v_for="seg in land_segments",
                        key="seg.id",
                        active=("seg.id === land_active_segment",),
                        click=(self.selectSegment, "[seg.id]"),
                        id=("`land-seg-${seg.id}`",),
                    ):
                        with html.Div(classes="d-flex align-center"):
                            html.Span(
                                style=(
                                    "{background: seg.color, width: '14px', height: '14px', "
                                    "display: 'inline-block', borderRadius: '3px'}",
                                ),  # fmt: skip
                                classes="mr-2",
                            )
                            html.Span("{{ seg.name }}", classes="mr-2")
                            html.Span("{{ seg.voxels }} vox"
                                      "{{ seg.kind === 'nodule' && seg.voxels "
                                      "? ', ' + seg.diameter_mm + ' mm' "
                                      ": '' }}",
                                      classes="text-caption text-grey")  # fmt: skip
                        with html.Div(v_if="seg.kind === 'nodule'", classes="d-flex align-center mt-1"):
                            html.Span("texture", classes="text-caption mr-1")
                            for t in range(1, 6):
                                v3.VBtn(
                                    str(t),
                                    size="x-small",
                                    classes="mr-1",
                                    variant=(f"seg.texture === {t} ? 'flat' : 'outlined'",),
                                    color=(f"seg.texture === {t} ? 'primary' : ''",),
                                    click=(self.setTexture, f"[seg.id, {t}]"),
                                    click_stop=True,
                                    id=(f"`land-tex-${{seg.id}}-{t}`",),
                                )
                            html.Span("{{ seg.textureText }}", classes="text-caption")
                with v3.VBtnToggle(v_model=("land_effect",), mandatory=True, density="compact",
                                   classes="my-2", divided=True):  # fmt: skip
                    v3.VBtn("View", value="none", click=(self.setEffect, "['none']"), id="land-effect-none")
                    v3.VBtn("Paint", value="paint", click=(self.setEffect, "['paint']"), id="land-paint",
                            disabled=("!land_loaded",))  # fmt: skip
                    v3.VBtn("Erase", value="erase", click=(self.setEffect, "['erase']"), id="land-erase",
                            disabled=("!land_loaded",))  # fmt: skip
                with v3.VBtnToggle(v_model=("land_effect",), density="compact", classes="mb-2", divided=True):
                    for name in ("threshold", "islands", "scissors"):
                        v3.VBtn(name.capitalize(), value=name, click=(self.setEffect, f"['{name}']"),
                                id=f"land-{name}", disabled=("!land_loaded",))  # fmt: skip
                with html.Div(v_if="land_effect === 'threshold'", classes="mb-2"):
                    v3.VRangeSlider(v_model=("land_threshold",), min=-1024, max=1500, step=1,
                                    thumb_label=True, label="HU", density="compact", hide_details=True,
                                    id="land-threshold-range")  # fmt: skip
                    v3.VBtn(
                        "Apply threshold", click=self.applyThreshold, size="small", id="land-threshold-apply"
                    )
                with html.Div(v_if="land_effect === 'islands'", classes="d-flex flex-wrap ga-1 mb-2"):
                    v3.VBtn("Keep largest", click=(self.applyIslands, "['keep_largest']"), size="small",
                            id="land-islands-largest")  # fmt: skip
                    v3.VTextField(v_model=("land_island_size",), label="min voxels", density="compact",
                                  hide_details=True, style="max-width: 100px;",
                                  id="land-island-size")  # fmt: skip
                    v3.VBtn("Remove small", click=(self.applyIslands, "['remove_small']"), size="small",
                            id="land-islands-small")  # fmt: skip
                with html.Div(v_if="land_effect === 'scissors'", classes="mb-2"):
                    html.Div("Draw an outline in the view:", classes="text-caption")
                    with v3.VBtnToggle(v_model=("land_scissors_mode",), mandatory=True, density="compact",
                                       divided=True):  # fmt: skip
                        for mode in ("erase_inside", "erase_outside", "fill_inside", "fill_outside"):
                            v3.VBtn(mode.replace("_", " "), value=mode, size="x-small",
                                    id=f"land-scissors-{mode}",
                                    click=(self.setScissorsMode, f"['{mode}']"))  # fmt: skip
                v3.VSlider(v_model=("land_brush_mm",), min=1, max=40, step=1, label="Brush (mm)",
                           thumb_label=True, density="compact", hide_details=True)  # fmt: skip
                v3.VDivider(classes="my-2")
                # --- model and generation
                html.Div("{{ land_model.summary }}", classes="text-caption", id="land-model-summary")
                html.Div("recommended guidance: {{ land_model.guidance }}", classes="text-caption mb-1")
                with v3.VExpansionPanels(density="compact", classes="mb-2"):
                    with v3.VExpansionPanel(title="Model card"):
                        with v3.VExpansionPanelText():
                            html.Pre("{{ land_model.card }}", style="white-space: pre-wrap; font-size: 11px;")
                with html.Div(classes="d-flex ga-1"):
                    v3.VSelect(v_model=("land_sampler",), items=("land_samplers",), label="Sampler",
                               density="compact", id="land-sampler")  # fmt: skip
                    v3.VTextField(v_model=("land_steps",), label="Steps", density="compact", id="land-steps",
                                  style="max-width: 80px;")  # fmt: skip
                    v3.VTextField(v_model=("land_seed",), label="Seed", density="compact", id="land-seed",
                                  style="max-width: 100px;")  # fmt: skip
                with html.Div(classes="d-flex ga-1"):
                    v3.VBtn("Generate", click=self.generate, color="primary", id="land-generate",
                            disabled=("!land_loaded || ['preparing','queued','running','cancelling',"
                                      "'loading'].includes(land_job.state)",))  # fmt: skip
                    v3.VBtn("Cancel", click=self.cancel, id="land-cancel",
                            disabled=("!['preparing','queued','running','loading']"
                                      ".includes(land_job.state)",))  # fmt: skip
                v3.VProgressLinear(model_value=("land_job.fraction * 100",), height=8, classes="my-2",
                                   id="land-progress")  # fmt: skip
                html.Div("{{ land_job.text }}", classes="text-caption", id="land-job-text")
                html.Div("{{ w }}", v_for="w in land_warnings", key="w", classes="text-caption text-warning")
                with html.Div(v_if="land_result", classes="mt-2"):
                    html.Div("{{ land_result.name }}", id="land-result-name", classes="text-body-2")
                    v3.VBtn(
                        "Download NIfTI",
                        id="land-download",
                        click=(
                            "utils.download('synthetic_ct.nii.gz', trigger('"
                            f"{self.server.controller.trigger_name(self.download)}"
                            "'), 'application/octet-stream')"
                        ),
                    )
                    v3.VBtn(
                        "Download DICOM (zip)",
                        id="land-download-dicom",
                        classes="ml-1",
                        click=(
                            "utils.download('synthetic_ct_dicom.zip', trigger('"
                            f"{self.server.controller.trigger_name(self.downloadDicom)}"
                            "'), 'application/zip')"
                        ),
                    )


def main(args) -> int:
    """``land studio --page``: one page, served until interrupted (Ctrl-C) or, when the launcher started
    it (``--secret-file``), until no browser was connected for ``--idle-exit`` s or the launcher is gone."""
    import shutil

    from .jobqueue import JobQueue

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    t0 = time.monotonic()
    queue = JobQueue(args.queue_dir) if args.queue_dir else None
    app = StudioApp(work_dir=args.work_dir, token=args.token, max_upload_mb=args.max_upload_mb, queue=queue,
                    keep_jobs=args.keep_jobs)  # fmt: skip
    if args.demo:
        app.loadDemo()
    elif args.ct:
        app.state.land_ct_path = args.ct
        app.loadPath()
    launched = bool(args.secret_file)
    if launched:  # the launcher's per-browser secret: only the browser sent here may connect
        app.parent = os.getppid()
        app.server.cli.set_defaults(authKeyFile=str(Path(args.secret_file)))
    print(
        f"LAND Studio on http://{args.host}:{args.port}/ (set up in {time.monotonic() - t0:.1f} s)",
        flush=True,
    )
    try:
        app.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                         timeout=args.idle_exit if launched else None)  # fmt: skip
    finally:
        app.session.close()
        if launched and not args.keep_jobs:  # this browser's uploads and results end with its page
            shutil.rmtree(app.session.workDir, ignore_errors=True)
    return 0
