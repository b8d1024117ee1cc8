"""``python -m land studio ...`` as a child process for the browser tests: started with a log file, waited on
until its page answers (a failed test with the log when the process exits first), stopped by its pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


class StudioServer:
    """``python -m land studio ARGS`` logging to ``log``; ``start_s``: seconds until ``url`` answered."""

    def __init__(self, args: list[str], url: str, log: Path, timeout: float = 120.0) -> None:
        self.url, self.log, self.timeout = url, Path(log), timeout
        self.cmd = [sys.executable, "-m", "land", "studio", *args]
        self.proc: subprocess.Popen | None = None
        self.start_s = 0.0

    def start(self) -> StudioServer:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "w", encoding="utf-8") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                log = self.log.read_text(encoding="utf-8")
                pytest.fail(f"land studio exited with {self.proc.returncode}:\n{log}")
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                break
            except OSError:
                if time.monotonic() - t0 > self.timeout:
                    self.stop()
                    pytest.fail(f"land studio did not answer in {self.timeout:g} s")
                time.sleep(0.3)
        self.start_s = time.monotonic() - t0
        return self

    def stop(self, wait: float = 30.0) -> None:
        """Terminate (the launcher stops its page processes on the way out), kill if it does not end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
