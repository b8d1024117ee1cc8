"""LANDTraining: prepare LIDC-IDRI, train LAND's VAE and LDM, sample and evaluate, from Slicer.

A thin Slicer module (Module, Widget, Test); the Qt-free logic lives in ``LANDTrainingLib`` and every stage
runs as a ``land`` child process (``PythonSlicer -m land ...``). Without Qt (the ``slicer-core`` wheel) this
file still imports and exposes ``LANDTrainingLogic``. Headless: ``Scripts/train.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import slicer
import vtk
from slicer.util import VTKObservationMixin

_HERE = Path(__file__).resolve().parent
for _folder in (_HERE, _HERE.parent / "LANDSynthesis"):  # repository layout; installed: one folder for both
    if (_folder / "LANDSynthesisLib").is_dir() and str(_folder) not in sys.path:
        sys.path.append(str(_folder))

from LANDSynthesisLib.application import (  # noqa: E402
    HAVE_QT,  # noqa: F401 - part of the module's surface (tests check it)
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
    ctk,
    qt,
)
from LANDTrainingLib.logic import LANDTrainingLogic  # noqa: E402

from land.interface.contract import format_duration  # noqa: E402
from land.train.config_files import bundled_configs, config_summary  # noqa: E402
from land.train.pipeline_run import (  # noqa: E402
    FAILED,
    STAGE_TITLES,
    STAGES,
    TrainingError,
    TrainingRun,
)

__all__ = ["LANDTraining", "LANDTrainingLogic", "LANDTrainingTest", "LANDTrainingWidget"]

CONFIG_TITLES = {
    "paper": "paper (LAND paper networks, GPU)",
    "small": "small (128³ at 2 mm, fits a CPU)",
    "demo": "demo (the bundled demo model's)",
    "tiny": "tiny (tests only)",
}
CUSTOM_CONFIG = "__file__"
DEVICE_TITLES = (("auto", "Auto (GPU if available)"), ("cuda", "GPU (CUDA)"), ("cpu", "CPU"))
POLL_INTERVAL_MS = 250
MAX_LOG_LINES = 5000


# ---------------------------------------------------------------------------------------------- module
class LANDTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LAND Training"
        self.parent.categories = ["Simulation"]
        self.parent.dependencies = ["Tables", "Plots"]
        self.parent.contributors = ["LAND for 3D Slicer developers"]
        self.parent.helpText = (
            "Train a LAND model: prepare LIDC-IDRI (or use a prepared dataset), train the VAE, train the "
            "latent diffusion model, generate a sample set and evaluate it. Every stage runs in a child "
            "process and can be stopped and resumed. Headless: Slicer --no-main-window --python-script "
            "LANDTraining/Scripts/train.py -- --data DIR --out DIR --stage all."
        )
        self.parent.acknowledgementText = (
            "LAND: lung and nodule diffusion for 3D chest CT synthesis. Training data: LIDC-IDRI (TCIA)."
        )


# ---------------------------------------------------------------------------------------------- widget
class LANDTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel. Stages run in child processes; a QTimer polls the logic every 250 ms."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updating = False
        self.pollTimer = None
        self.plotWidget = None
        self.plotViewNode = None
        self._shownPreview = None
        self._logLines = 0

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LANDTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LANDTrainingLogic()

        for lineEdit, key in (
            (self.ui.dataPathLineEdit, "Data"),
            (self.ui.outputPathLineEdit, "Output"),
        ):
            lineEdit.filters = ctk.ctkPathLineEdit.Dirs
            lineEdit.settingKey = f"LANDTraining/{key}"
        for lineEdit in (
            self.ui.configPathLineEdit,
            self.ui.perceptualWeightsPathLineEdit,
            self.ui.featureWeightsPathLineEdit,
        ):
            lineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.configPathLineEdit.nameFilters = ["Training config (*.json)"]
        for name in bundled_configs():
            self.ui.configComboBox.addItem(CONFIG_TITLES.get(name, name), name)
        self.ui.configComboBox.addItem("JSON file ...", CUSTOM_CONFIG)
        for value, title in DEVICE_TITLES:
            self.ui.deviceComboBox.addItem(title, value)
        for stage in ("vae", "ldm"):
            self.ui.plotStageComboBox.addItem(STAGE_TITLES[stage], stage)
        self.ui.tensorboardLineEdit.readOnly = True
        self.ui.messagesTextEdit.readOnly = True
        self.ui.messagesTextEdit.setMaximumBlockCount(MAX_LOG_LINES)
        self.ui.progressBar.setRange(0, 1000)
        self.ui.stopButton.enabled = False
        self.ui.useModelButton.enabled = False
        self.ui.previewLabel.setMinimumHeight(160)
        self.ui.previewLabel.setAlignment(qt.Qt.AlignCenter)

        table = self.ui.stagesTable
        table.setColumnCount(2)
        table.setHorizontalHeaderLabels(["Stage", "State"])
        table.setRowCount(len(STAGES))
        for row, stage in enumerate(STAGES):
            table.setItem(row, 0, qt.QTableWidgetItem(STAGE_TITLES[stage]))
            table.setItem(row, 1, qt.QTableWidgetItem(""))
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setStretchLastSection(True)
        table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        table.setMinimumHeight(170)

        self.setupPlotWidget()

        self.ui.dataPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.outputPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.configComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.configPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        for spin in (
            self.ui.workersSpinBox,
            self.ui.limitSpinBox,
            self.ui.vaeStepsSpinBox,
            self.ui.ldmStepsSpinBox,
            self.ui.samplesSpinBox,
            self.ui.sampleStepsSpinBox,
        ):
            spin.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.perceptualWeightsPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.featureWeightsPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        for stage in STAGES:
            self.stageCheckBox(stage).toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.plotStageComboBox.currentIndexChanged.connect(self.showSelectedChart)
        self.ui.startButton.clicked.connect(lambda: self.onStart(resume=False))
        self.ui.resumeButton.clicked.connect(lambda: self.onStart(resume=True))
        self.ui.stopButton.clicked.connect(self.onStop)
        self.ui.useModelButton.clicked.connect(self.onUseModel)

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.timeout.connect(self.onPoll)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def setupPlotWidget(self) -> None:
        """A plot view inside the module panel showing the selected stage's loss chart."""
        try:
            self.plotViewNode = slicer.mrmlScene.GetSingletonNode("LANDTrainingPlot", "vtkMRMLPlotViewNode")
            if self.plotViewNode is None:
                node = slicer.vtkMRMLPlotViewNode()
                node.SetSingletonTag("LANDTrainingPlot")
                node.SetName("LANDTrainingPlot")
                self.plotViewNode = slicer.mrmlScene.AddNode(node)
            self.plotWidget = slicer.qMRMLPlotWidget()
            self.plotWidget.setMRMLScene(slicer.mrmlScene)
            self.plotWidget.setMRMLPlotViewNode(self.plotViewNode)
            self.plotWidget.setMinimumHeight(220)
            layout = qt.QVBoxLayout(self.ui.plotFrame)
            layout.setContentsMargins(0, 0, 0, 0)
            layout.addWidget(self.plotWidget)
        except Exception:  # noqa: BLE001 - no embedded plot: the chart nodes are still in the scene
            logging.exception("LANDTraining: cannot embed a plot view; use the Plots module")
            self.plotWidget = None

    def stageCheckBox(self, stage: str):
        return getattr(self.ui, f"{stage}StageCheckBox")

    def cleanup(self) -> None:
        self.removeObservers()
        if self.pollTimer is not None:
            self.pollTimer.stop()
        if self.logic is not None:
            self.logic.cleanup()  # a running stage is stopped with its process tree

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        pass  # training goes on while other modules are used

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, node) -> None:
        if self._parameterNode is not None:
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode
            )
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    @staticmethod
    def _setCombo(combo, value: str) -> None:
        index = combo.findData(value)
        if index >= 0:
            combo.setCurrentIndex(index)

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None or self._updating:
            return
        self._updating = True
        try:
            self.ui.dataPathLineEdit.currentPath = node.GetParameter("Data")
            self.ui.outputPathLineEdit.currentPath = node.GetParameter("Output")
            config = node.GetParameter("Config")
            if config in bundled_configs():
                self._setCombo(self.ui.configComboBox, config)
            else:
                self._setCombo(self.ui.configComboBox, CUSTOM_CONFIG)
                self.ui.configPathLineEdit.currentPath = config
            self.ui.configPathLineEdit.enabled = self.ui.configComboBox.currentData == CUSTOM_CONFIG
            self._setCombo(self.ui.deviceComboBox, node.GetParameter("Device"))
            for spin, key in (
                (self.ui.workersSpinBox, "Workers"),
                (self.ui.limitSpinBox, "Limit"),
                (self.ui.vaeStepsSpinBox, "VaeSteps"),
                (self.ui.ldmStepsSpinBox, "LdmSteps"),
                (self.ui.samplesSpinBox, "Samples"),
                (self.ui.sampleStepsSpinBox, "SampleSteps"),
            ):
                spin.value = int(node.GetParameter(key) or 0)
            self.ui.perceptualWeightsPathLineEdit.currentPath = node.GetParameter("PerceptualWeights")
            self.ui.featureWeightsPathLineEdit.currentPath = node.GetParameter("FeatureWeights")
            stages = node.GetParameter("Stages").split(",")
            for stage in STAGES:
                self.stageCheckBox(stage).checked = stage in stages
            self.updateInfoLabels()
            self.updateButtons()
        finally:
            self._updating = False

    def updateParameterNodeFromGUI(self, *args) -> None:
        node = self._parameterNode
        if node is None or self._updating:
            return
        wasModified = node.StartModify()
        try:
            node.SetParameter("Data", self.ui.dataPathLineEdit.currentPath)
            node.SetParameter("Output", self.ui.outputPathLineEdit.currentPath)
            config = self.ui.configComboBox.currentData
            if config == CUSTOM_CONFIG:
                config = self.ui.configPathLineEdit.currentPath
            node.SetParameter("Config", config or "")
            node.SetParameter("Device", self.ui.deviceComboBox.currentData or "auto")
            node.SetParameter("Workers", str(self.ui.workersSpinBox.value))
            node.SetParameter("Limit", str(self.ui.limitSpinBox.value or ""))
            node.SetParameter("VaeSteps", str(self.ui.vaeStepsSpinBox.value or ""))
            node.SetParameter("LdmSteps", str(self.ui.ldmStepsSpinBox.value or ""))
            node.SetParameter("Samples", str(self.ui.samplesSpinBox.value))
            node.SetParameter("SampleSteps", str(self.ui.sampleStepsSpinBox.value))
            node.SetParameter("PerceptualWeights", self.ui.perceptualWeightsPathLineEdit.currentPath)
            node.SetParameter("FeatureWeights", self.ui.featureWeightsPathLineEdit.currentPath)
            node.SetParameter("Stages", ",".join(s for s in STAGES if self.stageCheckBox(s).checked))
        finally:
            node.EndModify(wasModified)

    def updateInfoLabels(self) -> None:
        data = self.ui.dataPathLineEdit.currentPath
        if not data:
            text = "Choose a LIDC-IDRI DICOM folder or a prepared dataset."
        elif (Path(data) / "manifest.csv").is_file():
            text = "Prepared dataset (manifest.csv): the prepare stage is skipped."
        elif Path(data).is_dir():
            text = "DICOM root: the prepare stage converts it (needs pylidc) into OUTPUT/dataset."
        else:
            text = "This folder does not exist."
        self.ui.dataKindLabel.text = text
        config = self._parameterNode.GetParameter("Config") if self._parameterNode else ""
        self.ui.configSummaryLabel.text = config_summary(config) if config else ""
        out = self.ui.outputPathLineEdit.currentPath
        self.ui.tensorboardLineEdit.text = out
        self.ui.tensorboardLineEdit.toolTip = f"tensorboard --logdir {out}" if out else ""

    def updateButtons(self) -> None:
        running = self.logic.isRunning()
        for widget in (self.ui.startButton, self.ui.resumeButton, self.ui.inputsCollapsibleButton):
            widget.enabled = not running
        self.ui.advancedCollapsibleButton.enabled = not running
        self.ui.stopButton.enabled = running
        run = self.logic.currentRun
        model = self.logic.newModelDirectory(run) if run is not None else None
        self.ui.useModelButton.enabled = model is not None and not running
        self.ui.modelLabel.text = f"New model directory: {model}" if model else ""

    # ------------------------------------------------------------------ running
    def onStart(self, resume: bool) -> None:
        if self.logic.isRunning():
            return
        from LANDSynthesisLib import dependencies

        missing = dependencies.missingRequirements(includeOptional=True)
        if not dependencies.ensureInSlicer(missing, "LAND Training"):
            return
        self.updateParameterNodeFromGUI()
        node = self._parameterNode
        stages = node.GetParameter("Stages")
        try:
            parameters = self.logic.parametersFromNode(node)
            self.logic.start(parameters, stages, resume=resume, onLog=self.onLog, onUpdate=self.onUpdate)
        except TrainingError as e:
            slicer.util.errorDisplay(str(e), windowTitle="LAND: cannot start training")
            return
        self._shownPreview = None
        self.ui.messagesTextEdit.clear()
        self.updateButtons()
        self.pollTimer.start()

    def onPoll(self) -> None:
        try:
            goesOn = self.logic.poll()
        except Exception:  # noqa: BLE001 - a timer slot must not raise
            logging.exception("LANDTraining: poll failed")
            goesOn = False
            self.logic.cleanup()
        if not goesOn:
            self.pollTimer.stop()
            self.onFinished(self.logic.currentRun)

    def onStop(self) -> None:
        self.logic.stop()
        self.ui.stopButton.enabled = False
        self.ui.statusLabel.text = "Stopping (the stage's processes get a few seconds to exit) ..."

    def onLog(self, stage: str, stream: str, line: str) -> None:
        self.ui.messagesTextEdit.appendPlainText(f"[{stage}] {line}")

    def onUpdate(self, run: TrainingRun) -> None:
        self.ui.progressBar.value = int(round(1000 * run.fraction))
        stage = run.current_stage
        if stage is not None and not run.done:
            status = run.statuses[stage]
            self.ui.statusLabel.text = f"Stage {run.index + 1}/{len(run.stages)}: {status.progress_text()}"
            if stage in ("vae", "ldm"):
                self._setCombo(self.ui.plotStageComboBox, stage)
        for row, s in enumerate(STAGES):
            status = run.statuses.get(s)
            text = status.progress_text().split(": ", 1)[-1] if status is not None else "not selected"
            self.ui.stagesTable.item(row, 1).setText(text)
        self.showSelectedChart()
        self.showPreview(run.latest_preview())
        out = str(run.layout.out)
        self.ui.tensorboardLineEdit.text = out
        self.ui.tensorboardLineEdit.toolTip = f"tensorboard --logdir {out}"

    def showSelectedChart(self, *args) -> None:
        if self.plotViewNode is None:
            return
        stage = self.ui.plotStageComboBox.currentData
        run = self.logic.currentRun
        if run is None or stage not in run.statuses or not run.statuses[stage].losses:
            return
        _, chart = self.logic.lossNodes(stage)
        if self.plotViewNode.GetPlotChartNodeID() != chart.GetID():
            self.plotViewNode.SetPlotChartNodeID(chart.GetID())

    def showPreview(self, path: str | None) -> None:
        if not path or path == self._shownPreview or not os.path.isfile(path):
            return
        pixmap = qt.QPixmap(path)
        if pixmap.isNull():
            return
        self._shownPreview = path
        width = max(200, self.ui.previewLabel.width)
        self.ui.previewLabel.setPixmap(pixmap.scaledToWidth(width, qt.Qt.SmoothTransformation))
        self.ui.previewPathLabel.text = path

    def onFinished(self, run: TrainingRun | None) -> None:
        self.updateButtons()
        if run is None:
            return
        self.onUpdate(run)
        elapsed = format_duration(max(s.end_time or 0 for s in run.statuses.values()) - run.start_time)
        if run.state == TrainingRun.SUCCEEDED:
            self.ui.statusLabel.text = f"All stages done ({elapsed})."
            model = self.logic.newModelDirectory(run)
            if model is not None and slicer.util.confirmYesNoDisplay(
                f"Training finished. Use the new model\n{model}\nin LAND Synthesis now?",
                windowTitle="LAND: training finished",
            ):
                self.onUseModel()
        elif run.state == TrainingRun.STOPPED:
            self.ui.statusLabel.text = "Stopped. Resume continues from the last checkpoint."
        else:
            failed = [s for s in run.stages if run.statuses[s].state == FAILED]
            self.ui.statusLabel.text = f"Failed: {run.error}"
            slicer.util.errorDisplay(
                run.error or "Training failed.",
                windowTitle=f"LAND: {STAGE_TITLES[failed[0]] if failed else 'training'} failed",
            )

    def onUseModel(self) -> None:
        model = self.logic.newModelDirectory(self.logic.currentRun)
        if model is None:
            return
        try:
            self.logic.offerModelToSynthesis(model)
        except TrainingError as e:
            slicer.util.errorDisplay(str(e), windowTitle="LAND: model")
            return
        settings = qt.QSettings()
        settings.setValue("LANDSynthesis/ModelDirectory", str(model))
        slicer.util.selectModule("LANDSynthesis")


