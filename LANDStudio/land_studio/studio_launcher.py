"""``land studio``: a class at once on Paint and Generate (issue 27 part 3; aiohttp, no Slicer in here).

Each browser gets its own page process (:mod:`land_studio.app` with ``--page``: its own Slicer scene, port,
wslink secret and work folder ``sessions/<browser>/``), started on its first visit and found again on the next
(a cookie names the browser); at most ``--max-sessions`` at once. With ``--token`` the browser gives the class
access code first. Every page's generation goes through the class's one queue (:mod:`land_studio.jobqueue`,
in ``queue/``): one engine at a time on a CPU, one per GPU otherwise; a page shows its place in the queue.
A page whose browser goes away cancels its job (and its job folder is removed); the page process ends after
``--idle-exit`` seconds without a browser. ``/status.json`` (with ``?code=`` the access code): the queue and
the running pages with their memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from land.interface.errors import InputError

from .jobqueue import JobQueue, gpu_count
from .launcher import COOKIE, PageLauncher, free_port  # noqa: F401 - free_port: for callers

REFRESH = '<meta http-equiv="refresh" content="0">'


class StudioLauncher(PageLauncher):
    noun = "LAND Studio pages"

    def __init__(self, args) -> None:
        workDir = Path(args.work_dir or tempfile.mkdtemp(prefix="land-studio-"))
        super().__init__(workDir, args)
        self.workDir = workDir
        slots = args.gpu_slots if args.gpu_slots else max(1, gpu_count())
        self.queue = JobQueue(Path(args.queue_dir).resolve() if args.queue_dir else workDir / "queue", slots)

    def _form(self, error: str = "", status: int = 200) -> web.Response:
        live = sum(c.alive() for c in self.children.values())
        body = (
            (f'<p class="error" id="land-error">{html.escape(error)}</p>' if error else "")
            + "<p>Paint lungs and nodules on a CT and generate a SYNTHETIC CT. Each browser gets its own "
            "page; generation jobs take turns.</p>"
            '<form method="post" action="start"><label>Access code <input type="password" name="code" '
            'id="land-code" autofocus></label><br><button type="submit" id="land-start">Open LAND Studio'
            f"</button></form><p><small>{live} of {self.maxSessions} pages in use</small></p>"
        )
        return self._page("LAND Studio", body, status)

    async def index(self, request: web.Request) -> web.StreamResponse:
        if self.token:
            response = self._form()
            self._ensureCookie(request, response)
            return response
        if COOKIE not in request.cookies:  # the cookie first (a client without cookies gets no page)
            response = self._page("LAND Studio", REFRESH + "<p>Opening LAND Studio…</p>")
            self._ensureCookie(request, response)
            return response
        return await self._open(request, request.cookies[COOKIE])

    async def start(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not self._codeOk(form.get("code")):
            return self._form("Wrong access code.", 403)
        key = request.cookies.get(COOKIE)
        if not key:
            return self._form("Your browser refused the session cookie; allow cookies for this page.", 400)
        return await self._open(request, key)

    async def _open(self, request: web.Request, cookie: str) -> web.StreamResponse:
        key = "b-" + hashlib.sha256(cookie.encode()).hexdigest()[:16]  # no cookie value on disk
        try:
            async with self.lock:
                child = await self._child(key, key)
        except InputError as e:
            return self._form(str(e), 500)
        except RuntimeError as e:
            return self._form(str(e), 503)
        return self._redirect(request, child, cookie)

    def childCommand(self, key: str, name: str, port: int, secretFile: Path) -> list[str]:
        a = self.args
        cmd = [sys.executable, "-m", "land", "studio", "--page", "--host", a.host, "--port", str(port),
               "--secret-file", str(secretFile), "--idle-exit", str(a.idle_exit),
               "--work-dir", str(self.sessionsDir / key), "--queue-dir", str(self.queue.folder),
               "--max-upload-mb", str(a.max_upload_mb)]  # fmt: skip
        if a.demo:
            cmd.append("--demo")
        elif a.ct:
            cmd += ["--ct", str(Path(a.ct).resolve())]
        if a.keep_jobs:
            cmd.append("--keep-jobs")
        if a.verbose:
            cmd.append("--verbose")
        return cmd

    async def status(self, request: web.Request) -> web.Response:
        if not self._codeOk(request.query.get("code")):
            return web.json_response({"error": "wrong access code"}, status=403)
        return web.json_response({"queue": self.queue.snapshot(), "pages": self.liveSessions()})

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [web.get("/", self.index), web.post("/start", self.start), web.get("/status.json", self.status)]
        )
        app.on_shutdown.append(self.stopChildren)
        return app


def serve(args) -> int:
    """``land studio``: the class page until interrupted."""
    launcher = StudioLauncher(args)
    where = f"http://{args.host}:{args.port}/"
    code = f"?code={quote(launcher.token)}" if launcher.token else ""
    print(
        f"LAND Studio on {where} (a page per browser, at most {launcher.maxSessions}; "
        f"{launcher.queue.snapshot()['slots']} generation slot(s); work folder {launcher.workDir})",
        flush=True,
    )
    print(f"status: {where}status.json{code}", flush=True)
    try:
        web.run_app(launcher.app(), host=args.host, port=args.port, print=None)
    finally:
        asyncio.run(launcher.stopChildren())
    return 0
