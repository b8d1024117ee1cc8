"""The training pipeline: prepare -> train VAE -> train LDM -> sample set -> evaluate, as ``land`` children.

Torch-free: ``land train-pipeline`` runs it, and the LANDTraining Slicer module drives the same runner from
its timer (the module keeps only its parameter node, loss plots and the hand-over of the new model). Each
stage (a :class:`Stage`) is one ``land`` command run as a child process (``PythonSlicer -m land ...`` in
Slicer, ``sys.executable -m land ...`` elsewhere), one after another, and every stage is resumable:

- ``prepare`` (``land prepare-lidc``) skips finished cases; it is skipped when ``--data`` already is a
  prepared dataset (a folder with ``manifest.csv``);
- ``vae`` / ``ldm`` (``land train-vae`` / ``train-ldm``) continue from ``checkpoint.pt`` with ``--resume``; a
  stage whose ``progress.jsonl`` ends with a ``done`` event next to ``model.json`` is finished;
- ``sample`` (``land sample-set``) skips finished files; ``evaluate`` (``land evaluate``) is cheap. Both are
  finished when the run state file says so for the same arguments.

Non-blocking use: :meth:`PipelineRunner.start`, then :meth:`PipelineRunner.poll` until it returns False; each
poll does a bounded amount of work. :meth:`PipelineRunner.run` is the blocking form;
:meth:`PipelineRunner.stop` stops the child's whole process tree (:mod:`land.interface.childproc`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..interface.childproc import ChildProcess
from ..interface.contract import (
    EXIT_BUG,
    EXIT_CANCELLED,
    EXIT_INPUT,
    EXIT_OK,
    SampleSetOptions,
    format_duration,
)
from ..interface.errors import InputError
from ..interface.events import ErrorEvent, ProgressEvent, parse_event
from .pipeline_run import (
    DONE,
    FAILED,
    RUNNING,
    SKIPPED,
    STAGE_COMMANDS,
    STATE_FORMAT,
    STOPPED,
    ProgressTail,
    StageStatus,
    TrainingError,
    TrainingInputError,
    TrainingOptions,
    TrainingRun,
    child_environment,
    count_cases,
    parse_stages,
    read_state,
    resolve_config,
    resume_arguments,
    training_finished,
    write_state,
)


# ---------------------------------------------------------------------------------------------- stages
class Stage:
    """One pipeline stage: its ``land`` command, when it need not or cannot run, and what its exit means."""

    name = ""

    def arguments(self, run: TrainingRun) -> list[str]:
        raise NotImplementedError

    def recorded(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        """What the run state file says of this stage's last run (empty when nothing)."""
        return (state.get("stages") or {}).get(self.name) or {}

    def finished(self, run: TrainingRun, state: Mapping[str, Any]) -> str | None:
        """Why the stage need not run (a message), or None when it must run."""
        recorded = self.recorded(state)
        if recorded.get("state") == DONE and recorded.get("arguments") == self.arguments(run):
            return "already done with these settings"
        return None

    def problem(self, run: TrainingRun) -> str | None:
        """What is missing before the stage can run (previous stages' outputs), or None."""
        return None

    def outcome(self, run: TrainingRun, code: int) -> tuple[str | None, str, int]:
        """(failure message or None, a note for the done message, the pipeline's exit code) for the child's
        exit ``code``: a child's own land exit code passes through (2 input, 3 model, 130 cancelled)."""
        if code == 0:
            return None, "", EXIT_OK
        cancelled = " (cancelled)" if code in (EXIT_CANCELLED, -2, -15) else ""
        reason = run.statuses[self.name].message
        detail = f": {reason}" if reason else f"; see {run.layout.logs / (self.name + '.log')}"
        exit_code = code if code > 0 else EXIT_CANCELLED if cancelled else EXIT_BUG
        return f"land {STAGE_COMMANDS[self.name]} exited with code {code}{cancelled}{detail}", "", exit_code


