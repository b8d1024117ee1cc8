"""Teaching sets from the panel: ``land teaching-set`` run as a child process, like a generation."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from land.interface.childproc import ChildProcess

from .jobs import EngineJob, TeachingSetJob, teachingSetAvailability
from .options import (
    LANDSynthesisError,
    TeachingSetParameters,
    engineCommand,
)


class TeachingSetMixin:
    """LANDSynthesisLogic's teaching-set methods."""

    # ------------------------------------------------------------------ teaching sets
    def teachingSetCommand(self, parameters: TeachingSetParameters | Mapping[str, Any]) -> list[str]:
        """The ``land teaching-set`` command line for ``parameters`` (checked: LANDInputError says why)."""
        options = TeachingSetParameters.fromAny(parameters).check()
        return engineCommand(self.defaultPythonExecutable(), options)

    def startTeachingSet(
        self,
        parameters: TeachingSetParameters | Mapping[str, Any],
        onProgress: Callable[[dict[str, Any]], None] | None = None,
        onFinished: Callable[[EngineJob], None] | None = None,
    ) -> TeachingSetJob:
        """Start ``land teaching-set ... --progress json`` in the background; then :meth:`poll` until False
        (:meth:`cancel` stops it). The job's ``outputDirectory`` is the folder written."""
        if self.isRunning():
            raise LANDSynthesisError("LAND is already running a job; wait for it or cancel it first.")
        available, reason = teachingSetAvailability()
        if not available:
            raise LANDSynthesisError(reason)
        params = TeachingSetParameters.fromAny(parameters)
        command = self.teachingSetCommand(params)
        info = self.modelInfo(params.modelDirectory) if params.modelDirectory else None
        job = TeachingSetJob(params, info)
        job.command = command
        job.tempDir = Path(tempfile.mkdtemp(prefix="LANDTeaching-", dir=self.temporaryRoot()))
        self.job = job
        self._onProgress = onProgress
        self._onFinished = onFinished
        if self.startGate is not None:  # e.g. LAND Studio's class queue: poll() starts it when its turn comes
            self._emit({"state": job.state, "fraction": 0.0, "text": "Waiting for a generation slot…"})
            return job
        try:
            self._launchTeachingSet(job)
        except BaseException:
            self._removeTemp(job)
            self.job = None
            raise
        return job

    def _launchTeachingSet(self, job: TeachingSetJob) -> None:
        logging.info("LANDSynthesis: running %s", " ".join(job.command))
        job.child = ChildProcess(job.command, env=self.childEnvironment(), cwd=str(job.tempDir))
        job.state = EngineJob.RUNNING
        text = "Starting the teaching set (loading the model)…"
        self._emit({"state": job.state, "fraction": 0.0, "text": text})

    def _pollTeachingSetGate(self, job: TeachingSetJob) -> None:
        """A teaching set waiting for :attr:`startGate` (its place in a queue): started once it says None."""
        if job.cancelRequested:
            self._finish(job, EngineJob.CANCELLED)
            return
        waiting = self.startGate(job) if self.startGate is not None else None
        if waiting is not None:
            if waiting != job.progress.get("text"):
                self._emit({"state": "queued", "fraction": 0.0, "text": waiting})
            return
        self._launchTeachingSet(job)

    def runTeachingSet(
        self,
        parameters: TeachingSetParameters | Mapping[str, Any],
        onProgress: Callable[[dict[str, Any]], None] | None = None,
        pollInterval: float = 0.05,
        timeout: float | None = None,
    ) -> Path:
        """Blocking teaching set (:meth:`startTeachingSet` + :meth:`poll`); returns the output folder.

        Raises LANDInputError, LANDSynthesisError (with the engine's message) or GenerationCancelled."""
        job = self.startTeachingSet(parameters, onProgress)
        while self.poll():
            time.sleep(pollInterval)
            if timeout is not None and job.elapsed > timeout and not job.cancelRequested:
                self.cancel()
                job.error = f"the teaching set took longer than {timeout:g} s and was stopped"
        if job.state == EngineJob.CANCELLED and timeout is not None and job.error:
            raise LANDSynthesisError(job.error)
        return job.resultOrRaise()
