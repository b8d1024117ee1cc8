"""The class page of a teaching session: ``land studio --teaching-set DIR`` (aiohttp; no Slicer in here).

``/``: a trainee enters a name (and the class access code with ``--token``); the launcher starts that
trainee's own page process (:mod:`land_studio.teaching_app`: its own Slicer scene, its own port, its own
secret) and redirects the browser to it. At most ``--max-sessions`` pages run at once; a trainee who comes
back (same name, same browser) is sent to the running page, or a new one that reloads the marks from disk.
A name is bound to the browser that first used it (a cookie), so nobody opens another trainee's page by
typing their name. ``/instructor?token=T``: every trainee's score, the live pages with their memory;
``/instructor.csv?token=T`` the same as CSV. The answer key stays on the server: only the instructor pages
and a submitted trainee's own page show any of it.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from aiohttp import ClientSession, ClientTimeout, web

from land.interface.errors import InputError

from .jobqueue import JobQueue
from .roster import Roster, clean_name, slug
from .teaching_set_maker import TeachingSetMaker

COOKIE = "land_browser"
START_TIMEOUT_S = 180.0
DEFAULT_MAX_SESSIONS = 8
DEFAULT_IDLE_EXIT_S = 600

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;background:#1e1e1e;color:#eee;margin:3em}}
input,button{{font-size:1.1em;margin:.3em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #666;padding:.3em .6em}} .error{{color:#f66}}
a{{color:#9cf}}</style></head><body><h2>{title}</h2>{body}</body></html>"""


@dataclass
class Child:
    name: str
    port: int
    secret: str
    proc: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.proc.poll() is None


class PageLauncher:
    """Page processes, one per key (a trainee's name, a browser), at most ``--max-sessions`` at once, each on
    its own port with its own wslink secret (``sessions/<key>.secret``, mode 600) and log
    (``sessions/<key>.log``)."""

    noun = "pages"

    def __init__(self, workDir: Path, args) -> None:
        self.args = args
        self.token = args.token or None
        self.maxSessions = int(args.max_sessions)
        self.children: dict[str, Child] = {}
        self.sessionsDir = Path(workDir) / "sessions"
        self.sessionsDir.mkdir(parents=True, exist_ok=True)
        self.lock = asyncio.Lock()

    def _page(self, title: str, body: str, status: int = 200) -> web.Response:
        return web.Response(
            text=PAGE.format(title=html.escape(title), body=body), content_type="text/html", status=status
        )

    @staticmethod
    def _ensureCookie(request: web.Request, response: web.StreamResponse) -> str:
        key = request.cookies.get(COOKIE)
        if not key:
            key = secrets.token_urlsafe(18)
            response.set_cookie(COOKIE, key, max_age=90 * 86400, httponly=True, samesite="Lax")
        return key

    def _codeOk(self, code) -> bool:
        return not self.token or hmac.compare_digest(str(code or "").encode(), self.token.encode())

    def childCommand(self, key: str, name: str, port: int, secretFile: Path) -> list[str]:
        raise NotImplementedError

    def _redirect(self, request: web.Request, child: Child, key: str) -> web.StreamResponse:
        host = request.url.host or "127.0.0.1"
        response = web.HTTPSeeOther(f"http://{host}:{child.port}/?secret={quote(child.secret)}")
        response.set_cookie(COOKIE, key, max_age=90 * 86400, httponly=True, samesite="Lax")
        return response

    async def _child(self, s: str, name: str) -> Child:
        """The running page process of key ``s``, or a new one (refused beyond --max-sessions)."""
        for k in [k for k, c in self.children.items() if not c.alive()]:
            del self.children[k]
        if s in self.children:
            return self.children[s]
        if len(self.children) >= self.maxSessions:
            raise RuntimeError(
                f"All {self.maxSessions} {self.noun} are in use; try again when someone has "
                "finished, or ask the instructor to raise --max-sessions."
            )
        secret = secrets.token_urlsafe(24)
        secret_file = self.sessionsDir / f"{s}.secret"
        secret_file.touch(mode=0o600)
        secret_file.write_text(secret, encoding="utf-8")
        port = free_port(self.args.host)
        log = self.sessionsDir / f"{s}.log"
        cmd = self.childCommand(s, name, port, secret_file)
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        child = Child(name, port, secret, proc, log)
        url = f"http://127.0.0.1:{port}/"
        t0 = time.monotonic()
        async with ClientSession(timeout=ClientTimeout(total=2)) as http:
            while True:
                if not child.alive():
                    raise InputError(f"the page did not start (see {log})")
                try:
                    async with http.get(url) as r:
                        if r.status == 200:
                            break
                except (OSError, asyncio.TimeoutError):
                    pass
                if time.monotonic() - t0 > START_TIMEOUT_S:
                    proc.terminate()
                    raise InputError(f"the page did not start in {START_TIMEOUT_S:g} s (see {log})")
                await asyncio.sleep(0.25)
        self.children[s] = child
        return child

    def liveSessions(self) -> list[dict]:
        import psutil

        rows = []
        for c in self.children.values():
            if not c.alive():
                continue
            try:
                rss = psutil.Process(c.proc.pid).memory_info().rss
            except psutil.Error:
                continue
            rows.append(
                {
                    "name": c.name,
                    "pid": c.proc.pid,
                    "port": c.port,
                    "rss_mb": round(rss / 2**20),
                    "minutes": round((time.monotonic() - c.started) / 60, 1),
                }
            )
        return rows

    async def stopChildren(self, _app=None) -> None:
        for c in self.children.values():
            if c.alive():
                c.proc.terminate()
        for c in self.children.values():
            try:
                c.proc.wait(15)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()