class PrepareStage(Stage):
    name = "prepare"

    def arguments(self, run: TrainingRun) -> list[str]:
        o, layout = run.options, run.layout
        args = ["prepare-lidc", "--dicom-root", str(layout.data), "--out", str(layout.dataset)]
        args += ["--workers", str(o.workers), "--progress", "json"]
        if o.limit:
            args += ["--limit", str(o.limit)]
        if o.lung_weights:
            args += ["--lung-weights", o.lung_weights]
        return args

    def finished(self, run: TrainingRun, state: Mapping[str, Any]) -> str | None:
        layout = run.layout
        if layout.data_is_prepared:
            return f"{layout.data} is a prepared dataset"
        if self.recorded(state).get("state") == DONE and (layout.dataset / "manifest.csv").is_file():
            return "already prepared"
        return None

    def outcome(self, run: TrainingRun, code: int) -> tuple[str | None, str, int]:
        dataset = run.layout.dataset
        if code in (0, 1) and count_cases(dataset) == 0:
            return (
                f"no case was prepared from {run.layout.data}: is it a LIDC-IDRI DICOM root "
                f"(LIDC-IDRI-XXXX/<study>/<series>/*.dcm)? See {run.layout.logs / 'prepare.log'}",
                "",
                EXIT_INPUT,
            )
        if code == 1 and (dataset / "manifest.csv").is_file():  # some cases failed, the rest are usable
            return None, f"; some cases failed (see {dataset / 'failures.csv'})", EXIT_OK
        return super().outcome(run, code)


class TrainStage(Stage):
    """``vae`` or ``ldm``: a trainer that resumes from its checkpoint."""

    def __init__(self, name: str) -> None:
        self.name = name

    def arguments(self, run: TrainingRun) -> list[str]:
        o, layout = run.options, run.layout
        out = layout.stage_directory(self.name)
        args = [
            STAGE_COMMANDS[self.name],
            "--data",
            str(layout.dataset),
            "--config",
            str(resolve_config(o.config)),
        ]
        args += ["--out", str(out)]
        if self.name == "ldm":
            args += ["--vae", str(layout.vae)]
        steps = o.vae_steps if self.name == "vae" else o.ldm_steps
        if steps:
            args += ["--max-steps", str(steps)]
        if self.name == "vae" and o.perceptual_weights:
            args += ["--perceptual-weights", o.perceptual_weights]
        return args + ["--device", o.device, "--progress", "none", *resume_arguments(out)]

    def finished(self, run: TrainingRun, state: Mapping[str, Any]) -> str | None:
        return "already trained" if training_finished(run.layout.stage_directory(self.name)) else None

    def problem(self, run: TrainingRun) -> str | None:
        layout = run.layout
        if not (layout.dataset / "manifest.csv").is_file():
            return f"no prepared dataset in {layout.dataset}: run the prepare stage first"
        if self.name == "ldm" and not training_finished(layout.vae):
            return f"no trained VAE in {layout.vae}: run the vae stage first"
        out = layout.stage_directory(self.name)
        if resume_arguments(out) and not run.resume:
            return (
                f"{out} holds an interrupted training run: press Resume (--resume) to continue it, or "
                "choose another output folder"
            )
        return None

    def outcome(self, run: TrainingRun, code: int) -> tuple[str | None, str, int]:
        out = run.layout.stage_directory(self.name)
        if code == 0 and not training_finished(out):
            return f"exited without writing a finished model to {out}", "", EXIT_BUG
        return super().outcome(run, code)


class SampleStage(Stage):
    name = "sample"

    def arguments(self, run: TrainingRun) -> list[str]:  # the option contract builds it
        o, layout = run.options, run.layout
        options = SampleSetOptions(
            model=str(layout.model),
            out=str(layout.samples),
            n=o.samples,
            masks=None if o.unconditional else str(layout.dataset),
            unconditional=o.unconditional,
            steps=o.sample_steps,
            sampler=o.sampler,
            seed=o.seed,
            device=o.device,
            progress="json",
        )
        try:
            return options.to_argv()
        except InputError as e:
            raise TrainingInputError(str(e)) from None

    def problem(self, run: TrainingRun) -> str | None:
        if not training_finished(run.layout.model):
            return f"no trained model in {run.layout.model}: run the ldm stage first"
        return None


