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
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from aiohttp import ClientSession, ClientTimeout, web

from land.interface.errors import InputError

from .roster import Roster, clean_name, slug

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
    """The teaching session's class page: a reading page per trainee."""

    noun = "reading pages"

    def __init__(self, roster: Roster, args) -> None:
        super().__init__(roster.workDir, args)
        self.roster = roster
        self.instructorToken = args.instructor_token or secrets.token_urlsafe(12)

    def _form(self, error: str = "", status: int = 200) -> web.Response:
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
    def _instructor(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.query.get("token", "").encode(), self.instructorToken.encode())

    async def instructor(self, request: web.Request) -> web.Response:
        if not self._instructor(request):
            return self._page("LAND teaching session", '<p class="error">Wrong instructor token.</p>', 403)
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
        )
        return self._page("LAND teaching session: instructor", body)

    async def instructorCsv(self, request: web.Request) -> web.Response:
        if not self._instructor(request):
            return web.Response(text="wrong instructor token\n", status=403)
        return web.Response(
            text=self.roster.csvText(),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="scores.csv"'},
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self.index),
                web.post("/start", self.start),
                web.get("/instructor", self.instructor),
                web.get("/instructor.csv", self.instructorCsv),
            ]
        )
        app.on_shutdown.append(self.stopChildren)
        return app


def free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return s.getsockname()[1]


def serve(args) -> int:
    """``land studio --teaching-set DIR``: the class page until interrupted."""
    roster = Roster(args.teaching_set, args.work_dir, args.margin_mm)
    launcher = Launcher(roster, args)
    where = f"http://{args.host}:{args.port}/"
    print(
        f"LAND teaching session on {where} ({len(roster.cases)} cases from {roster.setDir}; answers in "
        f"{roster.dir}; at most {launcher.maxSessions} reading pages)",
        flush=True,
    )
    print(f"instructor: {where}instructor?token={quote(launcher.instructorToken)}", flush=True)
    try:
        web.run_app(launcher.app(), host=args.host, port=args.port, print=None)
    finally:
        asyncio.run(launcher.stopChildren())
    return 0
