"""LANDSynthesis: synthesize a 3D chest CT from lung and nodule masks with LAND (latent diffusion).

A thin Slicer module (Module, Widget, Test); the Qt-free logic lives in ``LANDSynthesisLib`` and the engine in
``land`` (run in a child process). Without Qt (the ``slicer-core`` wheel) this file still imports and exposes
``LANDSynthesisLogic``; only the widget and the in-application test need the Slicer application.
"""

from __future__ import annotations

import slicer
import vtk
from LANDSynthesisLib import dependencies
from LANDSynthesisLib import segments as seglib
from LANDSynthesisLib.application import (
    HAVE_QT,  # noqa: F401 - part of the module's surface (tests check it)
    ScriptedLoadableModule,
    ScriptedLoadableModuleWidget,
    ctk,
    qt,
)
from LANDSynthesisLib.logic import (
    BUNDLED_MODEL_NAME,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    FITS,
    GUIDANCE_MODES,
    MAX_GUIDANCE,
    MODES,
    SAMPLER_TITLES,
    SAMPLERS,
    GenerationJob,
    LANDSynthesisError,
    LANDSynthesisLogic,
    TeachingSetJob,
    bundledModelDirectory,
    bundledModelMissingMessage,
    formatDuration,
    is_guided,
    readModelInfo,
    teachingSetAvailability,
    timeNote,
)
from LANDSynthesisLib.widget_masks import MaskActionsMixin
from LANDSynthesisLib.widget_teaching import TeachingActionsMixin
from slicer.util import VTKObservationMixin

__all__ = ["LANDSynthesis", "LANDSynthesisLogic", "LANDSynthesisTest", "LANDSynthesisWidget"]

MODE_TITLES = {
    "": "Model default",
    "none": "none (unconditional)",
    "nodule": "nodules",
    "nodule+lung": "nodules + lungs",
    "nodule+lung+texture": "nodules + lungs + texture",
}
GUIDANCE_MODE_TIPS = {  # keys: land.interface.contract.GUIDANCE_MODES
    "none": "No guidance: plain conditional sampling (the scale is not used).",
    "full": "Contrast with no mask: follow the whole mask (lungs and nodules) more strongly.",
    "nodules": "Contrast with the same lungs without nodules: makes the nodules show (recommended).",
}
DEVICE_TITLES = (("auto", "Auto (GPU if available)"), ("cuda", "GPU (CUDA)"), ("cpu", "CPU"))
FIT_TITLES = {  # keys: land.interface.contract.FITS
    "crop": "Model's voxel size (a larger chest is cut off)",
    "scale": "Whole chest (larger voxels when the lungs fill the grid)",
}
MODEL_SOURCES = (("bundled", f"Bundled demo model ({BUNDLED_MODEL_NAME})"), ("directory", "Model directory"))
TABLE_COLUMNS = ("Nodule", "Volume (mL)", "Diameter (mm)", "Texture", "Meaning")
POLL_INTERVAL_MS = 100


# ---------------------------------------------------------------------------------------------- module
class LANDSynthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LAND Synthesis"
        self.parent.categories = ["Simulation"]
        self.parent.dependencies = ["Segmentations", "Markups", "Volumes"]
        self.parent.contributors = ["LAND for 3D Slicer developers"]
        self.parent.helpText = (
            "Synthesize a realistic 3D chest CT from a lung mask and nodule masks with LAND's latent "
            "diffusion model. Paint a 'Lungs' segment and 'Nodule' segments (or use 'Lungs from CT' and "
            "'Add nodule at point'), give each nodule a texture 1-5 (1 non-solid/ground-glass ... 5 solid), "
            "then Generate. 'Teaching set' writes a batch of SYNTHETIC cases as DICOM with an answer key. "
            "Every result is SYNTHETIC (its name, description and attributes say so): not for diagnosis."
        )
        self.parent.acknowledgementText = (
            "LAND: lung and nodule diffusion for 3D chest CT synthesis. The engine runs on PyTorch and MONAI."
        )