# ---------------------------------------------------------------------------------------------- test
class LANDTrainingTest(ScriptedLoadableModuleTest):
    """Inside the Slicer application: a tiny phantom dataset, the VAE and LDM stages with a few steps of the
    tiny config, the loss chart, a stop and resume, and the hand-over to LANDSynthesis."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LANDTraining_widget()
        self.setUp()
        self.test_LANDTraining_pipeline()

    def test_LANDTraining_widget(self):
        self.delayDisplay("Widget smoke test")
        slicer.util.selectModule("LANDTraining")
        widget = slicer.modules.LANDTrainingWidget
        self.assertGreater(widget.ui.configComboBox.count, 1)
        self.assertTrue(widget.ui.startButton.enabled)
        self.delayDisplay("Widget passed")

    def test_LANDTraining_pipeline(self):
        from LANDSynthesisLib import dependencies

        if dependencies.missingRequirements(includeOptional=False):
            self.delayDisplay("Skipped: the LAND engine's Python packages are not installed")
            return
        self.delayDisplay("Tiny training run")
        logic = LANDTrainingLogic()
        folder = Path(tempfile.mkdtemp(prefix="LANDTrainingTest-"))
        try:
            data = folder / "phantoms"
            subprocess.run(
                [logic.defaultPythonExecutable(), "-m", "land", "phantoms", "--n", "3", "--size", "32",
                 "--spacing", "8", "--out", str(data)],
                env=logic.childEnvironment(),
                check=True,
                capture_output=True,
            )  # fmt: skip
            params = {"data": str(data), "out": str(folder / "run"), "config": "tiny", "device": "cpu"}
            run = logic.run({**params, "vae_steps": 3, "ldm_steps": 2}, "vae,ldm")
            self.assertEqual(run.state, TrainingRun.SUCCEEDED, run.summary())
            self.assertIsNotNone(run.model_directory)
            _, chart = logic.lossNodes("vae")
            self.assertGreater(chart.GetNumberOfPlotSeriesNodes(), 0)
            node = logic.offerModelToSynthesis(run.model_directory)
            self.assertEqual(node.GetParameter("ModelDirectory"), str(run.model_directory))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Pipeline passed")