class EvaluateStage(Stage):
    name = "evaluate"

    def arguments(self, run: TrainingRun) -> list[str]:
        o, layout = run.options, run.layout
        args = ["evaluate", "--real", str(layout.dataset), "--generated", str(layout.samples)]
        if not o.unconditional:
            args += ["--masks", str(layout.dataset)]
        if o.feature_weights:
            args += ["--feature-weights", o.feature_weights]
        return args + ["--device", o.device, "--out", str(layout.evaluation)]

    def problem(self, run: TrainingRun) -> str | None:
        if not any(run.layout.samples.glob("*")):
            return f"no generated samples in {run.layout.samples}: run the sample stage first"
        return None


STAGE_RUNNERS: dict[str, Stage] = {
    s.name: s for s in (PrepareStage(), TrainStage("vae"), TrainStage("ldm"), SampleStage(), EvaluateStage())
}


def stage_arguments(stage: str, run: TrainingRun) -> list[str]:
    """``land`` arguments of ``stage`` (``--resume`` where a checkpoint exists)."""
    if stage not in STAGE_RUNNERS:
        raise TrainingInputError(f"unknown stage {stage!r}")
    return STAGE_RUNNERS[stage].arguments(run)


# ---------------------------------------------------------------------------------------------- runner
def poll_until_done(poll: Callable[[], bool], on_error: Callable[[], None], interval: float = 0.2) -> None:
    """Call ``poll`` every ``interval`` seconds while it returns True; on any exception (Ctrl-C included)
    call ``on_error`` (stop the stage's process tree) and re-raise. The blocking form of a poll loop."""
    try:
        while poll():
            time.sleep(interval)
    except BaseException:
        on_error()
        raise


