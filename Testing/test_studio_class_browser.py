"""LAND Studio for a class at once (issue 27 part 3), in real browsers.

``land studio --demo --token CODE`` as a child process; two headless Chromium browsers (separate cookie jars)
open it. Checked: a wrong access code is refused in the page; each browser gets its own page process (its own
port and scene: a nodule added in one is absent from the other); the cap refuses a third; two Generates go
through the class's one queue (the second page shows its place, 1 job ahead); closing the first browser while
its engine runs cancels its job - the engine process ends, its job folder is removed, its queue entry goes -
and the second page's job then runs to the end. Prints the memory per page.
"""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from studio_server import StudioServer
from test_studio_browser import MISSING, click, free_port, wait_for
from test_studio_teaching_browser import chrome

pytestmark = pytest.mark.skipif(bool(MISSING), reason="LAND Studio browser test needs " + ", ".join(MISSING))

CODE = "class-code-27"
START_TIMEOUT = 120.0


class StudioClass(StudioServer):
    """``land studio --demo --token CODE --max-sessions 2`` as a child process."""

    def __init__(self, work: Path) -> None:
        self.port, self.work = free_port(), work
        args = ["--demo", "--token", CODE, "--max-sessions", "2", "--gpu-slots", "1", "--idle-exit", "120",
                "--work-dir", str(work / "w"), "--port", str(self.port)]  # fmt: skip
        super().__init__(args, f"http://127.0.0.1:{self.port}/", work / "launcher.log", START_TIMEOUT)
        self.start()

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.url}status.json?code={CODE}", timeout=10) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def studio_class(tmp_path_factory):
    server = StudioClass(tmp_path_factory.mktemp("studio-class"))
    yield server
    server.stop()


def open_page(driver, url: str, code: str = CODE) -> float:
    """Enter the access code on the class page; seconds until the own page shows the demo masks."""
    from selenium.webdriver.common.by import By

    t0 = time.monotonic()
    driver.get(url)
    driver.find_element(By.ID, "land-code").send_keys(code)
    driver.find_element(By.ID, "land-start").click()
    wait_for(driver, lambda s: s["ready"] and s["loaded"], timeout=START_TIMEOUT, what="the own page")
    return time.monotonic() - t0


def set_field(driver, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.ID, element_id)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(text)
    time.sleep(0.5)  # the field's change reaches the server on the next state flush


def engine_pids(page_pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(page_pid).children(recursive=True)]


def test_a_class_at_once(studio_class, tmp_path):
    import psutil
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = studio_class.url
    a, b = chrome(), chrome()
    try:
        # a wrong access code: a message in the page, no page process
        a.get(url)
        a.find_element(By.ID, "land-code").send_keys("wrong")
        a.find_element(By.ID, "land-start").click()
        error = WebDriverWait(a, 30).until(  # the form posts and a new page loads: wait for it
            lambda d: d.find_elements(By.ID, "land-error")
        )
        assert "Wrong access code" in error[0].text
        assert studio_class.status()["pages"] == []

        seconds = [open_page(a, url), open_page(b, url)]
        port_a, port_b = (urllib.parse.urlparse(d.current_url).port for d in (a, b))
        assert port_a != port_b and studio_class.port not in (port_a, port_b)
        pages = {p["port"]: p for p in studio_class.status()["pages"]}
        assert set(pages) == {port_a, port_b}
        memory = ", ".join(f"{p['rss_mb']} MB" for p in pages.values())
        print(
            f"page start (code entered -> demo masks): {seconds[0]:.1f} s, {seconds[1]:.1f} s; RSS: {memory}"
        )

        # each browser its own scene
        click(a, "land-add-nodule")
        wait_for(a, lambda s: len(s["segments"]) == 5, what="Nodule 4 in browser A")
        state_b = wait_for(b, lambda s: s["ready"], what="browser B")
        assert [s["name"] for s in state_b["segments"]] == ["Lungs", "Nodule 1", "Nodule 2", "Nodule 3"]

        # the cap: a third browser is refused with a message
        jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        jar.open(url, timeout=10).read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            jar.open(url + "start", data=f"code={CODE}".encode(), timeout=60)
        assert (
            refused.value.code == 503
            and "All 2 LAND Studio pages are in use" in refused.value.read().decode()
        )

        # A generates with the full DDPM schedule (long); B's job waits behind it in the one queue
        set_field(a, "land-steps", "1000")
        click(a, "land-generate")
        wait_for(a, lambda s: s["job"]["state"] == "running", timeout=120, what="A's engine running")
        jobs_a = studio_class.work / "w" / "sessions" / pages[port_a]["name"] / "jobs"
        folders = [p for p in jobs_a.iterdir() if p.name.startswith("LANDSynthesis-")]
        assert len(folders) == 1 and any(folders[0].iterdir()), "A's job folder with the engine's inputs"
        engines = engine_pids(pages[port_a]["pid"])
        assert engines, "A's engine process"

        set_field(b, "land-steps", "3")
        click(b, "land-generate")
        state_b = wait_for(b, lambda s: s["job"]["state"] == "queued", timeout=120, what="B queued")
        assert state_b["queue"]["ahead"] == 1 and state_b["queue"]["slot"] is None
        assert "1 job ahead of yours" in state_b["job"]["text"]
        entries = studio_class.status()["queue"]["entries"]
        assert [e["slot"] for e in entries] == [0, None] and entries[0]["pid"] == pages[port_a]["pid"]
        time.sleep(2)
        assert wait_for(b, lambda s: True)["job"]["state"] == "queued"  # still waiting: one engine at a time

        # A's browser goes away mid-generation: its job is cancelled, its engine and job folder are gone
        t0 = time.monotonic()
        a.quit()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            folders[0].exists()
            or any(
                psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in engines
            )  # fmt: skip
        ):
            time.sleep(0.2)
        cancel_s = time.monotonic() - t0
        assert not folders[0].exists(), "A's job folder was not removed"
        assert not [p for p in engines if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        print(
            f"browser A closed mid-generation: engine stopped and job folder removed after {cancel_s:.1f} s"
        )
        assert psutil.pid_exists(pages[port_a]["pid"])  # the page itself waits (--idle-exit) for a reload

        # B's job now holds the slot and runs to the end
        seen = set()

        def finished(s):
            seen.add(s["job"]["state"])
            return s["job"]["state"] in ("succeeded", "failed", "cancelled") or s["error"]

        state_b = wait_for(b, finished, timeout=600, what="B's generation")
        assert state_b["job"]["state"] == "succeeded", state_b
        assert state_b["result"]["name"].startswith("SYNTHETIC CT land-demo-phantom seed 0")
        assert studio_class.status()["queue"]["entries"] == []
    finally:
        for d in (a, b):
            try:
                d.quit()
            except Exception:  # noqa: BLE001 - already closed
                pass
