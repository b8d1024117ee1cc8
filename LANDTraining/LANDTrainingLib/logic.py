"""``LANDTrainingLogic``: the engine's training pipeline (``land.train.pipeline``, driven from the panel's
timer) with Slicer's parameter node, loss plots and the hand-over of the new model to LANDSynthesis.

Qt-free: runs inside the Slicer application, in ``Slicer --python-script`` and on the ``slicer-core`` wheel
(tests). The loss curves are MRML nodes: one ``vtkMRMLTableNode`` (a ``step`` column and one column per loss)
and one ``vtkMRMLPlotSeriesNode`` per loss in a ``vtkMRMLPlotChartNode`` for each training stage.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
from LANDSynthesisLib.mrml import moduleParameterNode

from land.interface.childproc import python_executable
from land.train.pipeline import PipelineRunner, poll_until_done
from land.train.pipeline_run import (
    STAGES,
    TrainingError,
    TrainingInputError,
    TrainingOptions,
    TrainingRun,
    child_environment,
    training_finished,
)

try:  # the Slicer application; absent from the slicer-core wheel (no Qt)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:
    _LogicBase = None

MODULE_NAME = "LANDTraining"
SYNTHESIS_MODULE_NAME = "LANDSynthesis"
PLOT_STAGES = ("vae", "ldm")
LOSS_ATTRIBUTE = "LAND.TrainingLosses"  # attribute of the table / chart nodes: the stage
SERIES_COLORS = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
                 (0.58, 0.4, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5))  # fmt: skip

# parameter node key -> (TrainingOptions field, type): the engine's options, stored under Slicer-style keys
PARAMETERS = {
    "Data": ("data", str),
    "Output": ("out", str),
    "Config": ("config", str),
    "Device": ("device", str),
    "Workers": ("workers", int),
    "Limit": ("limit", int),
    "LungWeights": ("lung_weights", str),
    "PerceptualWeights": ("perceptual_weights", str),
    "VaeSteps": ("vae_steps", int),
    "LdmSteps": ("ldm_steps", int),
    "Samples": ("samples", int),
    "SampleSteps": ("sample_steps", int),
    "Sampler": ("sampler", str),
    "Seed": ("seed", int),
    "Unconditional": ("unconditional", bool),
    "FeatureWeights": ("feature_weights", str),
}
OPTIONAL = {"limit", "lung_weights", "perceptual_weights", "vae_steps", "ldm_steps", "feature_weights"}


class LANDTrainingLogic(_LogicBase or object):  # type: ignore[misc]
    """Module logic (see the module docstring). Usable without the Slicer application."""

    def __init__(self, parent=None) -> None:
        if _LogicBase is not None:
            _LogicBase.__init__(self)
        self.moduleName = MODULE_NAME
        self.pythonExecutable: str | None = None  # None: PythonSlicer in Slicer, sys.executable elsewhere
        self.environment: dict[str, str] | None = None  # None: Slicer's startup environment / os.environ
        self.runner: PipelineRunner | None = None
        self._onLog: Callable[[str, str, str], None] | None = None
        self._onUpdate: Callable[[TrainingRun], None] | None = None
        self._plottedVersions: dict[str, int] = {}
        self._lossRows: dict[str, tuple[list[str] | None, int, float | None]] = {}  # names, rows, last step

    # ------------------------------------------------------------------ parameter node
    def getParameterNode(self):
        node = moduleParameterNode(self, _LogicBase, self.moduleName)
        self.setDefaultParameters(node)
        return node

    def setDefaultParameters(self, parameterNode) -> None:
        defaults = TrainingOptions()
        for key, (name, kind) in PARAMETERS.items():
            if parameterNode.GetParameter(key):
                continue
            value = getattr(defaults, name)
            if value is None:
                continue
            parameterNode.SetParameter(key, ("true" if value else "false") if kind is bool else str(value))
        if not parameterNode.GetParameter("Stages"):
            parameterNode.SetParameter("Stages", ",".join(STAGES))

    @staticmethod
    def parametersFromNode(parameterNode) -> TrainingOptions:
        """TrainingOptions from a parameter node (empty optional values: None)."""
        values: dict[str, Any] = {}
        for key, (name, kind) in PARAMETERS.items():
            text = parameterNode.GetParameter(key)
            if kind is bool:
                values[name] = text == "true"
            elif text == "" or (kind is int and name in OPTIONAL and text == "0"):
                if name in OPTIONAL:
                    values[name] = None
            elif kind is int:
                try:
                    values[name] = int(text)
                except ValueError as e:
                    raise TrainingInputError(f"{key} must be a whole number, got {text!r}") from e
            else:
                values[name] = text
        return TrainingOptions(**values)

    @staticmethod
    def setParametersToNode(parameterNode, parameters: TrainingOptions | Mapping[str, Any]) -> None:
        params = TrainingOptions.from_any(parameters)
        wasModified = parameterNode.StartModify()
        try:
            for key, (name, kind) in PARAMETERS.items():
                value = getattr(params, name)
                text = "" if value is None else ("true" if value else "false") if kind is bool else str(value)
                parameterNode.SetParameter(key, text)
        finally:
            parameterNode.EndModify(wasModified)

    # ------------------------------------------------------------------ child processes
    def defaultPythonExecutable(self) -> str:
        return self.pythonExecutable or python_executable(hasattr(slicer, "app"))

    def childEnvironment(self) -> dict[str, str]:
        if self.environment is not None:
            base = self.environment
        elif hasattr(slicer, "app"):
            base = dict(slicer.util.startupEnvironment())
        else:
            base = dict(os.environ)
        return child_environment(base)

    # ------------------------------------------------------------------ running
    @property
    def currentRun(self) -> TrainingRun | None:
        return self.runner.current if self.runner is not None else None

    def isRunning(self) -> bool:
        return self.runner is not None and self.runner.is_running()

    def start(
        self,
        parameters: TrainingOptions | Mapping[str, Any],
        stages: str | Sequence[str] = "all",
        resume: bool = False,
        onLog: Callable[[str, str, str], None] | None = None,
        onUpdate: Callable[[TrainingRun], None] | None = None,
    ) -> TrainingRun:
        """Start the run (returns at once); then call :meth:`poll` until it returns False."""
        if self.isRunning():
            raise TrainingError("a training run is already in progress; stop it first")
        self._onLog, self._onUpdate = onLog, onUpdate
        self._plottedVersions = {}
        self._lossRows = {}
        self.runner = PipelineRunner(
            self.defaultPythonExecutable(), self.childEnvironment(), on_log=self._log
        )
        run = self.runner.start(parameters, stages, resume)
        self._update(run)
        return run

    def _log(self, stage: str, stream: str, line: str) -> None:
        if self._onLog is not None:
            self._onLog(stage, stream, line)

    def _update(self, run: TrainingRun) -> None:
        if slicer.mrmlScene is not None:
            self.updateLossPlots(run)
        if self._onUpdate is not None:
            self._onUpdate(run)

    def poll(self) -> bool:
        """Bounded work on the calling thread (read output and progress, start the next stage); True while
        the run goes on."""
        if self.runner is None:
            return False
        goesOn = self.runner.poll()
        run = self.runner.current
        if run is not None:
            self._update(run)
        return goesOn

    def stop(self) -> None:
        """Stop the current stage's process tree (SIGTERM, SIGKILL after a grace period)."""
        if self.runner is not None:
            self.runner.stop()

    def run(
        self,
        parameters: TrainingOptions | Mapping[str, Any],
        stages: str | Sequence[str] = "all",
        resume: bool = False,
        onLog: Callable[[str, str, str], None] | None = None,
        onUpdate: Callable[[TrainingRun], None] | None = None,
        pollInterval: float = 0.2,
    ) -> TrainingRun:
        """Blocking form (headless script, tests): returns the finished run; check ``run.state``."""
        run = self.start(parameters, stages, resume, onLog=onLog, onUpdate=onUpdate)
        poll_until_done(self.poll, self.cleanup, pollInterval)
        return run

    def cleanup(self) -> None:
        """Stop a running stage with its whole process tree and wait for it."""
        if self.runner is not None and self.runner.is_running():
            self.runner.kill()

    # ------------------------------------------------------------------ loss plots
    def lossNodes(self, stage: str):
        """(table node, chart node) of a stage's loss curves, created on first use."""
        scene = slicer.mrmlScene
        table = chart = None
        # slicer.util.getNodesByClass releases the vtkCollection that scene.GetNodesByClass hands over
        for node in slicer.util.getNodesByClass("vtkMRMLTableNode", scene):
            if node.GetAttribute(LOSS_ATTRIBUTE) == stage:
                table = node
        for node in slicer.util.getNodesByClass("vtkMRMLPlotChartNode", scene):
            if node.GetAttribute(LOSS_ATTRIBUTE) == stage:
                chart = node
        title = {"vae": "VAE", "ldm": "LDM"}.get(stage, stage)
        if table is None:
            table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"LAND {title} losses")
            table.SetAttribute(LOSS_ATTRIBUTE, stage)
        if chart is None:
            chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"LAND {title} training losses")
            chart.SetAttribute(LOSS_ATTRIBUTE, stage)
            chart.SetTitle(f"LAND {title} training losses")
            chart.SetXAxisTitle("step")
            chart.SetYAxisTitle("loss")
        return table, chart

    def updateLossPlots(self, run: TrainingRun) -> dict[str, Any]:
        """Write each training stage's losses into its table and chart (only when they changed)."""
        charts = {}
        for stage in PLOT_STAGES:
            status = run.statuses.get(stage)
            if status is None or not status.losses:
                continue
            if self._plottedVersions.get(stage) == status.loss_version:
                continue
            self._plottedVersions[stage] = status.loss_version
            charts[stage] = self.writeLossCurves(stage, status.losses)
        return charts

    def _appendLossRows(self, stage: str, table, names: list[str], columns: list[np.ndarray]) -> bool:
        """Write only the rows after the last one written before (that one again: a loss of its step may
        have arrived since). False when the table must be rewritten (other losses, or steps that went back
        after a resume)."""
        names0, rows0, last0 = self._lossRows.get(stage, (None, 0, None))
        vtable = table.GetTable()
        n = len(columns[0])
        if names0 != names or rows0 == 0 or vtable.GetNumberOfRows() != rows0 or n < rows0:
            return False
        if columns[0][rows0 - 1] != last0:
            return False
        arrays = [vtable.GetColumnByName(name) for name in ("step", *names)]
        if any(a is None for a in arrays):
            return False
        vtable.SetNumberOfRows(n)
        for array, values in zip(arrays, columns, strict=True):
            for i in range(rows0 - 1, n):
                array.SetValue(i, float(values[i]))
            array.Modified()
        vtable.Modified()
        table.Modified()
        return True

    def writeLossCurves(self, stage: str, losses: Mapping[str, Sequence[tuple[int, float]]]):
        """Table columns ``step`` + one per loss (NaN where a loss was not logged) and one series per loss."""
        table, chart = self.lossNodes(stage)
        names = sorted(losses)
        steps = sorted({s for series in losses.values() for s, _ in series})
        index = {s: i for i, s in enumerate(steps)}
        columns = [np.asarray(steps, dtype=np.float64)]
        for name in names:
            column = np.full(len(steps), math.nan)
            for s, v in losses[name]:
                column[index[s]] = v
            columns.append(column)
        if not self._appendLossRows(stage, table, names, columns):
            slicer.util.updateTableFromArray(table, columns, ["step", *names])
        self._lossRows[stage] = (names, len(steps), steps[-1] if steps else None)
        existing = {}
        for i in range(chart.GetNumberOfPlotSeriesNodes()):
            series = chart.GetNthPlotSeriesNode(i)
            if series is not None:
                existing[series.GetYColumnName()] = series
        for i, name in enumerate(names):
            series = existing.get(name)
            if series is None:
                series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{stage} {name}")
                series.SetAndObserveTableNodeID(table.GetID())
                series.SetXColumnName("step")
                series.SetYColumnName(name)
                series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
                series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
                series.SetColor(*SERIES_COLORS[i % len(SERIES_COLORS)])
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return chart

    # ------------------------------------------------------------------ results
    @staticmethod
    def newModelDirectory(run: TrainingRun | None) -> Path | None:
        return run.model_directory if run is not None else None

    def offerModelToSynthesis(self, modelDirectory: str | os.PathLike):
        """Make ``modelDirectory`` LANDSynthesis's model (its parameter node: source 'directory' + path)."""
        path = Path(modelDirectory)
        if not (path / "model.json").is_file() or not training_finished(path):
            raise TrainingError(f"{path} is not a finished LAND model directory (model.json, training done)")
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(SYNTHESIS_MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(SYNTHESIS_MODULE_NAME)
            node.SetModuleName(SYNTHESIS_MODULE_NAME)
            node.SetName(SYNTHESIS_MODULE_NAME)
            node = scene.AddNode(node)
        wasModified = node.StartModify()
        node.SetParameter("ModelSource", "directory")
        node.SetParameter("ModelDirectory", str(path))
        node.EndModify(wasModified)
        return node
