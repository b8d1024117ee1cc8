"""Making a teaching set from the instructor page of LAND Studio (issue 27), in real browsers.

``land studio --teaching-set NEW_DIR --queue-dir Q`` on a folder without a set: a trainee is asked to wait;
the instructor fills the page's form (cases, nodule rate, textures, diameters, pair rate, steps, seed).
The class's generation queue is held by another job (a real entry of this test's process in ``Q``), so the set
waits with its place shown; Cancel stops it before any engine ran; made again, it waits, runs when the queue
frees (progress shown), and is then served: the trainee's page reads its cases. The answer key equals the one
``land teaching-set`` writes from the command line with the same options (but for the DICOM UIDs, new on every
write).

Skipped with the reason when the studio extra, selenium or Chromium are missing (as test_studio_browser.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LANDStudio"))

import pytest  # noqa: E402
from studio_server import StudioServer  # noqa: E402
from test_studio_browser import MISSING, click, free_port, wait_for  # noqa: E402
from test_studio_teaching_browser import chrome  # noqa: E402
from test_teaching import run_cli  # noqa: E402

pytestmark = pytest.mark.skipif(bool(MISSING), reason="LAND Studio browser test needs " + ", ".join(MISSING))

TOKEN = "instructor-27"
START_TIMEOUT = 120.0
OPTIONS = {"cases": "2", "nodule_rate": "1", "textures": "5", "diameters": "10-16", "pair_rate": "0.5",
           "steps": "2", "seed": "3"}  # fmt: skip


class Server(StudioServer):
    def __init__(self, work: Path) -> None:
        self.port, self.work = free_port(), work
        self.set_dir, self.queue = work / "session-set", work / "queue"
        args = ["--teaching-set", str(self.set_dir), "--queue-dir", str(self.queue),
                "--instructor-token", TOKEN, "--max-sessions", "1", "--port", str(self.port)]  # fmt: skip
        super().__init__(args, f"http://127.0.0.1:{self.port}/", work / "launcher.log", START_TIMEOUT)
        self.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("make-set"))
    yield s
    s.stop()


def press(driver, element_id: str, timeout: float = 30.0) -> None:
    """Click an element of a page that reloads itself while a set is being made (retry a stale element)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    t0 = time.monotonic()
    while True:
        try:
            click(driver, element_id)
            return
        except (StaleElementReferenceException, NoSuchElementException):
            if time.monotonic() - t0 > timeout:
                raise
            time.sleep(0.2)


def fill_form(driver, values: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By

    for name, value in values.items():
        field = driver.find_element(By.ID, f"land-make-{name}")
        field.clear()
        field.send_keys(value)


def without_uids(value):
    if isinstance(value, dict):
        return {k: without_uids(v) for k, v in value.items() if not k.endswith("_uid")}
    if isinstance(value, list):
        return [without_uids(v) for v in value]
    return value


def test_instructor_makes_the_set_through_the_queue(server, tmp_path):
    from land_studio.jobqueue import JobQueue
    from selenium.webdriver.common.by import By

    instructor, trainee = chrome(), chrome()
    try:
        trainee.get(server.url)
        assert "not made the teaching set" in trainee.find_element(By.ID, "land-no-set").text

        instructor.get(f"{server.url}instructor?token={TOKEN}")
        state = wait_for(instructor, lambda s: "set_ready" in s, what="the instructor page")
        assert not state["set_ready"] and state["job"]["state"] == "idle"
        # the form shows land teaching-set's own defaults (land.interface.contract.TeachingSetOptions)
        assert instructor.find_element(By.ID, "land-make-textures").get_attribute("value") == "1,3,5"
        assert instructor.find_element(By.ID, "land-make-diameters").get_attribute("value") == "4-25"

        # a bad value: the contract's message in the page, nothing started
        fill_form(instructor, {**OPTIONS, "pair_rate": "2"})
        press(instructor, "land-make-start")
        state = wait_for(instructor, lambda s: s["error"], what="the pair-rate message")
        assert "pair rate" in state["error"] and state["job"]["state"] == "idle"

        # another job of the class holds the one generation slot: the set waits for it
        queue = JobQueue(server.queue)
        other = queue.join("a generation")
        fill_form(instructor, OPTIONS)
        press(instructor, "land-make-start")
        state = wait_for(instructor, lambda s: s["job"]["state"] == "queued", what="the set queued")
        assert state["queue"]["ahead"] == 1 and "1 job ahead" in state["job"]["text"]
        assert [e["label"] for e in queue.snapshot()["entries"]] == ["a generation", "teaching set"]
        press(instructor, "land-make-cancel")
        state = wait_for(instructor, lambda s: s["job"]["state"] == "cancelled", what="the cancel")
        assert [e["label"] for e in queue.snapshot()["entries"]] == ["a generation"]
        assert not (server.set_dir / "teaching.json").exists()  # no engine ran

        # again (the form kept the values); the queue frees, the set runs, progress reaches the page
        press(instructor, "land-make-start")
        wait_for(instructor, lambda s: s["job"]["state"] == "queued", what="the set queued again")
        queue.leave(other)
        fractions = []

        def done(s):
            fractions.append(s["job"]["fraction"])
            return s["job"]["state"] in ("succeeded", "failed", "cancelled") or s["error"]

        t0 = time.monotonic()
        state = wait_for(instructor, done, timeout=600, what="the teaching set")
        seconds = time.monotonic() - t0
        assert state["job"]["state"] == "succeeded", state
        assert any(0 < f < 1 for f in fractions), fractions
        assert state["set_ready"] and state["cases"] == 3  # 2 cases + 1 matched twin
        assert queue.snapshot()["entries"] == []
        print(f"teaching set of 3 cases made from the page in {seconds:.0f} s")

        # the same key as land teaching-set from the command line with the same options
        argv = ["teaching-set", "--out", str(tmp_path / "cli"), "--progress", "none"]
        for name, value in OPTIONS.items():
            argv += ["--" + name.replace("_", "-"), value]
        code, text = run_cli(argv)
        assert code == 0, text
        key = json.loads((server.set_dir / "key" / "answers.json").read_text(encoding="utf-8"))
        cli = json.loads((tmp_path / "cli" / "key" / "answers.json").read_text(encoding="utf-8"))
        assert without_uids(key) == without_uids(cli) and len(key["pairs"]) == 1

        # served for reading: the trainee's page opens its cases
        trainee.get(server.url)
        trainee.find_element(By.ID, "land-name").send_keys("Grace Trainee")
        trainee.find_element(By.ID, "land-start").click()
        state = wait_for(trainee, lambda s: s["ready"] and s["teaching"].get("case"), timeout=START_TIMEOUT,
                         what="the trainee's first case")  # fmt: skip
        assert len(state["teaching"]["cases"]) == 3 and state["grade"] is None
    finally:
        for d in (instructor, trainee):
            d.quit()