# ---------------------------------------------------------------------------------------------- widget
class LANDSynthesisWidget(
    MaskActionsMixin, TeachingActionsMixin, ScriptedLoadableModuleWidget, VTKObservationMixin
):
    """The module panel. Generation runs in a child process; a QTimer polls the logic every 100 ms."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False
        self._observedSegmentation = None
        self._tableSegmentIds: list[str] = []
        self._textureSpinBoxes: dict[str, object] = {}
        self.pollTimer = None
        self.tableTimer = None
        self.segmentEditorNode = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LANDSynthesis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LANDSynthesisLogic()

        for value, title in MODEL_SOURCES:
            self.ui.modelSourceComboBox.addItem(title, value)
        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.modelPathLineEdit.settingKey = "LANDSynthesis/ModelDirectory"
        for mode in ("", *MODES):
            self.ui.modeComboBox.addItem(MODE_TITLES[mode], mode)
        for sampler in SAMPLERS:
            self.ui.samplerComboBox.addItem(f"{sampler} - {SAMPLER_TITLES[sampler]}", sampler)
        for value, title in DEVICE_TITLES:
            self.ui.deviceComboBox.addItem(title, value)
        for fit in FITS:
            self.ui.fitComboBox.addItem(FIT_TITLES[fit], fit)
        for mode in GUIDANCE_MODES:
            self.ui.guidanceModeComboBox.addItem(mode, mode)
            self.ui.guidanceModeComboBox.setItemData(
                self.ui.guidanceModeComboBox.count - 1, GUIDANCE_MODE_TIPS.get(mode, mode), qt.Qt.ToolTipRole
            )
        self.ui.guidanceSpinBox.maximum = MAX_GUIDANCE

        table = self.ui.noduleTable
        table.setColumnCount(len(TABLE_COLUMNS))
        table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setStretchLastSection(True)
        table.setMinimumHeight(120)

        editor = self.ui.segmentEditorWidget
        self.segmentEditorNode = self._segmentEditorNode()
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setMRMLSegmentEditorNode(self.segmentEditorNode)
        editor.setSegmentationNodeSelectorVisible(False)
        if hasattr(editor, "setSourceVolumeNodeSelectorVisible"):
            editor.setSourceVolumeNodeSelectorVisible(False)
        editor.setMaximumNumberOfUndoStates(10)
        if hasattr(editor, "setSwitchToSegmentationsButtonVisible"):
            editor.setSwitchToSegmentationsButtonVisible(False)
        editor.unorderedEffectsVisible = False
        editor.setEffectNameOrder(["Paint", "Draw", "Erase", "Threshold", "Islands", "Scissors", "Smoothing"])

        self.ui.markupsPlaceWidget.setMRMLScene(slicer.mrmlScene)
        try:
            self.ui.markupsPlaceWidget.placeMultipleMarkups = (
                slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
            )
        except AttributeError:  # older Slicer: the default (a place button) is fine
            pass
        self.ui.messagesTextEdit.setMaximumHeight(90)
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setEnabled(False)
        self.ui.pairNoduleComboBox.enabled = False
        self.ui.teachingOutputPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.teachingOutputPathLineEdit.settingKey = "LANDSynthesis/TeachingOutput"
        self.ui.teachingProgressBar.setVisible(False)
        self.ui.teachingCancelButton.setEnabled(False)
        available, reason = teachingSetAvailability()
        self.ui.teachingRunButton.setToolTip(reason)

        available, reason = LANDSynthesisLogic.lidcNoduleAvailability()
        self.ui.addLidcNoduleButton.setEnabled(available)
        self.ui.addLidcNoduleButton.setToolTip(reason)

        # parameter node <- GUI
        self.ui.referenceVolumeSelector.currentNodeChanged.connect(self.onReferenceChanged)
        self.ui.segmentationSelector.currentNodeChanged.connect(self.onSegmentationChanged)
        self.ui.markupsSelector.currentNodeChanged.connect(self.onMarkupsChanged)
        self.ui.modelSourceComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.modelPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.modeComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.samplerComboBox.currentIndexChanged.connect(self.onSamplerChanged)
        self.ui.stepsSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.seedSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.randomSeedCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.guidanceFromModelCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.guidanceSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.guidanceModeComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.fitComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.replacePreviousCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.pairCheckBox.toggled.connect(lambda on: setattr(self.ui.pairNoduleComboBox, "enabled", on))
        self.ui.noduleDiameterSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.noduleTextureSpinBox.valueChanged.connect(self.updateParameterNodeFromGUI)
        # actions
        self.ui.createBlankReferenceButton.clicked.connect(self.onCreateBlankReference)
        self.ui.addLungsButton.clicked.connect(self.onAddLungs)
        self.ui.addNoduleButton.clicked.connect(self.onAddNodule)
        self.ui.lungsFromCTButton.clicked.connect(self.onLungsFromCT)
        self.ui.addNoduleAtPointButton.clicked.connect(self.onAddNoduleAtPoint)
        self.ui.addLidcNoduleButton.clicked.connect(self.onAddLidcNodule)
        self.ui.noduleTable.itemSelectionChanged.connect(self.onNoduleRowSelected)
        self.ui.generateButton.clicked.connect(self.onGenerate)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.teachingRunButton.clicked.connect(self.onTeachingRun)
        self.ui.teachingCancelButton.clicked.connect(self.onTeachingCancel)
        self.ui.teachingOutputPathLineEdit.currentPathChanged.connect(lambda path: self.updateButtons())

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.timeout.connect(self.onPoll)
        self.tableTimer = qt.QTimer()
        self.tableTimer.setSingleShot(True)
        self.tableTimer.setInterval(300)  # painting sends many events: update the table once they settle
        self.tableTimer.timeout.connect(self.updateNoduleTable)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def _segmentEditorNode(self):
        tag = "LANDSynthesisSegmentEditor"
        node = slicer.mrmlScene.GetSingletonNode(tag, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag(tag)
            node = slicer.mrmlScene.AddNode(node)
        return node

    def cleanup(self) -> None:
        self.removeObservers()
        for timer in (self.pollTimer, self.tableTimer):
            if timer is not None:
                timer.stop()
        if self.logic is not None:
            self.logic.cleanup()  # a running generation is stopped with its process tree

    def enter(self) -> None:
        self.initializeParameterNode()
        self.updateNoduleTable()

    def exit(self) -> None:
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic is not None:
            self.logic.cleanup(sceneClosing=True)
        self.setParameterNode(None)
        self.setObservedSegmentation(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.segmentEditorNode = self._segmentEditorNode()
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.segmentEditorNode)
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        node = self._parameterNode
        if not node.GetNodeReference("ReferenceVolume"):
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first is not None and first.GetClassName() == "vtkMRMLScalarVolumeNode":
                node.SetNodeReferenceID("ReferenceVolume", first.GetID())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode is not None:
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode is not None:
            self.addObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode
            )
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None or self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            self.ui.referenceVolumeSelector.setCurrentNode(node.GetNodeReference("ReferenceVolume"))
            seg = node.GetNodeReference("Segmentation")
            self.ui.segmentationSelector.setCurrentNode(seg)
            self.ui.markupsSelector.setCurrentNode(node.GetNodeReference("Markups"))
            self.ui.markupsPlaceWidget.setCurrentNode(node.GetNodeReference("Markups"))
            self._setCombo(self.ui.modelSourceComboBox, node.GetParameter("ModelSource"))
            self.ui.modelPathLineEdit.currentPath = node.GetParameter("ModelDirectory")
            self._setCombo(self.ui.modeComboBox, node.GetParameter("Mode"))
            self._setCombo(self.ui.samplerComboBox, node.GetParameter("Sampler"))
            self.ui.stepsSpinBox.value = int(node.GetParameter("Steps") or 25)
            self.ui.seedSpinBox.value = int(node.GetParameter("Seed") or 0)
            self.ui.randomSeedCheckBox.checked = node.GetParameter("RandomSeed") == "true"
            self.ui.seedSpinBox.enabled = not self.ui.randomSeedCheckBox.checked
            self.ui.guidanceFromModelCheckBox.checked = node.GetParameter("GuidanceFromModel") != "false"
            self.ui.guidanceSpinBox.value = float(node.GetParameter("Guidance") or 3)
            self._setCombo(self.ui.guidanceModeComboBox, node.GetParameter("GuidanceMode"))
            custom = not self.ui.guidanceFromModelCheckBox.checked
            self.ui.guidanceSpinBox.enabled = self.ui.guidanceModeComboBox.enabled = custom
            self._setCombo(self.ui.deviceComboBox, node.GetParameter("Device"))
            self._setCombo(self.ui.fitComboBox, node.GetParameter("Fit"))
            self.ui.replacePreviousCheckBox.checked = node.GetParameter("ReplacePrevious") == "true"
            self.ui.noduleDiameterSpinBox.value = float(node.GetParameter("NoduleDiameter") or 10)
            self.ui.noduleTextureSpinBox.value = int(node.GetParameter("NoduleTexture") or 5)
            self.ui.noduleTextureLabel.text = seglib.textureText(self.ui.noduleTextureSpinBox.value)
            self.ui.modelPathLineEdit.enabled = self.ui.modelSourceComboBox.currentData == "directory"
            self.updateEditorNodes()
            self.setObservedSegmentation(seg)
            self.updateModelInfo()
            self.updateButtons()
        finally:
            self._updatingGUIFromParameterNode = False

    def updateParameterNodeFromGUI(self, *args) -> None:
        node = self._parameterNode
        if node is None or self._updatingGUIFromParameterNode:
            return
        wasModified = node.StartModify()
        try:
            node.SetNodeReferenceID("ReferenceVolume", self.ui.referenceVolumeSelector.currentNodeID)
            node.SetNodeReferenceID("Segmentation", self.ui.segmentationSelector.currentNodeID)
            node.SetNodeReferenceID("Markups", self.ui.markupsSelector.currentNodeID)
            node.SetParameter("ModelSource", self.ui.modelSourceComboBox.currentData or "directory")
            node.SetParameter("ModelDirectory", self.ui.modelPathLineEdit.currentPath)
            node.SetParameter("Mode", self.ui.modeComboBox.currentData or "")
            node.SetParameter("Sampler", self.ui.samplerComboBox.currentData or DEFAULT_SAMPLER)
            node.SetParameter("Steps", str(self.ui.stepsSpinBox.value))
            node.SetParameter("Seed", str(self.ui.seedSpinBox.value))
            node.SetParameter("RandomSeed", "true" if self.ui.randomSeedCheckBox.checked else "false")
            fromModel = self.ui.guidanceFromModelCheckBox.checked
            node.SetParameter("GuidanceFromModel", "true" if fromModel else "false")
            node.SetParameter("Guidance", f"{self.ui.guidanceSpinBox.value:g}")
            node.SetParameter("GuidanceMode", self.ui.guidanceModeComboBox.currentData or "nodules")
            node.SetParameter("Device", self.ui.deviceComboBox.currentData or "auto")
            node.SetParameter("Fit", self.ui.fitComboBox.currentData or "crop")
            node.SetParameter(
                "ReplacePrevious", "true" if self.ui.replacePreviousCheckBox.checked else "false"
            )
            node.SetParameter("NoduleDiameter", str(self.ui.noduleDiameterSpinBox.value))
            node.SetParameter("NoduleTexture", str(self.ui.noduleTextureSpinBox.value))
        finally:
            node.EndModify(wasModified)

    @staticmethod
    def _setCombo(combo, value) -> None:
        index = combo.findData(value)
        if index >= 0:
            combo.setCurrentIndex(index)

    def onReferenceChanged(self, node) -> None:
        self.updateParameterNodeFromGUI()

    def onSegmentationChanged(self, node) -> None:
        self.updateParameterNodeFromGUI()

    def onMarkupsChanged(self, node) -> None:
        self.ui.markupsPlaceWidget.setCurrentNode(node)
        self.updateParameterNodeFromGUI()

    def onSamplerChanged(self, index) -> None:
        if not self._updatingGUIFromParameterNode:
            self.ui.stepsSpinBox.value = DEFAULT_STEPS.get(
                self.ui.samplerComboBox.currentData, DEFAULT_STEPS[DEFAULT_SAMPLER]
            )
        self.updateParameterNodeFromGUI()

    # ------------------------------------------------------------------ helpers
    def referenceNode(self):
        return self.ui.referenceVolumeSelector.currentNode()

    def segmentationNode(self):
        return self.ui.segmentationSelector.currentNode()

    def ensureSegmentation(self):
        """The selected segmentation, or a new one ("LAND masks") on the reference geometry."""
        seg = self.segmentationNode()
        if seg is None:
            seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "LAND masks")
            seg.CreateDefaultDisplayNodes()
            ref = self.referenceNode()
            if ref is not None:
                seg.SetReferenceImageGeometryParameterFromVolumeNode(ref)
            self.ui.segmentationSelector.setCurrentNode(seg)
        return seg

    def updateEditorNodes(self) -> None:
        editor = self.ui.segmentEditorWidget
        seg, ref = self.segmentationNode(), self.referenceNode()
        if (
            seg is not None
            and ref is not None
            and not seg.GetNodeReference(
                slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
            )
        ):
            seg.SetReferenceImageGeometryParameterFromVolumeNode(ref)
        editor.setSegmentationNode(seg)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(ref)
        else:  # Slicer before 5.2
            editor.setMasterVolumeNode(ref)

    def selectedModelDirectory(self) -> str | None:
        if self.ui.modelSourceComboBox.currentData == "bundled":
            return None
        return self.ui.modelPathLineEdit.currentPath or ""

    def currentModelInfo(self):
        """(ModelInfo or None, message)."""
        directory = self.selectedModelDirectory()
        if directory is None:
            bundled = bundledModelDirectory()
            if bundled is None:
                return None, bundledModelMissingMessage()
            directory = str(bundled)
        if not directory:
            return None, "Choose a LAND model directory (a folder with model.json and the weights)."
        try:
            return readModelInfo(directory), ""
        except LANDSynthesisError as e:
            return None, str(e)

    def updateModelInfo(self) -> None:
        info, message = self.currentModelInfo()
        if info is None:
            self.ui.modelInfoLabel.text = message
            self.ui.modelInfoLabel.setStyleSheet("color: #c0392b")
        else:
            self.ui.modelInfoLabel.text = info.summary()
            self.ui.modelInfoLabel.setStyleSheet("" if info.trained else "color: #d35400")
        device = self.ui.deviceComboBox.currentData or "auto"
        note = timeNote(device, self.ui.stepsSpinBox.value, self.ui.samplerComboBox.currentData, info)
        if info is not None:
            measured = self.logic.lastSecondsPerStep.get((info.name, device))
            if measured:
                note += f" Last run here: {measured:.1f} s per step."
        self.ui.timeNoteLabel.text = note
        scale, mode = info.guidance if info is not None else (1.0, "none")
        recommended = f"{scale:g}, mode {mode}" if is_guided(scale, mode) else "no guidance"
        self.ui.guidanceFromModelCheckBox.toolTip = (
            f"Use the guidance recommended in the model's model.json: {recommended}. "
            "Uncheck to choose the scale and mode here."
        )

    def updateButtons(self) -> None:
        running = self.logic is not None and self.logic.isRunning()
        teaching = running and self.logic.job.kind == TeachingSetJob.kind
        info, _ = self.currentModelInfo()
        self.ui.generateButton.enabled = not running and info is not None
        self.ui.generateButton.toolTip = (
            "Synthesize a CT from the masks (runs in the background)."
            if info is not None
            else "Choose a model first (see the model section)."
        )
        self.ui.cancelButton.enabled = running and not teaching
        available, _ = teachingSetAvailability()
        self.ui.teachingRunButton.enabled = (
            not running and available and bool(self.ui.teachingOutputPathLineEdit.currentPath)
        )
        self.ui.teachingCancelButton.enabled = teaching
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.modelCollapsibleButton.enabled = not running
        self.ui.replacePreviousCheckBox.enabled = not running
        self.ui.lungsFromCTButton.enabled = self.referenceNode() is not None

    def showMessage(self, text: str, warning: bool = False) -> None:
        self.ui.statusLabel.text = text
        if warning:
            self.ui.messagesTextEdit.appendPlainText(text)

    # ------------------------------------------------------------------ actions: generate
    def guidanceParameters(self) -> dict:
        return {
            "guidanceFromModel": self.ui.guidanceFromModelCheckBox.checked,
            "guidanceScale": self.ui.guidanceSpinBox.value,
            "guidanceMode": self.ui.guidanceModeComboBox.currentData,
        }

    def generationParameters(self) -> dict:
        return {
            "modelDirectory": self.selectedModelDirectory(),
            "mode": self.ui.modeComboBox.currentData or None,
            "sampler": self.ui.samplerComboBox.currentData,
            "steps": self.ui.stepsSpinBox.value,
            "seed": None if self.ui.randomSeedCheckBox.checked else self.ui.seedSpinBox.value,
            "device": self.ui.deviceComboBox.currentData,
            "fit": self.ui.fitComboBox.currentData or "crop",
            "replacePrevious": self.ui.replacePreviousCheckBox.checked,
            # matched pair: the chosen nodule segment ("" when there is none to choose: the logic says so)
            "pairSegmentId": (self.ui.pairNoduleComboBox.currentData or "")
            if self.ui.pairCheckBox.checked
            else None,
            **self.guidanceParameters(),
        }

    def ensureDependencies(self) -> bool:
        missing = dependencies.missingRequirements(includeOptional=False)
        if not missing:
            return True
        return dependencies.ensureInSlicer(dependencies.missingRequirements(includeOptional=True))

    def onGenerate(self) -> None:
        if self.logic.isRunning() or not self.ensureDependencies():
            return
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.messagesTextEdit.clear()
        try:
            self.logic.start(
                self.segmentationNode(),
                self.referenceNode(),
                self.generationParameters(),
                onProgress=self.onProgress,
                onFinished=self.onFinished,
            )
        except LANDSynthesisError as e:
            self.showMessage(str(e))
            slicer.util.errorDisplay(str(e), windowTitle="LAND: cannot generate")
            return
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.updateButtons()
        self.pollTimer.start()

    def onPoll(self) -> None:
        if not self.logic.poll():
            self.pollTimer.stop()
            self.updateButtons()

    def onCancel(self) -> None:
        self.logic.cancel()
        self.ui.cancelButton.enabled = False

    def onProgress(self, event: dict) -> None:
        if "warning" in event:
            self.showMessage("Warning: " + event["warning"], warning=True)
            return
        fraction = float(event.get("fraction", 0.0))
        self.ui.progressBar.value = int(round(1000 * fraction))
        text = event.get("text", "")
        self.ui.progressBar.setFormat(f"{text}  ({100 * fraction:.0f}%)" if text else "%p%")
        self.ui.statusLabel.text = text

    def onFinished(self, job: GenerationJob) -> None:
        self.pollTimer.stop()
        self.ui.progressBar.setVisible(job.state != GenerationJob.CANCELLED)
        self.updateButtons()
        self.updateModelInfo()
        if job.state == GenerationJob.SUCCEEDED:
            node, twin = job.resultNode, job.pairNode
            fade = {"foregroundOpacity": 0.0} if twin is not None else {}  # a twin: faded in to compare
            slicer.util.setSliceViewerLayers(background=node, foreground=twin, label=None, fit=True, **fade)
            seg = self.segmentationNode()
            if seg is not None and seg.GetDisplayNode() is not None:
                display = seg.GetDisplayNode()
                display.SetVisibility(True)
                display.SetVisibility2DFill(False)  # outline on top of the synthetic CT
                display.SetVisibility2DOutline(True)
            extra = f" ({len(job.warnings)} warning(s) below)" if job.warnings else ""
            if twin is not None:
                extra += f"; its matched twin {twin.GetName()} is in the foreground: fade to compare"
            took = formatDuration(job.elapsed)
            self.showMessage(f"{node.GetName()}: done in {took}{extra}. SYNTHETIC image.")
        elif job.state == GenerationJob.CANCELLED:
            self.showMessage("Generation cancelled.")
        else:
            self.showMessage(f"Generation failed: {job.error}", warning=True)
            slicer.util.errorDisplay(job.error or "Generation failed.", windowTitle="LAND: generation failed")


from LANDSynthesisLib.selftest import LANDSynthesisTest  # noqa: E402 - the module's test, found by name
