"""LAND Studio in a real browser (issue 27): ``land studio`` serves the page, headless Chromium drives it.

Starts the server as a child process (``python -m land studio --keep-jobs``: the class launcher, which gives
the browser its own page process), opens the page with selenium and Debian's ``chromium``/``chromium-driver``,
uploads a real CT through the page (slicerio's CTChest4.nrrd; a file that is not an image first: a message,
nothing lost), presses Generate with no lungs (a message), "Lungs from CT", adds a nodule, paints it with a
real mouse drag in Slicer's slice view, sets its texture, generates with the bundled demo model at few steps,
waits on the page's own state (the hidden ``#land-state`` JSON, never a sleep) for the synthetic CT node, and
downloads it through the page (NIfTI and DICOM). The download equals, voxel for voxel, ``land generate`` run
from the command line on the same engine inputs (the job folder kept by ``--keep-jobs``). Screenshots of the
page go to ``Resources/Screenshots`` (the README's figures).

Skipped with the reason when the studio extra (trame-slicer), selenium or Chromium are missing; ``.ci/run``
installs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from studio_server import StudioServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = [
    what
    for what, ok in (
        ("trame-slicer (pip install -e '.[studio]')", importlib.util.find_spec("trame_slicer") is not None),
        ("selenium (pip install selenium)", importlib.util.find_spec("selenium") is not None),
        ("chromium (apt-get install chromium)", CHROMIUM is not None),
        ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER is not None),
    )
    if not ok
]
pytestmark = pytest.mark.skipif(bool(MISSING), reason="LAND Studio browser test needs " + ", ".join(MISSING))

START_TIMEOUT = 120.0
GENERATE_TIMEOUT = 600.0
MAX_UPLOAD_MB = 1  # CTChest4.nrrd is 0.7 MB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """``land studio --keep-jobs`` on a free port; yields (url, process, seconds to the first HTTP answer,
    work folder)."""
    work = tmp_path_factory.mktemp("studio")
    port = free_port()
    args = ["--keep-jobs", "--max-upload-mb", str(MAX_UPLOAD_MB), "--gpu-slots", "1", "--port", str(port),
            "--work-dir", str(work / "w")]  # fmt: skip
    server = StudioServer(args, f"http://127.0.0.1:{port}/", work / "server.log", START_TIMEOUT)
    try:
        server.start()
        yield server.url, server.proc, server.start_s, work
    finally:
        server.stop(20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    yield driver
    driver.quit()


def page_state(driver) -> dict:
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.ID, "land-state").get_attribute("textContent")
    return json.loads(text) if text else {}


def wait_for(driver, predicate, timeout: float = 60.0, what: str = "the page"):
    """The page's state once ``predicate(state)`` holds (polls the hidden #land-state element)."""
    t0 = time.monotonic()
    state: dict = {}
    while time.monotonic() - t0 < timeout:
        try:
            state = page_state(driver)
        except Exception:  # noqa: BLE001 - not rendered yet
            state = {}
        if state and predicate(state):
            return state
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; page state: {state}")


