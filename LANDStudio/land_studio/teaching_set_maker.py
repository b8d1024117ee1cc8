"""Making the session's teaching set from the instructor page (``land studio --teaching-set NEW_DIR``).

The instructor's form (cases, nodule rate, textures, diameters, matched-pair rate, steps, seed) becomes the
desktop module's :class:`LANDSynthesisLib.options.TeachingSetParameters`, checked by its rules and then by the
engine's contract (:class:`land.interface.contract.TeachingSetOptions`, whose defaults fill the form); the set
is made by ``LANDSynthesisLogic.startTeachingSet``: ``land teaching-set ... --progress json`` as a child
process, polled and cancelled like a generation, waiting first for a slot of the class's one generation queue
(:class:`land_studio.jobqueue.QueueGate` as the logic's ``startGate``). The logic (it loads Slicer's core) is
imported on the first use, so a launcher serving an existing set never loads it.
"""

from __future__ import annotations

import dataclasses
import html
import sys
from pathlib import Path
from typing import Any

from land.interface.contract import DEFAULT_SAMPLER, DEFAULT_STEPS, TeachingSetOptions

from .jobqueue import JobQueue, QueueGate

# form field -> TeachingSetParameters field, with its label; the defaults are the engine contract's
FIELDS = (
    ("cases", "cases", "Cases"),
    ("nodule_rate", "noduleRate", "Share of cases with nodules (0..1)"),
    ("textures", "textures", "Nodule textures (1..5, e.g. 1,3,5)"),
    ("diameters", "diameters", "Nodule diameters in mm (e.g. 4-25)"),
    ("pair_rate", "pairRate", "Matched pairs: share of the cases with nodules (0..1)"),
    ("steps", "steps", f"Sampling steps ({DEFAULT_SAMPLER})"),
    ("seed", "seed", "Seed"),
)
DEFAULT_CASES = 10
ACTIVE = ("preparing", "queued", "running", "cancelling")


def form_defaults() -> dict[str, str]:
    """The form's initial values: ``land teaching-set``'s own defaults (land.interface.contract)."""
    opts = TeachingSetOptions()
    values = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    values["cases"] = DEFAULT_CASES  # the contract requires the number; it has no default
    values["steps"] = DEFAULT_STEPS[DEFAULT_SAMPLER]
    return {name: "" if values.get(name) is None else str(values[name]) for name, _, _ in FIELDS}


def parameters_from_form(form, out: Path) -> Any:
    """The desktop module's TeachingSetParameters from the form (LANDInputError names a bad field)."""
    from LANDSynthesisLib.options import LANDInputError, TeachingSetParameters

    values: dict[str, Any] = {"outputDirectory": str(out)}
    for name, param, label in FIELDS:
        text = str(form.get(name, "") or "").strip()
        if not text:
            continue
        if name in ("textures", "diameters"):
            values[param] = text
            continue
        try:
            values[param] = int(text) if name in ("cases", "steps", "seed") else float(text)
        except ValueError:
            kind = "a whole number" if name in ("cases", "steps", "seed") else "a number"
            raise LANDInputError(f"{label}: {text!r} is not {kind}.") from None
    params = TeachingSetParameters.fromAny(values)
    params.check()  # the panel's rules, then the engine's (land.interface.contract)
    return params


