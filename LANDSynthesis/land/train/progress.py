"""Training progress: ``progress.jsonl`` (read by the Slicer training module), TensorBoard and the console.

``progress.jsonl`` holds one JSON object per line:

- ``{"event": "start", "command", "total", "start_step", "world_size", "device", "config", ...}`` (header,
  one per run / resume; the trainers add e.g. ``perceptual``),
- ``{"event": "step", "step", "total", "losses": {...}, "lr", "eta_s", "time"}`` per logged step
  (losses averaged since the previous logged step; ``time`` is Unix time),
- ``{"event": "validation" | "preview" | "checkpoint" | "notice", "step", ...}`` and
  ``{"event": "done", "step", "out", ...}``.

On resume, lines past the checkpoint's step (written after it by the interrupted run) are dropped first.
TensorBoard scalars and preview images are written to ``OUT/tensorboard`` when tensorboard is installed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging.atomic import atomic_write_text
from ..interface.contract import WARNING_TRAINING_NOTICE
from ..interface.events import DoneEvent, Event, ProgressEvent, WarningEvent, write_event

PROGRESS_FILE = "progress.jsonl"
TENSORBOARD_NOTICE = (
    "tensorboard is not installed: TensorBoard logging is off (pip install tensorboard to enable it); "
    "progress.jsonl is written as usual"
)


def _truncate_after(path: Path, step: int) -> None:
    """Keep only lines whose ``step`` is <= ``step`` (lines without a step are kept)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if not isinstance(obj, dict) or int(obj.get("step", 0) or 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def stdout_event(obj: dict[str, Any], command: str) -> Event | None:
    """What ``--progress json`` prints for a ``progress.jsonl`` entry (land.interface.events; None: the file
    only).

    ``start`` and ``step`` are progress of the stage named ``command`` (``train-vae``, ...; ``start``: the
    step it starts from), ``notice`` a warning, ``done`` the last line; validation, previews and checkpoints
    are in the file only.
    """
    kind = obj.get("event")
    if kind == "start":
        return ProgressEvent(command, int(obj["start_step"]), int(obj["total"]), None)
    if kind == "step":
        details = {"losses": obj.get("losses", {}), "lr": obj.get("lr")}
        return ProgressEvent(command, int(obj["step"]), int(obj["total"]), obj.get("eta_s"), details)
    if kind == "notice":
        return WarningEvent(str(obj.get("message", "")), WARNING_TRAINING_NOTICE)
    if kind == "done":
        return DoneEvent(True, {k: v for k, v in obj.items() if k not in ("event", "time")})
    return None


def open_tensorboard(log_dir: Path) -> tuple[Any | None, str | None]:
    """A SummaryWriter, or (None, notice) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None, TENSORBOARD_NOTICE
    return SummaryWriter(log_dir=str(log_dir)), None


class TrainingLog:
    """Writes progress on rank 0 only (``enabled`` false elsewhere: every method is then a no-op)."""

    def __init__(
        self,
        out: Path,
        command: str,
        total: int,
        start_step: int,
        header: dict[str, Any],
        enabled: bool = True,
        style: str = "bar",
        tensorboard: bool = True,
    ) -> None:
        self.out, self.command, self.total = Path(out), command, int(total)
        self.start_step, self.enabled, self.style = int(start_step), enabled, style
        self.path = self.out / PROGRESS_FILE
        self.t0 = time.monotonic()
        self.writer = None
        self.bar = None
        if not enabled:
            return
        if start_step > 0:
            _truncate_after(self.path, start_step)
        elif self.path.exists():
            self.path.unlink()
        self.write(
            {
                "event": "start",
                "command": command,
                "total": self.total,
                "start_step": self.start_step,
                **header,
            }
        )
        if tensorboard:
            self.writer, notice = open_tensorboard(self.out / "tensorboard")
            if notice:
                self.notice(notice)

    # ---------------------------------------------------------------------------------------- writing
    def write(self, obj: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(obj, default=str)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        event = stdout_event(obj, self.command) if self.style == "json" else None
        if event is not None:
            write_event(event)

    def notice(self, message: str, warning: bool = False) -> None:
        """A one-line notice on stderr (and in progress.jsonl); a ``warning`` (e.g. a damaged checkpoint
        skipped on resume) reaches stderr with ``--progress none`` too."""
        if not self.enabled:
            return
        if warning and self.style == "none":
            print(f"{self.command}: warning: {message}", file=sys.stderr, flush=True)
        self._console(f"{self.command}: {message}")
        self.write({"event": "notice", "message": message, "time": round(time.time(), 3)})

    def _console(self, text: str) -> None:
        if self.style == "none":
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def eta(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return 0.0
        return (time.monotonic() - self.t0) / done * max(self.total - step, 0)

    def step(self, step: int, losses: dict[str, float], lr: float) -> None:
        if not self.enabled:
            return
        rounded = {k: float(f"{v:.6g}") for k, v in losses.items()}
        eta = round(self.eta(step), 1)
        self.write(
            {
                "event": "step",
                "step": step,
                "total": self.total,
                "losses": rounded,
                "lr": lr,
                "eta_s": eta,
                "time": round(time.time(), 3),
            }
        )
        if self.writer is not None:
            for k, v in losses.items():
                self.writer.add_scalar(f"loss/{k}", v, step)
            self.writer.add_scalar("lr", lr, step)
        if self.style == "bar":
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(
                    total=self.total, initial=self.start_step, desc=self.command, unit="step", file=sys.stderr
                )
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            self.bar.update(step - self.bar.n)

    def event(self, name: str, step: int, **data: Any) -> None:
        if not self.enabled:
            return
        self.write({"event": name, "step": step, **data, "time": round(time.time(), 3)})
        if self.writer is not None:
            for k, v in data.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(f"{name}/{k}", v, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A uint8 (H, W) image to TensorBoard."""
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, image[None], step, dataformats="CHW")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def last_progress_event(path: Path, event: str) -> dict[str, Any]:
    """The last ``event`` record of a ``progress.jsonl`` ({} when there is none or no file); unreadable
    lines (a run killed mid-write) are skipped."""
    last: dict[str, Any] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == event:
                last = rec
    return last
