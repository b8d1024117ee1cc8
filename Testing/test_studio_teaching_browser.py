"""A LAND Studio teaching session in real browsers (issue 27): ``land studio --teaching-set`` serves the class
page, each trainee gets their own page process; headless Chromium drives two trainees and the instructor.

A tiny teaching set from the bundled demo model (2 cases, 2 steps); trainee 1 enters a name, scrolls, switches
the window preset, zooms. A second browser cannot take the same name and gets its own page. Then both trainees
read at once, their marks interleaved: trainee 1 clicks on a nodule (its position read from the key on disk by
the test, never by the page) and places one false mark on the other case, trainee 2 places two false marks;
neither page shows the other's marks nor anything of the key before its own submission. Both submit; each
grade shown equals ``land teaching-score`` on that trainee's own marks, and the second page holds no key data
while only the first is graded. The instructor page lists both trainees, its CSV matches; after a restart of
the server the first trainee comes back to the graded reads.

Skipped with the reason when the studio extra, selenium or Chromium are missing (as test_studio_browser.py).
"""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from studio_server import StudioServer
from test_studio_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    MISSING,
    click,
    free_port,
    page_state,
    save_screenshot,
    wait_for,
)
from test_teaching import run_cli

pytestmark = pytest.mark.skipif(bool(MISSING), reason="LAND Studio browser test needs " + ", ".join(MISSING))

TOKEN = "instructor-secret"
NAME = "Ada Trainee"
SECOND = "Bo Second"
START_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def teaching_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("class") / "set"
    code, text = run_cli(
        [
            "teaching-set",
            "--cases",
            "2",
            "--out",
            str(out),
            "--nodule-rate",
            "1",
            "--diameters",
            "10-16",
            "--steps",
            "2",
            "--seed",
            "1",
            "--progress",
            "none",
        ]
    )
    assert code == 0, text
    return out


class Launcher(StudioServer):
    """``land studio --teaching-set`` as a child process."""

    def __init__(self, set_dir: Path, work: Path) -> None:
        self.port = free_port()
        args = ["--teaching-set", str(set_dir), "--work-dir", str(work / "answers"), "--port", str(self.port),
                "--instructor-token", TOKEN, "--max-sessions", "2"]  # fmt: skip
        url = f"http://127.0.0.1:{self.port}/"
        super().__init__(args, url, work / f"launcher-{self.port}.log", START_TIMEOUT)
        self.start()


def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browsers():
    drivers = [chrome(), chrome()]
    yield drivers
    for d in drivers:
        d.quit()


def enter(driver, url: str, name: str) -> float:
    """Open the class page, enter ``name``; seconds until the reading page shows its first case."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    t0 = time.monotonic()
    driver.find_element(By.ID, "land-name").send_keys(name)
    driver.find_element(By.ID, "land-start").click()
    wait_for(driver, lambda s: s["ready"] and s["teaching"].get("case"), timeout=START_TIMEOUT, what="a case")
    return time.monotonic() - t0


def settled(driver, predicate=lambda s: True, what="the view"):
    """The state once the view geometry is the one of the browser's image (the render window resized)."""
    from selenium.webdriver.common.by import By

    img = driver.find_element(By.CSS_SELECTOR, "img.image-display-area")

    def ok(s):
        v = s["teaching"].get("view") or {}
        return predicate(s) and abs(v.get("width", 0) - img.size["width"]) <= 2 and img.size["height"] > 100

    return wait_for(driver, ok, what=what)


def click_at_lps(driver, state: dict, lps) -> None:
    """A real mouse click in the slice view where the physical point ``lps`` is shown."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    img = driver.find_element(By.CSS_SELECTOR, "img.image-display-area")
    view = state["teaching"]["view"]
    m = np.array(view["xy_to_ras"]).reshape(4, 4)
    x, y = np.linalg.solve(m, np.array([-lps[0], -lps[1], lps[2], 1.0]))[:2]
    w, h = img.size["width"], img.size["height"]
    ex, ey = x * w / view["width"], (view["height"] - y) * h / view["height"]
    ActionChains(driver).move_to_element_with_offset(
        img, int(round(ex - w / 2)), int(round(ey - h / 2))
    ).click().perform()


def lps_at_pixel(state: dict, fx: float, fy: float) -> tuple[float, float, float]:
    """The physical point shown at the fraction (fx, fy) of the view (from the top left)."""
    view = state["teaching"]["view"]
    m = np.array(view["xy_to_ras"]).reshape(4, 4)
    ras = m @ np.array([fx * view["width"], (1 - fy) * view["height"], 0.0, 1.0])
    return (-ras[0], -ras[1], ras[2])


def go_to_slice(driver, number: int) -> dict:
    """Scroll with the slider's keyboard (one key per slice)."""
    from selenium.webdriver.common.keys import Keys

    current = page_state(driver)["teaching"]["slice"]
    thumb = driver.execute_script(
        "return document.getElementById('land-slice-slider').closest('.v-input')"
        ".querySelector('.v-slider-thumb')"
    )
    key = Keys.ARROW_RIGHT if number > current else Keys.ARROW_LEFT
    thumb.send_keys(*([key] * abs(number - current)))
    return wait_for(driver, lambda s: s["teaching"]["slice"] == number, what=f"slice {number}")


