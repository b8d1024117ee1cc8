"""The training pipeline: prepare -> train VAE -> train LDM -> sample set -> evaluate, as child processes.

Pure Python (no ``slicer``, no ``qt``; the run's parameters, layout and state are in :mod:`.runstate`): used
by :mod:`LANDTrainingLib.logic` (Slicer module, headless script) and testable anywhere. Each stage is
one ``land`` command run as a child process (``PythonSlicer -m land ...`` in Slicer, ``sys.executable -m
land ...`` elsewhere), one after another. Every stage is resumable:

- ``prepare`` (``land prepare-lidc``) skips finished cases; it is skipped when ``data`` already is a prepared
  dataset (a folder with ``manifest.csv``);
- ``vae`` / ``ldm`` (``land train-vae`` / ``train-ldm``) continue from ``checkpoint.pt`` with ``--resume``; a
  stage whose ``progress.jsonl`` ends with a ``done`` event next to ``model.json`` is finished;
- ``sample`` (``land sample-set``) skips finished files; ``evaluate`` (``land evaluate``) is cheap. Both are
  finished when the run state file says so for the same arguments.

Output folder layout: ``dataset/`` (prepared from DICOM), ``vae/``, ``ldm/`` (the new model directory),
``samples/``, ``evaluation/``, ``logs/<stage>.log`` and ``land_training.json`` (the run state).

Non-blocking use: :meth:`PipelineRunner.start`, then :meth:`PipelineRunner.poll` until it returns False (a
``qt.QTimer`` in the GUI); each poll does a bounded amount of work. :meth:`PipelineRunner.run` is the blocking
form; :meth:`PipelineRunner.stop` stops the child's whole process tree (see ``LANDSynthesisLib.process``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

try:  # the sibling module LANDSynthesis provides the child-process helper (shared, not copied)
    from LANDSynthesisLib.process import STDERR, ChildProcess, pythonExecutable  # noqa: F401 (for logic.py)
except ImportError:  # repository checkout without LANDSynthesis on sys.path
    _SYNTHESIS_DIR = Path(__file__).resolve().parents[2] / "LANDSynthesis"
    if (_SYNTHESIS_DIR / "LANDSynthesisLib" / "process.py").is_file():
        sys.path.append(str(_SYNTHESIS_DIR))
    from LANDSynthesisLib.process import ChildProcess

from land.contract import SampleSetOptions
from land.errors import InputError

from .runstate import (  # noqa: F401 - the run's parameters, layout and state, re-exported
    CHECKPOINT_FILE,
    DEVICES,
    DONE,
    FAILED,
    FINISHED_STATES,
    PENDING,
    RUNNING,
    SAMPLERS,
    SKIPPED,
    STAGE_COMMANDS,
    STAGE_TITLES,
    STAGES,
    STATE_FILE,
    STATE_FORMAT,
    STOPPED,
    Layout,
    ProgressTail,
    StageStatus,
    TrainingError,
    TrainingInputError,
    TrainingParameters,
    TrainingRun,
    availableConfigs,
    childEnvironment,
    configSummary,
    countCases,
    formatDuration,
    parseStages,
    readState,
    resolveConfig,
    trainingFinished,
    writeState,
)


# ---------------------------------------------------------------------------------------------- runner
class PipelineRunner:
    """Runs the stages of a :class:`TrainingRun` as child processes, one after another."""

    stopGraceSeconds = 5.0  # after SIGTERM, the child gets this long before SIGKILL

    def __init__(
        self,
        pythonExecutable: str | None = None,
        environment: Mapping[str, str] | None = None,
        onLog: Callable[[str, str, str], None] | None = None,
        onUpdate: Callable[[TrainingRun], None] | None = None,
    ) -> None:
        self.pythonExecutable = pythonExecutable or sys.executable
        self.environment = environment
        self.onLog = onLog  # (stage, stream, line)
        self.onUpdate = onUpdate  # after a poll that changed something
        self.run_: TrainingRun | None = None

    @property
    def current(self) -> TrainingRun | None:
        return self.run_

    def isRunning(self) -> bool:
        return self.run_ is not None and not self.run_.done

    # ------------------------------------------------------------------ commands
    def landCommand(self, arguments: Sequence[str]) -> list[str]:
        return [self.pythonExecutable, "-m", "land", *arguments]

    @staticmethod
    def stageArguments(stage: str, run: TrainingRun) -> list[str]:
        """``land`` arguments of ``stage`` (``--resume`` where a checkpoint exists and resuming)."""
        p, layout = run.parameters, run.layout
        config = str(resolveConfig(p.config))
        if stage == "prepare":
            args = ["prepare-lidc", "--dicom-root", str(layout.data), "--out", str(layout.dataset)]
            args += ["--workers", str(p.workers), "--progress", "json"]
            if p.limit:
                args += ["--limit", str(p.limit)]
            if p.lungWeights:
                args += ["--lung-weights", p.lungWeights]
            return args
        if stage in ("vae", "ldm"):
            out = layout.stageDirectory(stage)
            args = [STAGE_COMMANDS[stage], "--data", str(layout.dataset), "--config", config]
            args += ["--out", str(out)]
            if stage == "ldm":
                args += ["--vae", str(layout.vae)]
            steps = p.vaeSteps if stage == "vae" else p.ldmSteps
            if steps:
                args += ["--max-steps", str(steps)]
            if stage == "vae" and p.perceptualWeights:
                args += ["--perceptual-weights", p.perceptualWeights]
            args += ["--device", p.device, "--progress", "none"]
            if (out / CHECKPOINT_FILE).is_file():
                args.append("--resume")
            return args
        if stage == "sample":  # the engine's option contract builds it (land.contract.SampleSetOptions)
            options = SampleSetOptions(
                model=str(layout.model),
                out=str(layout.samples),
                n=p.samples,
                masks=None if p.unconditional else str(layout.dataset),
                steps=p.sampleSteps,
                sampler=p.sampler,
                seed=p.seed,
                device=p.device,
            )
            try:
                return options.to_argv()
            except InputError as e:
                raise TrainingInputError(str(e)) from None
        if stage == "evaluate":
            args = ["evaluate", "--real", str(layout.dataset), "--generated", str(layout.samples)]
            if not p.unconditional:
                args += ["--masks", str(layout.dataset)]
            if p.featureWeights:
                args += ["--feature-weights", p.featureWeights]
            return args + ["--device", p.device, "--out", str(layout.evaluation)]
        raise TrainingInputError(f"unknown stage {stage!r}")

    @staticmethod
    def stageFinished(stage: str, run: TrainingRun, state: Mapping[str, Any]) -> str | None:
        """Why ``stage`` need not run (a message), or None when it must run."""
        layout = run.layout
        recorded = (state.get("stages") or {}).get(stage) or {}
        if stage == "prepare":
            if layout.dataIsPrepared:
                return f"{layout.data} is a prepared dataset"
            if recorded.get("state") == DONE and (layout.dataset / "manifest.csv").is_file():
                return "already prepared"
            return None
        if stage in ("vae", "ldm"):
            return "already trained" if trainingFinished(layout.stageDirectory(stage)) else None
        if recorded.get("state") == DONE and recorded.get("arguments") == PipelineRunner.stageArguments(
            stage, run
        ):
            return "already done with these settings"
        return None

    @staticmethod
    def stageProblem(stage: str, run: TrainingRun) -> str | None:
        """What is missing before ``stage`` can run (previous stages' outputs), or None."""
        layout = run.layout
        if stage in ("vae", "ldm") and not (layout.dataset / "manifest.csv").is_file():
            return f"no prepared dataset in {layout.dataset}: run the prepare stage first"
        if stage == "ldm" and not trainingFinished(layout.vae):
            return f"no trained VAE in {layout.vae}: run the vae stage first"
        if stage == "sample" and not trainingFinished(layout.model):
            return f"no trained model in {layout.model}: run the ldm stage first"
        if stage == "evaluate" and not any(layout.samples.glob("*")):
            return f"no generated samples in {layout.samples}: run the sample stage first"
        if stage in ("vae", "ldm"):
            out = layout.stageDirectory(stage)
            if (out / CHECKPOINT_FILE).is_file() and not run.resume:
                return (
                    f"{out} holds an interrupted training run: press Resume (--resume) to continue it, or "
                    "choose another output folder"
                )
        return None

    # ------------------------------------------------------------------ running
    def start(
        self,
        parameters: TrainingParameters | Mapping[str, Any],
        stages: str | Sequence[str] = "all",
        resume: bool = False,
    ) -> TrainingRun:
        """Check the parameters and start the first stage that needs to run (returns at once)."""
        if self.isRunning():
            raise TrainingError("a training run is already in progress; stop it first")
        params = TrainingParameters.fromAny(parameters)
        params.check()
        run = TrainingRun(params, parseStages(stages), resume)
        state = readState(run.layout)
        previous = {k: state.get(k) for k in ("data", "config")}
        if state and previous != {"data": str(run.layout.data), "config": params.config}:
            raise TrainingInputError(
                f"{run.layout.out} holds a run with data {previous['data']} and config {previous['config']}; "
                "use the same data and config to continue it, or choose another output folder"
            )
        state.update(
            format=STATE_FORMAT,
            data=str(run.layout.data),
            config=params.config,
            configFile=str(resolveConfig(params.config)),
            parameters=asdict(params),
        )
        state.setdefault("stages", {})
        writeState(run.layout, state)
        self.run_ = run
        self._advance()
        return run

    def _emitLog(self, stage: str, stream: str, line: str) -> None:
        run = self.run_
        if run is not None and run.log is not None:
            try:
                run.log.write(f"{line}\n")
                run.log.flush()
            except (OSError, ValueError):
                pass
        if self.onLog is not None:
            self.onLog(stage, stream, line)

    def _record(self, stage: str, status: StageStatus) -> None:
        run = self.run_
        assert run is not None
        state = readState(run.layout)
        state.setdefault("stages", {})[stage] = {
            "state": status.state,
            "message": status.message,
            "returnCode": status.returnCode,
            "arguments": status.arguments,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        writeState(run.layout, state)

    def _advance(self) -> None:
        """Start the next stage that must run; finish the run when none is left."""
        run = self.run_
        assert run is not None
        while True:
            run.index += 1
            stage = run.currentStage
            if stage is None:
                run.state = TrainingRun.SUCCEEDED
                return
            status = run.statuses[stage]
            if run.stopRequested:
                for later in run.stages[run.index :]:
                    run.statuses[later].state = STOPPED
                run.state = TrainingRun.STOPPED
                return
            state = readState(run.layout)
            reason = self.stageFinished(stage, run, state)
            if reason:
                status.state, status.message = SKIPPED, reason
                self._emitLog(stage, "info", f"{status.title}: skipped ({reason})")
                continue
            problem = self.stageProblem(stage, run)
            if problem:
                self._fail(stage, problem)
                return
            self._launch(stage)
            return

    def _launch(self, stage: str) -> None:
        run = self.run_
        assert run is not None
        status = run.statuses[stage]
        status.arguments = self.stageArguments(stage, run)
        status.state, status.startTime = RUNNING, time.monotonic()
        status.step = status.total = 0
        status.etaSeconds = None
        run.layout.logs.mkdir(parents=True, exist_ok=True)
        if run.log is not None:
            run.log.close()
        run.log = (run.layout.logs / f"{stage}.log").open("a", encoding="utf-8")
        command = self.landCommand(status.arguments)
        self._emitLog(stage, "info", f"{status.title}: {' '.join(command)}")
        progress = run.layout.progressFile(stage)
        run.tail = ProgressTail(progress) if progress is not None else None
        if run.tail is not None and "--resume" in status.arguments:
            for event in run.tail.read():  # the curve so far (the resumed run truncates to its checkpoint)
                self._handleProgressEvent(status, event, live=False)
        elif run.tail is not None and progress is not None and progress.exists():
            run.tail.offset = progress.stat().st_size  # an old file that the trainer will replace
        try:
            env = childEnvironment(self.environment)
            run.child = ChildProcess(command, env=env, cwd=str(run.layout.out))
        except OSError as e:
            self._fail(stage, f"cannot start {command[0]}: {e}")

    def _fail(self, stage: str, message: str) -> None:
        run = self.run_
        assert run is not None
        status = run.statuses[stage]
        status.state, status.message = FAILED, message
        status.endTime = time.monotonic()
        run.state, run.error = TrainingRun.FAILED, f"{status.title}: {message}"
        self._emitLog(stage, "error", run.error)
        self._record(stage, status)
        self._closeLog()
        for later in run.stages[run.index + 1 :]:
            run.statuses[later].message = "not run"

    def _closeLog(self) -> None:
        run = self.run_
        if run is not None and run.log is not None:
            run.log.close()
            run.log = None

    def _handleProgressEvent(self, status: StageStatus, event: Mapping[str, Any], live: bool = True) -> None:
        kind = event.get("event")
        if kind == "start":
            status.total = int(event.get("total") or status.total)
            status.step = int(event.get("start_step") or 0)
        elif kind == "step":
            status.step, status.total = int(event.get("step", 0)), int(event.get("total") or status.total)
            if live and event.get("eta_s") is not None:
                status.etaSeconds = float(event["eta_s"])
            status.addLosses(status.step, event.get("losses") or {})
        elif kind == "validation":
            values = {f"val_{k}": v for k, v in event.items() if k not in ("event", "step", "time", "cases")}
            status.addLosses(int(event.get("step", 0)), values)
        elif kind == "preview" and event.get("path"):
            path = Path(str(event["path"]))
            if not path.is_absolute():
                path = (self.run_.layout.out / path) if self.run_ else path
            status.preview = str(path)
        elif kind == "notice" and live:
            self._emitLog(status.stage, "notice", str(event.get("message", "")))
        elif kind == "done":
            status.step = status.total = int(event.get("step") or status.total)

    def _handleOutputLine(self, status: StageStatus, stream: str, line: str) -> None:
        """Progress from the child's JSON lines (prepare-lidc, sample-set, evaluate: land.cli.Reporter)."""
        text = line.strip()
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                inner = obj.get("stage") in ("denoise", "decode")  # one sample's steps, not the stage's
                if "step" in obj and "total" in obj and not (inner and status.stage == "sample"):
                    status.step, status.total = int(obj["step"]), int(obj["total"])
                    if obj.get("eta_s") is not None:
                        status.etaSeconds = float(obj["eta_s"])
                if "error" in obj:
                    status.message = str(obj["error"])

    def poll(self) -> bool:
        """Do a bounded amount of work; True while the run goes on."""
        run = self.run_
        if run is None or run.done:
            return False
        stage = run.currentStage
        child = run.child
        if stage is None or child is None:
            return not run.done
        status = run.statuses[stage]
        child.maybeRememberDescendants()
        for stream, line in child.readLines():
            self._handleOutputLine(status, stream, line)
            self._emitLog(stage, stream, line)
        if run.tail is not None:
            for event in run.tail.read():
                self._handleProgressEvent(status, event)
        if run.stopRequested and run.stopTime is not None and child.returnCode() is None:
            if time.monotonic() - run.stopTime > self.stopGraceSeconds:
                child.kill()
        if child.finished():
            self._childExited(stage, status, child)
        if self.onUpdate is not None:
            self.onUpdate(run)
        return not run.done

    def _childExited(self, stage: str, status: StageStatus, child: ChildProcess) -> None:
        run = self.run_
        assert run is not None
        rc = child.returnCode()
        child.close()
        if run.tail is not None:  # the last events, written just before the child exited
            for event in run.tail.read():
                self._handleProgressEvent(status, event)
        run.child = None
        status.returnCode, status.endTime = rc, time.monotonic()
        elapsed = formatDuration(status.endTime - (status.startTime or status.endTime))
        if run.stopRequested:
            status.state, status.message = STOPPED, "stopped by the user; Resume continues it"
            run.state = TrainingRun.STOPPED
            for later in run.stages[run.index + 1 :]:
                run.statuses[later].state = STOPPED
            self._emitLog(stage, "info", f"{status.title}: stopped after {elapsed}")
            self._record(stage, status)
            self._closeLog()
            return
        partial = stage == "prepare" and rc == 1 and (run.layout.dataset / "manifest.csv").is_file()
        if stage == "prepare" and rc in (0, 1) and countCases(run.layout.dataset) == 0:
            self._fail(
                stage,
                f"no case was prepared from {run.layout.data}: is it a LIDC-IDRI DICOM root "
                f"(LIDC-IDRI-XXXX/<study>/<series>/*.dcm)? See {run.layout.logs / 'prepare.log'}",
            )
            return
        if rc == 0 or partial:
            if stage in ("vae", "ldm") and not trainingFinished(run.layout.stageDirectory(stage)):
                out = run.layout.stageDirectory(stage)
                self._fail(stage, f"exited without writing a finished model to {out}")
                return
            status.state = DONE
            status.message = (
                f"done in {elapsed}; some cases failed (see {run.layout.dataset / 'failures.csv'})"
                if partial
                else f"done in {elapsed}"
            )
            self._emitLog(stage, "info", f"{status.title}: {status.message}")
            self._record(stage, status)
            self._advance()
            if run.done:
                self._closeLog()
            return
        reason = status.message if status.message and status.message != "not run" else ""
        cancelled = " (cancelled)" if rc in (130, -2, -15) else ""
        self._fail(
            stage,
            f"land {STAGE_COMMANDS[stage]} exited with code {rc}{cancelled}"
            + (f": {reason}" if reason else f"; see {run.layout.logs / (stage + '.log')}"),
        )

    def stop(self) -> None:
        """Stop the run: SIGTERM to the child's process tree now, SIGKILL after the grace period."""
        run = self.run_
        if run is None or run.done:
            return
        run.stopRequested = True
        run.stopTime = time.monotonic()
        if run.child is not None:
            run.child.terminate()
        else:
            run.state = TrainingRun.STOPPED

    def kill(self) -> None:
        """Stop the child's process tree at once and wait for the run to end."""
        run = self.run_
        if run is None or run.done:
            return
        self.stop()
        if run.child is not None:
            run.child.kill()
        deadline = time.monotonic() + 10
        while self.poll() and time.monotonic() < deadline:
            time.sleep(0.05)

    def run(
        self,
        parameters: TrainingParameters | Mapping[str, Any],
        stages: str | Sequence[str] = "all",
        resume: bool = False,
        pollInterval: float = 0.2,
    ) -> TrainingRun:
        """Blocking form of :meth:`start` + :meth:`poll`; returns the finished run (check ``run.state``)."""
        run = self.start(parameters, stages, resume)
        try:
            while self.poll():
                time.sleep(pollInterval)
        except BaseException:
            self.kill()
            raise
        return run
