"""The engine child's output: JSON progress/warning/error lines and stderr, turned into job state."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from land.interface.contract import WARNING_NODULE_OUTSIDE_LUNG
from land.interface.events import ErrorEvent, ProgressEvent, WarningEvent, parse_event

from .jobs import EngineJob, GenerationJob, TeachingSetJob
from .modelinfo import (
    formatDuration,
)
from .options import (
    DENOISE_SHARE,
)


class EngineOutputMixin:
    """LANDSynthesisLogic's handling of the engine's output lines."""

    def _handleLine(self, job: EngineJob, stream: str, line: str) -> None:
        if not line.strip():
            return
        event = parse_event(line) if stream == "stdout" else None
        if event is None:
            job.log.append(f"[{stream}] {line}")
            del job.log[:-200]
            logging.info("LAND engine: %s", line)
        elif isinstance(event, WarningEvent):
            reported = any("outside the lungs" in w for w in job.warnings)
            if event.code == WARNING_NODULE_OUTSIDE_LUNG and reported:
                logging.info("LAND engine: %s", event.message)  # already reported, with the segment names
            else:
                self._warn(job, event.message)
        elif isinstance(event, ErrorEvent):
            job.error, job.exitCode = event.message, event.exit_code
        elif isinstance(event, ProgressEvent):
            self._progressEvent(job, event)
        elif event.ok:
            if job.kind == TeachingSetJob.kind:
                if event.details.get("out"):
                    job.outputDirectory = Path(str(event.details["out"]))
                self._emit({"state": job.state, "fraction": 1.0, "text": "Teaching set written."})
            else:
                self._emit({"state": job.state, "fraction": 1.0, "text": "Loading the result…"})

    def _progressEvent(self, job: EngineJob, event: ProgressEvent) -> None:
        stage, step, total, eta = event.stage, event.step, max(event.total, 1), event.eta_s
        now = time.monotonic()
        job.stageStart.setdefault(stage, now)
        generating = job.kind == GenerationJob.kind
        if stage == "denoise":
            fraction = DENOISE_SHARE * step / total
            label = f"Denoising: step {step}/{total}"
            if generating and step >= 1 and step == total:
                seconds = (now - job.stageStart[stage]) / max(total - 1, 1)
                if total > 1:
                    self.lastSecondsPerStep[(job.modelInfo.name, job.parameters.device)] = seconds
        elif stage == "decode":
            fraction = DENOISE_SHARE + (1 - DENOISE_SHARE) * step / total
            label = f"Decoding: part {step}/{total}"
        elif stage == "case" and not generating:  # teaching set: ``step`` cases done of ``total``
            job.casesDone, job.casesTotal = step, total
            fraction = step / total
            if step < total:
                label = f"Case {step + 1}/{total} ({event.details.get('case', '')}): starting"
            else:
                label = f"All {total} cases generated; writing the answer key"
        elif not generating:  # another stage of the teaching set
            fraction = step / total
            label = f"{stage.replace('_', ' ').capitalize()}: {step}/{total}"
        else:
            fraction = job.progress.get("fraction", 0.0)
            label = f"{stage}: {step}/{total}"
        if not generating and stage in ("denoise", "decode") and getattr(job, "casesTotal", 0):
            done, cases = job.casesDone, job.casesTotal
            fraction = min((done + fraction) / cases, 1.0)
            label = f"Case {min(done + 1, cases)}/{cases}: {label}"
        if job.state == EngineJob.CANCELLING:
            label = "Cancelling… (" + label + ")"
        elif eta is not None and step < total:
            label += f", about {formatDuration(float(eta))} left"
        self._emit(
            {
                "state": job.state,
                "stage": stage,
                "step": step,
                "total": total,
                "eta_s": eta,
                "fraction": float(fraction),
                "text": label,
            }
        )

    def _failureMessage(self, job: EngineJob, code: int | None) -> str:
        if job.error:
            return job.error
        if job.outputPath is not None and code == 0:
            return f"the LAND engine finished but wrote no output file ({job.outputPath.name})"
        if job.kind == TeachingSetJob.kind and code == 0:
            return f"land teaching-set finished but its output folder {job.outputDirectory} does not exist"
        lines = [
            entry.split("] ", 1)[1]
            for entry in job.log
            if entry.startswith("[stderr]") and not entry.split("] ", 1)[1].startswith("warning:")
        ]
        lines = [line for line in lines if line.strip()]
        if lines:
            last = lines[-1].strip()
            if last.startswith("error: "):
                last = last[len("error: ") :]
            hint = ""
            if "No module named" in last:
                hint = " (a Python package of the LAND engine is missing: install the module's dependencies)"
            return f"{last}{hint} (exit code {code}; the full engine output is in the log)"
        if code is not None and code < 0:
            return f"the LAND engine was stopped by signal {-code}"
        return f"the LAND engine failed with exit code {code} and no message"
