"""The engine's progress protocol: the events every ``land`` command reports, and the one parser of them.

Under ``--progress json`` a command prints one JSON object per line on stdout; anything else it prints
(notes, tracebacks) goes to stderr. Four kinds, told apart by their key:

- progress ``{"stage": str, "step": int, "total": int, "eta_s": float | null, ...details}``: ``step`` of
  ``total`` done in ``stage`` (``denoise``, ``decode``, ``case``, ``sample``, ``prepare``, ``train-vae``, a
  training-pipeline stage, ...); details are stage-specific (``case``, ``out``, ``losses``, ...);
- warning ``{"warning": str, "code": str}``: ``code`` is one of the stable ``WARNING_*`` codes of
  :mod:`land.interface.contract` (act on the code, never on the text);
- error ``{"error": str, "exit_code": int}``: the last line of a failed command; the exit code is the
  process's (see ``land.interface.contract.EXIT_CODES``);
- done ``{"done": bool, ...result}``: the last line of a command that finished (``done`` false: finished
  with failures it reports, e.g. prepare-lidc's failed cases).

Both Slicer modules read a child's stdout with :func:`parse_event`; :class:`Reporter` writes the events.
Torch-free.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO, Union

from .contract import WARNING_OTHER

__all__ = [
    "DoneEvent",
    "ErrorEvent",
    "Event",
    "ProgressEvent",
    "Reporter",
    "WarningEvent",
    "event_line",
    "parse_event",
    "write_event",
]


@dataclass(frozen=True)
class ProgressEvent:
    """``step`` of ``total`` done in ``stage`` (``eta_s``: seconds left in the stage, None if unknown)."""

    stage: str
    step: int
    total: int
    eta_s: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """``step / total`` clipped to [0, 1] (1 for an empty stage)."""
        return 1.0 if self.total <= 0 else min(max(self.step / self.total, 0.0), 1.0)


@dataclass(frozen=True)
class WarningEvent:
    """A warning with its stable code (``land.interface.contract.WARNING_*``)."""

    message: str
    code: str = WARNING_OTHER


@dataclass(frozen=True)
class ErrorEvent:
    """Why the command failed, and its exit code."""

    message: str
    exit_code: int


@dataclass(frozen=True)
class DoneEvent:
    """The command finished; ``ok`` false when it finished with failures it reports in ``details``."""

    ok: bool = True
    details: Mapping[str, Any] = field(default_factory=dict)


Event = Union[ProgressEvent, WarningEvent, ErrorEvent, DoneEvent]  # noqa: UP007 - a runtime alias


def _reserved(details: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if k not in keys}


def event_dict(event: Event) -> dict[str, Any]:
    """``event`` as its JSON object."""
    if isinstance(event, ProgressEvent):
        eta = None if event.eta_s is None else round(float(event.eta_s), 1)
        head = {"stage": event.stage, "step": int(event.step), "total": int(event.total), "eta_s": eta}
        return {**head, **_reserved(event.details, tuple(head))}
    if isinstance(event, WarningEvent):
        return {"warning": event.message, "code": event.code}
    if isinstance(event, ErrorEvent):
        return {"error": event.message, "exit_code": int(event.exit_code)}
    if isinstance(event, DoneEvent):
        return {"done": bool(event.ok), **_reserved(event.details, ("done",))}
    raise TypeError(f"not a LAND event: {event!r}")


def event_line(event: Event) -> str:
    """``event`` as one JSON line (no newline)."""
    return json.dumps(event_dict(event), default=str)


def write_event(event: Event, stream: TextIO | None = None) -> None:
    """Print ``event`` as a JSON line on ``stream`` (default stdout) and flush."""
    print(event_line(event), file=stream or sys.stdout, flush=True)


def _number(value: Any, kind: type, default: Any) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


def parse_event(line: str) -> Event | None:
    """The event on one line of a command's stdout; None for anything else (plain text, other JSON)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if "error" in obj:
        return ErrorEvent(str(obj["error"]), _number(obj.get("exit_code"), int, 1))
    if "warning" in obj:
        return WarningEvent(str(obj["warning"]), str(obj.get("code") or WARNING_OTHER))
    if "done" in obj:
        return DoneEvent(bool(obj["done"]), _reserved(obj, ("done",)))
    if "stage" in obj and "step" in obj and "total" in obj:
        eta = obj.get("eta_s")
        return ProgressEvent(
            str(obj["stage"]),
            _number(obj["step"], int, 0),
            _number(obj["total"], int, 0),
            None if eta is None else _number(eta, float, None),
            _reserved(obj, ("stage", "step", "total", "eta_s")),
        )
    return None


class Reporter:
    """Reports a command's progress as a tqdm bar (stderr), JSON event lines (stdout) or nothing.

    Call it with the engine's progress callbacks (``{"stage", "step", "total", ...}``); it adds the ETA.
    """

    def __init__(self, style: str) -> None:
        self.style = style
        self.bar = None
        self.started: dict[str, float] = {}
        self.last = time.monotonic()

    def emit(self, event: Event) -> None:
        """Write ``event`` (JSON style only; the other styles show progress through :meth:`__call__`)."""
        if self.style == "json":
            write_event(event)

    def done(self, ok: bool = True, **details: Any) -> None:
        """The command's last line under ``--progress json``."""
        self.emit(DoneEvent(ok, details))

    def warning(self, message: str, code: str = WARNING_OTHER) -> None:
        """A warning: on stderr, and with --progress json as a warning event."""
        print(f"warning: {message}", file=sys.stderr, flush=True)
        self.emit(WarningEvent(message, code))

    def show_warnings(self) -> None:
        """Route Python warnings (the engine's, with their stable ``code``) through :meth:`warning`."""
        warnings.showwarning = lambda message, category, *a, **k: self.warning(
            str(message), getattr(category, "code", WARNING_OTHER)
        )

    def __call__(self, event: Mapping[str, Any]) -> None:
        stage, step, total = str(event["stage"]), int(event["step"]), int(event["total"])
        now = time.monotonic()
        start = self.started.setdefault(stage, self.last)
        self.last = now
        # the caller's estimate when it gives one (None: unknown yet), else from this stage's pace
        eta = event["eta_s"] if "eta_s" in event else (now - start) / max(step, 1) * (total - step)
        if self.style == "json":
            details = _reserved(event, ("stage", "step", "total", "eta_s"))
            self.emit(ProgressEvent(stage, step, total, eta, details))
        elif self.style == "bar":
            from tqdm import tqdm

            if self.bar is None or self.bar.desc != stage:
                self.close()
                self.bar = tqdm(total=total, desc=stage, unit="step", file=sys.stderr)
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
