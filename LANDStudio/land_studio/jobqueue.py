"""One queue of generation jobs shared by every page process of a class (``land studio``; issue 27 part 3).

A folder holds ``queue.json`` (the slots and the entries in arrival order) and ``queue.lock``; every read and
change happens under an exclusive ``flock`` of the lock file, so page processes need no server to agree.
Each entry names the process that joined (pid and its start time): an entry whose process is gone (a page that
crashed or was killed) is dropped at the next look, so a dead page never holds a slot. Slots are handed out in
arrival order: one slot on a CPU (one engine at a time), one per GPU otherwise (the slot number is the GPU
index the job runs on). An entry with a slot is running; the others wait, and each knows how many are ahead.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

QUEUE_FILE = "queue.json"
LOCK_FILE = "queue.lock"


def gpu_count(python: str | None = None, timeout: float = 120.0) -> int:
    """CUDA devices torch sees, asked in a child interpreter (the launcher loads no torch); 0 on error."""
    import subprocess
    import sys

    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout, check=True).stdout  # fmt: skip
        return max(0, int(out.strip().splitlines()[-1]))
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return 0


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class JobQueue:
    """The class's queue in ``folder`` (created with ``slots`` when it does not exist yet)."""

    def __init__(self, folder: str | os.PathLike, slots: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if slots is not None:
            if slots < 1:
                raise ValueError("a job queue needs at least one slot")
            with self._locked() as data:
                data["slots"] = int(slots)

    @contextmanager
    def _locked(self):
        """The queue's data under the lock (dead entries dropped, free slots handed out); written back."""
        with open(self.folder / LOCK_FILE, "a+", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.folder / QUEUE_FILE
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            data.setdefault("slots", 1)
            data.setdefault("entries", [])
            data["entries"] = [e for e in data["entries"] if _started(e["pid"]) == e["started"]]
            self._assign(data)
            yield data
            self._assign(data)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            tmp.replace(path)

    @staticmethod
    def _assign(data: dict) -> None:
        used = {e["slot"] for e in data["entries"] if e["slot"] is not None}
        free = [s for s in range(int(data["slots"])) if s not in used]
        for entry in data["entries"]:
            if not free:
                break
            if entry["slot"] is None:
                entry["slot"] = free.pop(0)
                entry["since"] = time.time()

    def join(self, label: str = "") -> str:
        """A new entry for this process at the end of the queue; its id."""
        entry_id = secrets.token_hex(8)
        pid = os.getpid()
        with self._locked() as data:
            data["entries"].append({"id": entry_id, "pid": pid, "started": _started(pid), "label": label,
                                    "joined": time.time(), "slot": None})  # fmt: skip
        return entry_id

    def status(self, entry_id: str) -> dict:
        """``slot`` (None while waiting), ``ahead`` (entries before this one that wait or run), ``running``
        (entries holding a slot), ``waiting`` (entries without one), ``slots``; ``gone``: not in the queue."""
        with self._locked() as data:
            entries = data["entries"]
            index = next((i for i, e in enumerate(entries) if e["id"] == entry_id), None)
            running = sum(e["slot"] is not None for e in entries)
            result = {"slots": data["slots"], "running": running, "waiting": len(entries) - running}
            if index is None:
                return {**result, "slot": None, "ahead": 0, "gone": True}
            slot = entries[index]["slot"]  # slots go in arrival order: all before a waiting one are ahead
            return {**result, "slot": slot, "ahead": 0 if slot is not None else index, "gone": False}

    def leave(self, entry_id: str) -> None:
        with self._locked() as data:
            data["entries"] = [e for e in data["entries"] if e["id"] != entry_id]

    def snapshot(self) -> dict:
        """The queue as it is now (dead entries dropped): slots and entries in arrival order."""
        with self._locked() as data:
            return json.loads(json.dumps(data))


class QueueGate:
    """``LANDSynthesisLogic.startGate`` through the class's queue: a job joins when first asked, waits for a
    slot (its place as the text the page shows), then runs (on a GPU queue the slot is its
    ``CUDA_VISIBLE_DEVICES``); :meth:`leave` when the job has ended, so the slot goes to the next one."""

    def __init__(self, queue: JobQueue, label: str, environment: dict[str, str]) -> None:
        self.queue, self.label, self.environment = queue, label, environment
        self.entry: str | None = None
        self.place: dict | None = None

    def __call__(self, _job=None) -> str | None:
        if self.entry is None:
            self.entry = self.queue.join(label=self.label)
        place = self.place = self.queue.status(self.entry)
        if place["slot"] is not None:
            if place["slots"] > 1:  # one engine per GPU: this job's slot is its GPU
                self.environment["CUDA_VISIBLE_DEVICES"] = str(place["slot"])
            return None
        ahead = place["ahead"]
        return f"Queued: {ahead} job{'s' if ahead != 1 else ''} ahead of yours ({place['running']} running)."

    def leave(self) -> None:
        if self.entry is not None:
            self.queue.leave(self.entry)
            self.entry = None
        self.place = None