class PipelineRunner:
    """Runs the stages of a :class:`TrainingRun` as child processes, one after another."""

    stop_grace_seconds = 5.0  # after SIGTERM, the child gets this long before SIGKILL

    def __init__(
        self,
        python: str | None = None,
        environment: Mapping[str, str] | None = None,
        on_log: Callable[[str, str, str], None] | None = None,
        on_update: Callable[[TrainingRun], None] | None = None,
    ) -> None:
        self.python = python or sys.executable
        self.environment = environment
        self.on_log = on_log  # (stage, stream, line)
        self.on_update = on_update  # after every poll
        self.run_: TrainingRun | None = None

    @property
    def current(self) -> TrainingRun | None:
        return self.run_

    def is_running(self) -> bool:
        return self.run_ is not None and not self.run_.done

    def land_command(self, arguments: Sequence[str]) -> list[str]:
        return [self.python, "-m", "land", *arguments]

    # ------------------------------------------------------------------ running
    def start(
        self,
        options: TrainingOptions | Mapping[str, Any],
        stages: str | Sequence[str] = "all",
        resume: bool = False,
    ) -> TrainingRun:
        """Check the options and start the first stage that needs to run (returns at once)."""
        if self.is_running():
            raise TrainingError("a training run is already in progress; stop it first")
        opts = TrainingOptions.from_any(options).validate()
        run = TrainingRun(opts, parse_stages(stages), resume)
        state = read_state(run.layout)
        previous = {k: state.get(k) for k in ("data", "config")}
        if state and previous != {"data": str(run.layout.data), "config": opts.config}:
            raise TrainingInputError(
                f"{run.layout.out} holds a run with data {previous['data']} and config {previous['config']}; "
                "use the same data and config to continue it, or choose another output folder"
            )
        state.update(
            format=STATE_FORMAT,
            data=str(run.layout.data),
            config=opts.config,
            configFile=str(resolve_config(opts.config)),
            options=asdict(opts),
        )
        state.setdefault("stages", {})
        write_state(run.layout, state)
        self.run_ = run
        self._advance()
        return run

    def _emit_log(self, stage: str, stream: str, line: str) -> None:
        run = self.run_
        if run is not None and run.log is not None:
            try:
                run.log.write(f"{line}\n")
                run.log.flush()
            except (OSError, ValueError):
                pass
        if self.on_log is not None:
            self.on_log(stage, stream, line)

    def _record(self, stage: str, status: StageStatus) -> None:
        run = self.run_
        assert run is not None
        state = read_state(run.layout)
        state.setdefault("stages", {})[stage] = {
            "state": status.state,
            "message": status.message,
            "returnCode": status.return_code,
            "arguments": status.arguments,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_state(run.layout, state)

    def _advance(self) -> None:
        """Start the next stage that must run; finish the run when none is left."""
        run = self.run_
        assert run is not None
        while True:
            run.index += 1
            stage = run.current_stage
            if stage is None:
                run.state = TrainingRun.SUCCEEDED
                return
            status = run.statuses[stage]
            if run.stop_requested:
                for later in run.stages[run.index :]:
                    run.statuses[later].state = STOPPED
                run.state = TrainingRun.STOPPED
                return
            runner = STAGE_RUNNERS[stage]
            reason = runner.finished(run, read_state(run.layout))
            if reason:
                status.state, status.message = SKIPPED, reason
                self._emit_log(stage, "info", f"{status.title}: skipped ({reason})")
                continue
            problem = runner.problem(run)
            if problem:
                self._fail(stage, problem, EXIT_INPUT)
                return
            self._launch(stage)
            return

    def _launch(self, stage: str) -> None:
        run = self.run_
        assert run is not None
        status = run.statuses[stage]
        status.arguments = stage_arguments(stage, run)
        status.state, status.start_time = RUNNING, time.monotonic()
        status.step = status.total = 0
        status.eta_seconds = None
        run.layout.logs.mkdir(parents=True, exist_ok=True)
        if run.log is not None:
            run.log.close()
        run.log = (run.layout.logs / f"{stage}.log").open("a", encoding="utf-8")
        command = self.land_command(status.arguments)
        self._emit_log(stage, "info", f"{status.title}: {' '.join(command)}")
        progress = run.layout.progress_file(stage)
        run.tail = ProgressTail(progress) if progress is not None else None
        if run.tail is not None and "--resume" in status.arguments:
            for event in run.tail.read():  # the curve so far (the resumed run truncates to its checkpoint)
                self._handle_progress_event(status, event, live=False)
        elif run.tail is not None and progress is not None and progress.exists():
            run.tail.offset = progress.stat().st_size  # an old file that the trainer will replace
        try:
            env = child_environment(self.environment)
            run.child = ChildProcess(command, env=env, cwd=str(run.layout.out))
        except OSError as e:
            self._fail(stage, f"cannot start {command[0]}: {e}", EXIT_INPUT)

    def _fail(self, stage: str, message: str, code: int) -> None:
        run = self.run_
        assert run is not None
        status = run.statuses[stage]
        status.state, status.message = FAILED, message
        status.end_time = time.monotonic()
        run.state, run.error, run.error_code = TrainingRun.FAILED, f"{status.title}: {message}", code
        self._emit_log(stage, "error", run.error)
        self._record(stage, status)
        self._close_log()
        for later in run.stages[run.index + 1 :]:
            run.statuses[later].message = "not run"

    def _close_log(self) -> None:
        run = self.run_
        if run is not None and run.log is not None:
            run.log.close()
            run.log = None

    def _handle_progress_event(
        self, status: StageStatus, event: Mapping[str, Any], live: bool = True
    ) -> None:
        """A trainer's ``progress.jsonl`` event (land.train.progress)."""
        kind = event.get("event")
        if kind == "start":
            status.total = int(event.get("total") or status.total)
            status.step = int(event.get("start_step") or 0)
        elif kind == "step":
            status.step, status.total = int(event.get("step", 0)), int(event.get("total") or status.total)
            if live and event.get("eta_s") is not None:
                status.eta_seconds = float(event["eta_s"])
            status.add_losses(status.step, event.get("losses") or {})
        elif kind == "validation":
            values = {f"val_{k}": v for k, v in event.items() if k not in ("event", "step", "time", "cases")}
            status.add_losses(int(event.get("step", 0)), values)
        elif kind == "preview" and event.get("path"):
            path = Path(str(event["path"]))
            if not path.is_absolute() and self.run_ is not None:
                path = self.run_.layout.out / path
            status.preview = str(path)
        elif kind == "notice" and live:
            self._emit_log(status.stage, "notice", str(event.get("message", "")))
        elif kind == "done":
            status.step = status.total = int(event.get("step") or status.total)

    def handle_output_line(self, status: StageStatus, line: str) -> None:
        """Progress and errors from a child's event lines (land.interface.events; prepare-lidc, sample-set,
        eval)."""
        event = parse_event(line)
        if isinstance(event, ProgressEvent):
            if event.stage in ("denoise", "decode") and status.stage == "sample":
                return  # one sample's steps, not the stage's
            status.step, status.total = event.step, event.total
            if event.eta_s is not None:
                status.eta_seconds = event.eta_s
        elif isinstance(event, ErrorEvent):
            status.message = event.message

    def poll(self) -> bool:
        """Do a bounded amount of work; True while the run goes on."""
        run = self.run_
        if run is None or run.done:
            return False
        stage = run.current_stage
        child = run.child
        if stage is None or child is None:
            return not run.done
        status = run.statuses[stage]
        child.maybe_remember_descendants()
        for stream, line in child.read_lines():
            self.handle_output_line(status, line)
            self._emit_log(stage, stream, line)
        if run.tail is not None:
            for event in run.tail.read():
                self._handle_progress_event(status, event)
        if run.stop_requested and run.stop_time is not None and child.return_code() is None:
            if time.monotonic() - run.stop_time > self.stop_grace_seconds:
                child.kill()
        if child.finished():
            self._child_exited(stage, status, child)
        if self.on_update is not None:
            self.on_update(run)
        return not run.done

    def _child_exited(self, stage: str, status: StageStatus, child: ChildProcess) -> None:
        run = self.run_
        assert run is not None
        code = child.return_code()
        child.close()
        if run.tail is not None:  # the last events, written just before the child exited
            for event in run.tail.read():
                self._handle_progress_event(status, event)
        run.child = None
        status.return_code, status.end_time = code, time.monotonic()
        elapsed = format_duration(status.end_time - (status.start_time or status.end_time))
        if run.stop_requested:
            status.state, status.message = STOPPED, "stopped by the user; Resume continues it"
            run.state = TrainingRun.STOPPED
            for later in run.stages[run.index + 1 :]:
                run.statuses[later].state = STOPPED
            self._emit_log(stage, "info", f"{status.title}: stopped after {elapsed}")
            self._record(stage, status)
            self._close_log()
            return
        failure, note, exit_code = STAGE_RUNNERS[stage].outcome(run, code if code is not None else -1)
        if failure is None:
            status.state, status.message = DONE, f"done in {elapsed}{note}"
            self._emit_log(stage, "info", f"{status.title}: {status.message}")
            self._record(stage, status)
            self._advance()
            if run.done:
                self._close_log()
            return
        self._fail(stage, failure, exit_code)

    def stop(self) -> None:
        """Stop the run: SIGTERM to the child's process tree now, SIGKILL after the grace period."""
        run = self.run_
        if run is None or run.done:
            return
        run.stop_requested = True
        run.stop_time = time.monotonic()
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
        options: TrainingOptions | Mapping[str, Any],
        stages: str | Sequence[str] = "all",
        resume: bool = False,
        poll_interval: float = 0.2,
    ) -> TrainingRun:
        """Blocking form of :meth:`start` + :meth:`poll`; returns the finished run (check ``run.state``)."""
        run = self.start(options, stages, resume)
        poll_until_done(self.poll, self.kill, poll_interval)
        return run
