"""How many trainees read at once: slice-change latency of a LAND Studio teaching session under N browsers.

For each N of ``--sessions``: starts ``land studio --teaching-set SET --max-sessions N``, opens N headless
Chromium trainee browsers (selenium + Debian ``chromium``/``chromium-driver``, as the browser tests), enters N
names (one reading page process each), then for ``--rounds`` rounds every browser, each in its own thread and
released together, clicks ▲ or ▼ (alternately, staying in the case's slices). Per change: the milliseconds
from the click to the page's state (``#land-state`` JSON) showing the new slice, timed inside the page
(``performance.now()`` around the click and a MutationObserver on the state, so the WebDriver round trip is
not counted). Prints per N the median and 95th percentile, and the RSS of the page processes.

Without ``--set`` it makes a small set with the bundled demo model (2 cases, 2 steps) in a temporary folder.
Everything it starts (launchers, their page processes, chromedriver, Chromium) is stopped by pid at the end,
also on errors. A benchmark: it prints numbers and asserts nothing.

    python benchmarks/studio_concurrency.py --sessions 1,2,4 --rounds 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

START_TIMEOUT = 180.0

# Click ▲/▼ and resolve with the ms until the state shows slice `target` (inside the page, no WebDriver trip).
CHANGE_JS = """
const [buttonId, target, timeoutMs, done] = arguments;
const el = document.getElementById('land-state');
const shown = () => {
  try { const s = JSON.parse(el.textContent); return s.teaching && s.teaching.slice === target; }
  catch (e) { return false; }
};
let finished = false;
const finish = (value) => { if (!finished) { finished = true; obs.disconnect(); done(value); } };
const t0 = performance.now();
const obs = new MutationObserver(() => { if (shown()) finish(performance.now() - t0); });
obs.observe(el, {childList: true, characterData: true, subtree: true});
setTimeout(() => finish(-1), timeoutMs);
document.getElementById(buttonId).click();
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_set(out: Path) -> None:
    cmd = [sys.executable, "-m", "land", "teaching-set", "--cases", "2", "--out", str(out), "--nodule-rate",
           "1", "--diameters", "10-16", "--steps", "2", "--seed", "1", "--progress", "none"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


class Launcher:
    """``land studio --teaching-set`` as a child process, stopped by pid with its page processes."""

    def __init__(self, set_dir: Path, work: Path, sessions: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = work / f"launcher-{self.port}.log"
        cmd = [sys.executable, "-m", "land", "studio", "--teaching-set", str(set_dir), "--work-dir",
               str(work / f"answers-{sessions}"), "--port", str(self.port), "--max-sessions", str(sessions),
               "--instructor-token", "bench"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "w", encoding="utf-8") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"land studio exited:\n{self.log.read_text(encoding='utf-8')}")
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                break
            except OSError:
                if time.monotonic() - t0 > START_TIMEOUT:
                    raise RuntimeError(f"land studio did not answer in {START_TIMEOUT:g} s") from None
                time.sleep(0.3)

    def pages(self):
        import psutil

        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        import psutil

        children = self.pages()
        if self.proc.poll() is None:
            self.proc.terminate()  # the launcher stops its page processes on the way out
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in children:  # any page process left behind, by pid
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(60)
    return driver


def quit_driver(driver) -> None:
    """``quit()``; then chromedriver and the browsers it started, by pid, if still there."""
    import psutil

    proc = getattr(driver.service, "process", None)
    children = []
    if proc is not None:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    try:
        driver.quit()
    except Exception:  # noqa: BLE001 - killed below
        pass
    for p in [*children, *([psutil.Process(proc.pid)] if proc and proc.poll() is None else [])]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def state(driver) -> dict:
    import json

    from selenium.webdriver.common.by import By

    text = driver.find_element(By.ID, "land-state").get_attribute("textContent")
    return json.loads(text) if text else {}


def wait_for(driver, predicate, timeout: float, what: str) -> dict:
    t0 = time.monotonic()
    s: dict = {}
    while time.monotonic() - t0 < timeout:
        try:
            s = state(driver)
        except Exception:  # noqa: BLE001 - not rendered yet
            s = {}
        if s and predicate(s):
            return s
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}; page state: {s}")