def mark_away(driver, state: dict, nodules, count: int) -> dict:
    """A click in the view at least 10 mm off every nodule of the shown case (a false mark); the state once
    the page holds ``count`` marks."""
    case = state["teaching"]["case"]
    others = [n for n in nodules if n.case == case]
    spot = next(
        p
        for p in (lps_at_pixel(state, fx, 0.5) for fx in (0.5, 0.35, 0.65, 0.2, 0.8))
        if all(np.linalg.norm(np.subtract(p, n.centre_mm)) > n.radius_mm + 10 for n in others)
    )
    click_at_lps(driver, state, spot)
    return wait_for(driver, lambda s: len(s["teaching"]["marks"]) == count, what=f"mark {count} on {case}")


def graded_by_cli(driver, teaching_set: Path, reads: Path) -> tuple[dict, dict]:
    """The page's state once graded, and ``land teaching-score --json`` on the marks that page holds."""
    state = wait_for(driver, lambda s: s["grade"] is not None, what="the grade")
    marks = state["teaching"]["marks"]
    reads.write_text(
        "case,x,y,z\n" + "".join(f"{m['case']},{m['x']!r},{m['y']!r},{m['z']!r}\n" for m in marks),
        encoding="utf-8",
    )
    code, text = run_cli(["teaching-score", "--answers", str(teaching_set), "--reads", str(reads), "--json"])
    assert code == 0, text
    return state, json.loads(text)


def key_leaks(driver, set_dir: Path, numbers: bool = False) -> list[str]:
    """Words (and, before any mark, whose coordinates could match by chance, numbers) of the answer key found
    in the page (its HTML and its state)."""
    from land.teaching.answers import read_answers

    text = driver.page_source + json.dumps(page_state(driver))
    words = ['"nodules"', "diameter_mm", '"missed"', '"found"', "texture", "answers"]
    _, nodules = read_answers(set_dir)
    values = [f"{v:g}" for n in nodules for v in (n.diameter_mm, *n.centre_mm)] if numbers else []
    found = [w for w in words if w in text]
    return found + [f"number {v}" for v in values if f'"{v}"' in text or f":{v}," in text or f" {v} " in text]