class TeachingSetMaker:
    """One ``land teaching-set`` run into ``set_dir`` at a time, through the class's queue."""

    def __init__(self, set_dir: Path, work_dir: Path, queue: JobQueue) -> None:
        self.setDir, self.workDir, self.queue = Path(set_dir), Path(work_dir), queue
        self.logic = None
        self.gate: QueueGate | None = None
        self.form = form_defaults()
        self.job: dict[str, Any] = {"state": "idle", "fraction": 0.0, "text": ""}
        self.error = ""
        self.warnings: list[str] = []

    def _logic(self):
        if self.logic is None:
            from . import ensure_module_path

            ensure_module_path()
            from LANDSynthesisLib.logic import LANDSynthesisLogic

            logic = LANDSynthesisLogic()
            logic.pythonExecutable = sys.executable
            logic.tempRoot = str(self.workDir / "jobs")
            Path(logic.tempRoot).mkdir(parents=True, exist_ok=True)
            self.gate = QueueGate(self.queue, "teaching set", logic.extraEnvironment)
            logic.startGate = self.gate
            self.logic = logic
        return self.logic

    @property
    def running(self) -> bool:
        return self.logic is not None and self.logic.isRunning()

    def start(self, form) -> None:
        """Start making the set from the instructor's form; errors (LANDInputError, ...) say what to fix."""
        self.form = {name: str(form.get(name, "") or "") for name, _, _ in FIELDS}
        logic = self._logic()
        if logic.isRunning():  # the logic refuses too; this says it in the instructor's words
            from LANDSynthesisLib.options import LANDSynthesisError

            raise LANDSynthesisError("A teaching set is being made already; wait for it or cancel it.")
        self.error, self.warnings = "", []
        params = parameters_from_form(form, self.setDir)
        self.workDir.mkdir(parents=True, exist_ok=True)
        logic.startTeachingSet(params, onProgress=self._onProgress)

    def cancel(self) -> None:
        if self.logic is not None:
            self.logic.cancel()

    def _onProgress(self, event: dict[str, Any]) -> None:
        if "warning" in event:
            self.warnings.append(str(event["warning"]))
            return
        self.job = {
            "state": event.get("state", ""),
            "fraction": float(event.get("fraction", 0.0)),
            "text": event.get("text", ""),
        }

    def poll(self) -> str | None:
        """Advance the run; its final state (succeeded, failed, cancelled) once, when it ends, else None."""
        logic = self.logic
        if logic is None or logic.job is None or logic.job.done:
            return None
        if logic.poll():
            return None
        if self.gate is not None:
            self.gate.leave()  # the slot goes to the next job of the class
        job = logic.job
        if job.state == job.FAILED:
            self.error = job.error or "the teaching set failed"
        return job.state

    def close(self) -> None:
        if self.logic is not None:
            self.logic.cleanup()
        if self.gate is not None:
            self.gate.leave()

    def state(self) -> dict[str, Any]:
        place = self.gate.place if self.gate is not None else None
        return {"job": self.job, "error": self.error, "warnings": self.warnings, "queue": place}

    # ------------------------------------------------------------------ the instructor page's part
    def html(self, token: str) -> str:
        """The form, or the run's progress with Cancel (the page reloads itself while it runs)."""
        esc = html.escape
        job = self.job
        hidden = f'<input type="hidden" name="token" value="{esc(token)}">'
        parts = [f'<p class="error" id="land-make-error">{esc(self.error)}</p>' if self.error else ""]
        parts += [f'<p class="warning">{esc(w)}</p>' for w in self.warnings[-3:]]
        if job["state"] in ACTIVE:
            parts.append(
                f'<p id="land-make-text">{esc(job["text"])}</p>'
                f'<progress id="land-make-progress" max="1" value="{job["fraction"]:.3f}"></progress>'
                f'<form method="post" action="instructor/cancel">{hidden}'
                '<button type="submit" id="land-make-cancel">Cancel</button></form>'
            )
            return "".join(parts)
        if job["state"] == "cancelled":
            parts.append("<p>Cancelled; finished cases are kept: the same settings resume the set.</p>")
        rows = "".join(
            f'<tr><td><label for="land-make-{name}">{esc(label)}</label></td><td><input name="{name}" '
            f'id="land-make-{name}" value="{esc(self.form.get(name, ""))}"></td></tr>'
            for name, _, label in FIELDS
        )
        parts.append(
            f"<p>Make the SYNTHETIC teaching set of this session in {esc(str(self.setDir))} with the bundled "
            "model (<code>land teaching-set</code>; it waits for the class's generation queue).</p>"
            f'<form method="post" action="instructor/make">{hidden}<table>{rows}</table>'
            '<button type="submit" id="land-make-start">Make the teaching set</button></form>'
        )
        return "".join(parts)