class Launcher(PageLauncher):
    """The teaching session's class page: a reading page per trainee. When ``--teaching-set`` names a folder
    without a set yet, the instructor makes it from the instructor page
    (:mod:`land_studio.teaching_set_maker`) and trainees are asked to wait until it is served."""

    noun = "reading pages"

    def __init__(self, args) -> None:
        self.setDir = Path(args.teaching_set).expanduser().resolve()
        workDir = Path(args.work_dir).resolve() if args.work_dir else self.setDir / "studio"
        self.args, self.workDir = args, workDir
        self.roster: Roster | None = None
        self.noSet = ""  # why there is no set to read yet
        self.loadRoster()
        if self.roster is None:  # made here only in a new or empty folder (or resumed in its own)
            from land.teaching.build import refuse_foreign_folder

            try:
                if self.setDir.exists() and not self.setDir.is_dir():
                    raise InputError(f"{self.setDir} is a file, not a folder")
                refuse_foreign_folder(self.setDir)
            except InputError as e:
                raise InputError(f"{self.noSet}; and no set can be made there: {e}") from None
        super().__init__(workDir, args)
        self.instructorToken = args.instructor_token or secrets.token_urlsafe(12)
        queue = Path(args.queue_dir).resolve() if args.queue_dir else workDir / "queue"
        self.maker = TeachingSetMaker(self.setDir, workDir, JobQueue(queue, args.gpu_slots or None))
        self._poller: asyncio.Task | None = None

    def loadRoster(self) -> None:
        try:
            self.roster = Roster(self.setDir, self.workDir, self.args.margin_mm)
            self.noSet = ""
        except InputError as e:
            self.roster, self.noSet = None, str(e)

    def _form(self, error: str = "", status: int = 200) -> web.Response:
        if self.roster is None:
            body = (
                (f'<p class="error" id="land-error">{html.escape(error)}</p>' if error else "")
                + '<p id="land-no-set">The instructor has not made the teaching set of this session yet; '
                "reload this page when it is ready.</p>"
            )
            return self._page("LAND teaching session", body, status)
        code = (
            '<label>Access code <input type="password" name="code" id="land-code"></label><br>'
            if self.token
            else ""
        )
        live = sum(c.alive() for c in self.children.values())
        body = (
            (f'<p class="error" id="land-error">{html.escape(error)}</p>' if error else "")
            + f"<p>{len(self.roster.cases)} SYNTHETIC cases to read. Enter your name to start or to come "
            "back to "
            "your reads.</p>"
            '<form method="post" action="start"><label>Your name <input name="name" id="land-name" '
            f'maxlength="80" autofocus></label><br>{code}<button type="submit" id="land-start">Start reading'
            f"</button></form><p><small>{live} of {self.maxSessions} reading pages in use</small></p>"
        )
        return self._page("LAND teaching session", body, status)

    async def index(self, request: web.Request) -> web.Response:
        response = self._form()
        self._ensureCookie(request, response)
        return response

    async def start(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not self._codeOk(form.get("code")):
            return self._form("Wrong access code.", 403)
        if self.roster is None:
            return self._form("There is no teaching set to read yet.", 503)
        key = request.cookies.get(COOKIE) or secrets.token_urlsafe(18)
        try:
            name = clean_name(str(form.get("name", "")))
            self.roster.claim(name, key)
            async with self.lock:
                child = await self._child(slug(name), name)
        except InputError as e:
            return self._form(str(e), 409 if "taken" in str(e) else 400)
        except RuntimeError as e:
            return self._form(str(e), 503)
        return self._redirect(request, child, key)

    def childCommand(self, key: str, name: str, port: int, secretFile: Path) -> list[str]:
        assert self.roster is not None
        return [
            sys.executable,
            "-m",
            "land",
            "studio",
            "--teaching-set",
            str(self.roster.setDir),
            "--work-dir",
            str(self.roster.workDir),
            "--trainee",
            name,
            "--host",
            self.args.host,
            "--port",
            str(port),
            "--secret-file",
            str(secretFile),
            "--idle-exit",
            str(self.args.idle_exit),
            "--margin-mm",
            repr(self.roster.margin),
        ]

    # ------------------------------------------------------------------ instructor
    def _instructor(self, request: web.Request, token: str | None = None) -> bool:
        token = request.query.get("token", "") if token is None else token
        return hmac.compare_digest(str(token).encode(), self.instructorToken.encode())

    def _wrongToken(self) -> web.Response:
        return self._page("LAND teaching session", '<p class="error">Wrong instructor token.</p>', 403)

    def makerState(self) -> dict:
        return {"set_ready": self.roster is not None, "no_set": self.noSet,
                "cases": len(self.roster.cases) if self.roster else 0, **self.maker.state()}  # fmt: skip

    async def instructor(self, request: web.Request) -> web.Response:
        if not self._instructor(request):
            return self._wrongToken()
        if self.roster is None:  # make the set from here
            state = html.escape(json.dumps(self.makerState()))
            refresh = '<meta http-equiv="refresh" content="2">' if self.maker.running else ""
            body = (
                f"{refresh}<p>No teaching set in {html.escape(str(self.setDir))} yet.</p>"
                + self.maker.html(self.instructorToken)
                + f'<pre id="land-state" style="display:none">{state}</pre>'
            )
            return self._page("LAND teaching session: instructor", body)
        rows = self.roster.rows()
        head = (
            "name",
            "submitted_at",
            "marks",
            "detected",
            "nodules",
            "sensitivity",
            "false_positives",
            "fp_per_case",
            "duplicates",
        )

        def cell(v):
            return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

        table = "".join("<tr>" + "".join(f"<td>{cell(r[k])}</td>" for k in head) + "</tr>" for r in rows)
        live = "".join(
            f"<li>{html.escape(s['name'])}: pid {s['pid']}, {s['rss_mb']} MB, {s['minutes']} min</li>"
            for s in self.liveSessions()
        )
        token = quote(self.instructorToken)
        body = (
            f"<p>{len(rows)} trainee(s), {len(self.roster.cases)} cases, "
            f"key {html.escape(str(self.roster.setDir))}"
            f'</p><table id="land-scores"><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>{table}</table>'
            f'<p><a id="land-csv" href="instructor.csv?token={token}">Download CSV</a></p>'
            f"<h3>Reading pages running ({self.maxSessions} at most)</h3><ul>{live or '<li>none</li>'}</ul>"
            f'<pre id="land-state" style="display:none">{html.escape(json.dumps(self.makerState()))}</pre>'
        )
        return self._page("LAND teaching session: instructor", body)

    async def instructorCsv(self, request: web.Request) -> web.Response:
        if not self._instructor(request):
            return web.Response(text="wrong instructor token\n", status=403)
        if self.roster is None:
            return web.Response(text="no teaching set yet\n", status=404)
        return web.Response(
            text=self.roster.csvText(),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="scores.csv"'},
        )

    # ------------------------------------------------------------------ making the set (instructor)
    def _back(self) -> web.StreamResponse:
        return web.HTTPSeeOther(f"/instructor?token={quote(self.instructorToken)}")

    async def makeSet(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not self._instructor(request, form.get("token", "")):
            return self._wrongToken()
        if self.roster is not None:
            self.maker.error = "This session already has its teaching set."
        else:
            try:
                self.maker.start(form)
            except Exception as e:  # noqa: BLE001 - shown on the instructor page
                self.maker.error = str(e) or type(e).__name__
        return self._back()

    async def cancelSet(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if not self._instructor(request, form.get("token", "")):
            return self._wrongToken()
        self.maker.cancel()
        return self._back()

    async def makeJson(self, request: web.Request) -> web.Response:
        if not self._instructor(request):
            return web.json_response({"error": "wrong instructor token"}, status=403)
        return web.json_response(self.makerState())

    async def _pollMaker(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            try:
                if self.maker.poll() == "succeeded":
                    self.loadRoster()  # served for reading from now on
            except Exception:  # noqa: BLE001 - the loop must survive; the page shows the maker's error
                logging.getLogger("land_studio").exception("teaching set poll failed")

    async def _startPoller(self, _app) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._pollMaker())

    async def _stopMaker(self, _app) -> None:
        if self._poller is not None:
            self._poller.cancel()
        self.maker.close()

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self.index),
                web.post("/start", self.start),
                web.get("/instructor", self.instructor),
                web.get("/instructor.csv", self.instructorCsv),
                web.get("/instructor/make.json", self.makeJson),
                web.post("/instructor/make", self.makeSet),
                web.post("/instructor/cancel", self.cancelSet),
            ]
        )
        app.on_startup.append(self._startPoller)
        app.on_shutdown.append(self._stopMaker)
        app.on_shutdown.append(self.stopChildren)
        return app


def free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return s.getsockname()[1]


def serve(args) -> int:
    """``land studio --teaching-set DIR``: the class page until interrupted."""
    launcher = Launcher(args)
    where = f"http://{args.host}:{args.port}/"
    roster = launcher.roster
    what = (
        f"{len(roster.cases)} cases from {roster.setDir}; answers in {roster.dir}"
        if roster
        else f"no teaching set in {launcher.setDir} yet ({launcher.noSet}): make it from the instructor page"
    )
    most = f"at most {launcher.maxSessions} reading pages"
    print(f"LAND teaching session on {where} ({what}; {most})", flush=True)
    print(f"instructor: {where}instructor?token={quote(launcher.instructorToken)}", flush=True)
    try:
        web.run_app(launcher.app(), host=args.host, port=args.port, print=None)
    finally:
        asyncio.run(launcher.stopChildren())
    return 0