def test_class_session(teaching_set, browsers, tmp_path):
    import psutil
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from land.teaching.answers import read_answers

    cases, nodules = read_answers(teaching_set)  # the test reads the key on disk; the pages never do
    target = next(n for n in nodules if n.case == cases[0])
    launcher = Launcher(teaching_set, tmp_path)
    first, second = browsers
    try:
        page_s = enter(first, launcher.url, NAME)
        state = settled(first)
        assert (
            state["teaching"]["name"] == NAME
            and state["teaching"]["cases"] == cases
            and state["grade"] is None
        )
        assert not key_leaks(first, teaching_set, numbers=True)
        for path in (
            "key/answers.json",
            "answers.json",
            "../key/answers.csv",
        ):  # the page's server has no key
            port = first.current_url.split(":")[2].split("/")[0]
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5)

        # read: scroll, window presets, zoom
        start = state["teaching"]["slice"]
        t0 = time.monotonic()
        click(first, "land-slice-up")
        wait_for(first, lambda s: s["teaching"]["slice"] == start + 1, what="the next slice")
        slice_ms = 1000 * (time.monotonic() - t0)
        click(first, "land-window-mediastinum")
        wait_for(first, lambda s: s["teaching"]["window"] == "mediastinum", what="mediastinum window")
        click(first, "land-window-lung")
        before = settled(first)["teaching"]["view"]["xy_to_ras"]
        click(first, "land-zoom-in")
        zoomed = wait_for(first, lambda s: s["teaching"]["view"]["xy_to_ras"][0] != before[0], what="zoom")
        click(first, "land-zoom-fit")
        zoomed = zoomed["teaching"]["view"]["xy_to_ras"]
        wait_for(first, lambda s: s["teaching"]["view"]["xy_to_ras"][0] != zoomed[0], what="fit")

        # a second trainee at once: the same name is refused, another name gets a page of its own
        second.get(launcher.url)
        second.find_element(By.ID, "land-name").send_keys(NAME)
        second.find_element(By.ID, "land-start").click()
        error = WebDriverWait(second, 30).until(  # the form posts and a new page loads: wait for it
            lambda d: d.find_elements(By.ID, "land-error")
        )
        assert "already taken" in error[0].text
        enter(second, launcher.url, SECOND)
        other = settled(second)
        assert other["teaching"]["name"] == SECOND and other["teaching"]["marks"] == []

        # both read at once, marks interleaved: 1 on the nodule, 2 a false mark on the other case, 1 a false
        # mark on the other case, 2 a false mark on the first case
        go_to_slice(first, target.slice)
        state = settled(first)
        click_at_lps(first, state, target.centre_mm)
        state = wait_for(first, lambda s: len(s["teaching"]["marks"]) == 1, what="the mark")
        mark = state["teaching"]["marks"][0]
        assert mark["case"] == cases[0]
        assert (
            np.linalg.norm(np.subtract([mark["x"], mark["y"], mark["z"]], target.centre_mm))
            < target.radius_mm
        )
        assert not key_leaks(first, teaching_set)
        click(second, "land-case-next")
        other = settled(second, lambda s: s["teaching"]["case"] == cases[1], what="trainee 2's second case")
        other = mark_away(second, other, nodules, 1)
        assert other["teaching"]["marks"][0]["case"] == cases[1]
        click(first, "land-case-next")
        state = settled(first, lambda s: s["teaching"]["case"] == cases[1], what="the second case")
        state = mark_away(first, state, nodules, 2)
        click(second, "land-case-prev")
        other = settled(second, lambda s: s["teaching"]["case"] == cases[0], what="trainee 2's first case")
        other = mark_away(second, other, nodules, 2)
        assert [m["case"] for m in other["teaching"]["marks"]] == [cases[1], cases[0]]
        assert [m["case"] for m in page_state(first)["teaching"]["marks"]] == [cases[0], cases[1]]
        for driver in (first, second):  # each page: its own marks only, no key, no grade
            assert not key_leaks(driver, teaching_set) and page_state(driver)["grade"] is None

        # both submit: each grade equals land teaching-score on that trainee's own marks; the second page
        # holds nothing of the key while only the first is graded
        click(first, "land-submit")
        state, expected = graded_by_cli(first, teaching_set, tmp_path / "reads-1.csv")
        assert page_state(second)["grade"] is None and not key_leaks(second, teaching_set)
        click(second, "land-submit")
        other, expected_2 = graded_by_cli(second, teaching_set, tmp_path / "reads-2.csv")
        assert state["grade"]["result"] == expected and other["grade"]["result"] == expected_2
        assert (expected["detected"], expected["false_positives"]) == (1, 1)
        assert (expected_2["detected"], expected_2["false_positives"]) == (0, 2)
        shown = first.find_element(By.ID, "land-grade-summary").text
        assert f"Detected 1 of {len(nodules)}" in shown and "1 false mark" in shown
        shown = second.find_element(By.ID, "land-grade-summary").text
        assert f"Detected 0 of {len(nodules)}" in shown and "2 false mark" in shown
        assert [m["verdict"] for m in state["grade"]["cases"][cases[1]]["marks"]] == ["false"]
        assert [m["verdict"] for c in cases for m in other["grade"]["cases"][c]["marks"]] == ["false"] * 2
        assert page_state(first)["grade"]["result"] == expected  # not overwritten by the second submission
        click(first, "land-case-prev")
        wait_for(first, lambda s: s["teaching"]["case"] == cases[0], what="the first case again")
        save_screenshot(
            first, "studio_teaching_graded.png", tmp_path
        )  # the README's figure with LAND_SCREENSHOTS=1

        # memory and start-up of a trainee page process
        pages = psutil.Process(launcher.proc.pid).children()
        assert len(pages) == 2
        rss = [p.memory_info().rss / 2**20 for p in pages]
        uss = [p.memory_full_info().uss / 2**20 for p in pages]
        print(
            f"class page up in {launcher.start_s:.1f} s; trainee page shown {page_s:.1f} s after 'Start'; "
            f"slice change {slice_ms:.0f} ms; per trainee page RSS {rss} MB, USS {uss} MB"
        )

        # the instructor: the list and the CSV
        first.get(launcher.url + "instructor?token=" + TOKEN)
        table = first.find_element(By.ID, "land-scores").text
        assert NAME in table and SECOND in table
        with urllib.request.urlopen(launcher.url + "instructor.csv?token=" + TOKEN, timeout=10) as r:
            rows = {row["name"]: row for row in csv.DictReader(io.StringIO(r.read().decode()))}
        row = rows[NAME]
        assert (int(row["detected"]), int(row["false_positives"]), int(row["nodules"])) == (
            expected["detected"],
            expected["false_positives"],
            expected["nodules"],
        )
        assert float(row["sensitivity"]) == expected["sensitivity"] and rows[SECOND]["submitted_at"] != ""
        row = rows[SECOND]
        assert (int(row["detected"]), int(row["false_positives"])) == (
            expected_2["detected"],
            expected_2["false_positives"],
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(launcher.url + "instructor.csv?token=wrong", timeout=10)
        assert refused.value.code == 403
    finally:
        launcher.stop()

    # a restarted server keeps the submitted reads: the same browser comes back to its grade
    launcher = Launcher(teaching_set, tmp_path)
    try:
        enter(first, launcher.url, NAME)
        state = wait_for(first, lambda s: s["grade"] is not None, what="the kept grade")
        assert state["grade"]["result"] == expected and state["teaching"]["submitted"]
    finally:
        launcher.stop()