def click(driver, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def lung_point(view) -> tuple[int, int]:
    """(x, y) in the view element of a lung pixel near the middle of the left lung as rendered: the 'Lungs'
    overlay (brownish: red > green > blue) in a screenshot of the view."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(view.screenshot_as_png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    lung = (r - b > 15) & (r > g) & (g > b)
    lung[:, rgb.shape[1] // 2 :] = False  # the image's left half: the patient's right lung
    ys, xs = np.nonzero(lung)
    assert len(xs) > 500, "no lung overlay visible in the slice view"
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2 + 1e9 * (xs + 12 >= rgb.shape[1] // 2)))
    return int(xs[i]), int(ys[i])


def segment(state: dict, name: str) -> dict | None:
    return next((s for s in state["segments"] if s["name"] == name), None)


SCREENSHOTS = Path(__file__).resolve().parents[1] / "Resources" / "Screenshots"


def save_screenshot(driver, name: str, tmp_path: Path) -> Path:
    """A small PNG of the page (256 colours): into the README's figure folder when LAND_SCREENSHOTS=1."""
    import io

    from PIL import Image

    folder = SCREENSHOTS if os.environ.get("LAND_SCREENSHOTS") == "1" else tmp_path
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    path = folder / name
    image.quantize(256).save(path, optimize=True)
    assert path.stat().st_size < 200_000
    return path


def ct_chest() -> Path:
    slicerio = pytest.importorskip("slicerio")
    return Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"


def upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#land-upload").send_keys(str(path))


def test_upload_paint_generate_and_match_the_cli(studio, browser, tmp_path):
    import numpy as np
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    import land.imaging.io as landio

    url, _proc, start_s, work = studio
    t0 = time.monotonic()
    browser.get(url)
    state = wait_for(browser, lambda s: s["ready"], what="the page")
    page_s = time.monotonic() - t0
    print(f"server answered after {start_s:.1f} s; own page ready after {page_s:.1f} s")
    assert not state["loaded"] and state["segments"] == []

    # bad input: a file that is not an image is a message; nothing else changes
    junk = tmp_path / "notes.nii.gz"
    junk.write_text("these are my notes, not an image", encoding="utf-8")
    upload(browser, junk)
    state = wait_for(browser, lambda s: s["error"], what="the upload's error")
    assert "notes.nii.gz" in state["error"] and not state["loaded"]

    big = tmp_path / "big.nrrd"  # over --max-upload-mb: the limit's message, nothing loaded
    big.write_bytes(os.urandom(MAX_UPLOAD_MB * 2**20 + 300_000))
    upload(browser, big)
    state = wait_for(browser, lambda s: "upload limit" in s["error"], what="the upload limit's message")
    assert f"big.nrrd is larger than the upload limit of {MAX_UPLOAD_MB} MB" in state["error"]
    assert not state["loaded"]

    upload(browser, ct_chest())
    state = wait_for(browser, lambda s: s["loaded"] and not s["error"], what="the uploaded CT")
    assert "CTChest4" in state["message"] and [s["name"] for s in state["segments"]] == ["Lungs"]

    click(browser, "land-generate")  # no lungs painted yet: the module's own check, as a message
    state = wait_for(browser, lambda s: s["error"], what="the no-lungs message")
    assert "lung" in state["error"].lower() and state["job"]["state"] == "idle"

    click(browser, "land-lungs-from-ct")
    state = wait_for(browser, lambda s: not s["lungs_running"] and segment(s, "Lungs")["voxels"] > 10000,
                     timeout=300, what="Lungs from CT")  # fmt: skip
    click(browser, "land-add-nodule")
    state = wait_for(browser, lambda s: segment(s, "Nodule 1") is not None, what="Nodule 1")
    new = segment(state, "Nodule 1")
    assert state["active"] == new["id"] and new["voxels"] == 0 and new["texture"] == 5

    click(browser, "land-paint")
    wait_for(browser, lambda s: s["effect"] == "paint", what="the paint effect")
    view = browser.find_element(By.CSS_SELECTOR, "img.image-display-area")
    wait_for(browser, lambda s: view.size["height"] > 100, what="the slice view's first image")
    x, y = lung_point(view)  # a point of the left lung as the view shows it (its overlay colour)
    w, h = view.size["width"], view.size["height"]
    actions = ActionChains(browser, duration=50)
    actions.move_to_element_with_offset(view, x - w // 2, y - h // 2).click_and_hold()
    for dx, dy in ((2, 1), (2, 1), (2, 0), (2, -1), (2, -1)):
        actions.move_by_offset(dx, dy)
    actions.release().perform()  # a real mouse drag: Slicer's paint effect in the slice view
    state = wait_for(browser, lambda s: segment(s, "Nodule 1")["voxels"] > 0, what="painted voxels")
    click(browser, "land-tex-" + new["id"] + "-1")
    wait_for(browser, lambda s: segment(s, "Nodule 1")["texture"] == 1, what="texture 1")
    click(browser, "land-tex-" + new["id"] + "-5")
    state = wait_for(browser, lambda s: segment(s, "Nodule 1")["texture"] == 5, what="texture 5")
    assert segment(state, "Nodule 1")["textureText"] == "5 - solid"
    save_screenshot(browser, "studio_painting.png", tmp_path)

    steps = browser.find_element(By.CSS_SELECTOR, "#land-steps")
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys("3")
    click(browser, "land-effect-none")
    wait_for(browser, lambda s: s["effect"] == "none", what="the view mode")
    time.sleep(0.5)  # the steps field's change reaches the server on the next state flush
    click(browser, "land-generate")
    state = wait_for(browser, lambda s: s["job"]["state"] != "idle", what="the job's start")
    # a second Generate while one runs: the button is off, and the server refuses it with a message (sent
    # as the button sends it, through the page's trame client)
    assert browser.find_element(By.ID, "land-generate").get_attribute("disabled") is not None
    browser.execute_script("window.trame.trigger(arguments[0])", state["triggers"]["generate"])
    state = wait_for(browser, lambda s: s["error"], what="the second Generate's refusal")
    assert "already running" in state["error"], state
    assert state["job"]["state"] not in ("idle", "failed", "cancelled")  # the first one goes on
    seen = set()

    def finished(s):
        seen.add(s["job"]["state"])
        failed = s["error"] and "already running" not in s["error"]
        return s["job"]["state"] in ("succeeded", "failed", "cancelled") or failed

    state = wait_for(browser, finished, timeout=GENERATE_TIMEOUT, what="the generation")
    assert state["job"]["state"] == "succeeded", state
    assert "running" in seen  # progress reached the page while the child ran
    assert state["result"]["name"].startswith("SYNTHETIC CT land-demo-phantom seed 0")
    assert state["result"]["description"].startswith("SYNTHETIC")
    save_screenshot(browser, "studio_generated.png", tmp_path)

    def download(element_id: str, name: str) -> Path:
        """Click a download button; the file once the browser has written it."""
        click(browser, element_id)
        target = browser.downloads / name
        t0 = time.monotonic()
        while not target.is_file() and time.monotonic() - t0 < 60:
            time.sleep(0.2)
        assert target.is_file(), list(browser.downloads.iterdir())
        return target

    target = download("land-download", "synthetic_ct.nii.gz")
    state = wait_for(browser, lambda s: s["result"].get("path"), what="the written result")
    written = Path(state["result"]["path"])
    assert target.read_bytes() == written.read_bytes()
    volume = landio.read_volume(target)
    assert volume.array.shape == (34, 128, 128)  # CTChest4's grid: the engine matched the masks' geometry
    provenance = landio.read_provenance(written)  # the NIfTI's JSON sidecar beside the server's copy
    assert str(provenance["description"]).startswith("SYNTHETIC")
    assert provenance["synthetic"] == "true" and int(provenance["seed"]) == 0

    # the same engine inputs through the command line: identical voxels
    jobs = [
        p for p in (work / "w" / "sessions").glob("*/jobs/LANDSynthesis-*") if (p / "command.json").is_file()
    ]
    assert len(jobs) == 1, jobs
    command = json.loads((jobs[0] / "command.json").read_text(encoding="utf-8"))
    out = command.index("--out") + 1
    assert Path(command[out]).name == "synthetic_ct.nrrd"
    command[out] = str(tmp_path / "cli.nrrd")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=GENERATE_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = landio.read_volume(tmp_path / "cli.nrrd")
    assert np.array_equal(cli.array, volume.array)
    np.testing.assert_allclose(cli.spacing, volume.spacing, atol=1e-4)
    np.testing.assert_allclose(cli.origin, volume.origin, atol=1e-3)

    # DICOM: the engine's series writer, labelled SYNTHETIC
    archive = download("land-download-dicom", "synthetic_ct_dicom.zip")
    check_dicom(archive, volume, tmp_path)

    # Scissors: an outline drawn with real mouse moves around a lung point erases the Lungs inside it
    lungs = segment(state, "Lungs")
    click(browser, "land-seg-" + lungs["id"])
    wait_for(browser, lambda s: s["active"] == lungs["id"], what="Lungs active")
    click(browser, "land-scissors")
    state = wait_for(browser, lambda s: s["effect"] == "scissors", what="the scissors effect")
    before = segment(state, "Lungs")["voxels"]
    actions = ActionChains(browser, duration=50)
    actions.move_to_element_with_offset(view, x - w // 2 - 15, y - h // 2 - 15).click_and_hold()
    for dx, dy in [(6, 0)] * 5 + [(0, 6)] * 5 + [(-6, 0)] * 5 + [(0, -6)] * 5:
        actions.move_by_offset(dx, dy)
    actions.release().perform()
    state = wait_for(browser, lambda s: segment(s, "Lungs")["voxels"] < before, what="the scissors cut")
    assert state["effect"] == "scissors" and not state["error"]
    assert segment(state, "Nodule 1")["voxels"] > 0  # only the active segment is cut
    print(f"scissors: Lungs {before} -> {segment(state, 'Lungs')['voxels']} voxels")


def check_dicom(archive: Path, volume, tmp_path: Path) -> None:
    import zipfile

    import numpy as np
    import pydicom

    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "dicom")
    files = sorted((tmp_path / "dicom" / "synthetic_ct_dicom").glob("*.dcm"))
    assert len(files) == volume.array.shape[0]
    first = pydicom.dcmread(files[0])
    assert str(first.PatientName).startswith("SYNTHETIC") and "SYNTHETIC" in first.SeriesDescription
    assert first.BurnedInAnnotation == "YES"
    hu = first.pixel_array.astype(np.int32) * int(first.RescaleSlope) + int(first.RescaleIntercept)
    unburned = hu == volume.array[0]
    assert unburned.mean() > 0.9  # the CT itself, but for the burned-in SYNTHETIC label