def enter(driver, url: str, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    driver.find_element(By.ID, "land-name").send_keys(name)
    driver.find_element(By.ID, "land-start").click()
    wait_for(driver, lambda s: s.get("ready") and s["teaching"].get("case"), START_TIMEOUT, f"{name}'s case")


def in_threads(fn, items) -> list:
    """``fn(i, item)`` for every item in its own thread; the results in order, the first error raised."""
    results: list = [None] * len(items)
    errors: list = []

    def run(i, item):
        try:
            results[i] = fn(i, item)
        except BaseException as e:  # noqa: BLE001 - raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, it)) for i, it in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(set_dir: Path, work: Path, n: int, rounds: int, drivers: list) -> dict:
    """One launcher with ``n`` trainees; the slice-change latencies (ms) and page RSS (MB)."""
    launcher = Launcher(set_dir, work, n)
    try:
        while len(drivers) < n:
            drivers.append(chrome())
        browsers = drivers[:n]
        t0 = time.monotonic()
        in_threads(lambda i, d: enter(d, launcher.url, f"Trainee {n}-{i + 1}"), browsers)
        enter_s = time.monotonic() - t0
        barrier = threading.Barrier(n)

        def read(i, driver):
            s = state(driver)["teaching"]
            lo, hi = s["slices"]
            current, step, times = s["slice"], 1, []
            for _ in range(rounds):
                if not lo <= current + step <= hi:
                    step = -step
                button = "land-slice-up" if step > 0 else "land-slice-down"
                barrier.wait(timeout=120)
                ms = driver.execute_async_script(CHANGE_JS, button, current + step, 30000)
                if ms < 0:
                    raise RuntimeError(f"trainee {i + 1}: slice {current + step} not shown in 30 s")
                current += step
                times.append(ms)
                step = -step  # ▲ then ▼: stays near the starting slice
            return times

        times = [t for ts in in_threads(read, browsers) for t in ts]
        pages = [p for p in launcher.pages() if "--trainee" in p.cmdline()]
        rss = [p.memory_info().rss / 2**20 for p in pages]
        launcher_rss = __import__("psutil").Process(launcher.proc.pid).memory_info().rss / 2**20
        return {"times": times, "rss": rss, "launcher_rss": launcher_rss, "enter_s": enter_s}
    finally:
        launcher.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1,2,4", help="comma-separated numbers of trainees")
    parser.add_argument("--rounds", type=int, default=20, help="slice changes per trainee")
    parser.add_argument("--set", type=Path, help="an existing teaching set (default: make a small one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, answers)")
    args = parser.parse_args()
    counts = [int(v) for v in args.sessions.split(",") if v.strip()]

    def stop_on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop_on_term)
    work = Path(tempfile.mkdtemp(prefix="land-studio-bench-"))
    drivers: list = []
    try:
        set_dir = args.set
        if set_dir is None:
            set_dir = work / "set"
            t0 = time.monotonic()
            make_set(set_dir)
            took = time.monotonic() - t0
            print(f"teaching set (2 cases, demo model, 2 steps) made in {took:.0f} s", flush=True)
        print(f"{os.cpu_count()} CPUs; {args.rounds} slice changes per trainee, all at once", flush=True)
        print(f"{'N':>3} {'changes':>8} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} "
              f"{'page RSS MB (each)':>24} {'launcher MB':>12} {'enter s':>8}", flush=True)  # fmt: skip
        for n in counts:
            r = measure(set_dir, work, n, args.rounds, drivers)
            t = r["times"]
            rss = "/".join(f"{v:.0f}" for v in r["rss"])
            med, p95 = statistics.median(t), percentile(t, 0.95)
            print(f"{n:>3} {len(t):>8} {med:>10.0f} {p95:>8.0f} {max(t):>8.0f} "
                  f"{rss:>24} {r['launcher_rss']:>12.0f} {r['enter_s']:>8.1f}", flush=True)  # fmt: skip
    finally:
        for d in drivers:
            quit_driver(d)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
