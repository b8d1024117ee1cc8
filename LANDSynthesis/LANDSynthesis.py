"""LANDSynthesis: synthesize a 3D chest CT from lung and nodule masks with LAND (latent diffusion).

A thin Slicer module (Module, Widget, Test); the Qt-free logic lives in ``LANDSynthesisLib`` and the engine in
``land`` (run in a child process). Without Qt (the ``slicer-core`` wheel) this file still imports and exposes
``LANDSynthesisLogic``; only the widget and the in-application test need the Slicer application.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
import slicer
import vtk
from LANDSynthesisLib import dependencies
from LANDSynthesisLib import segments as seglib
from LANDSynthesisLib.logic import (
    BUNDLED_MODEL_NAME,
    DEFAULT_STEPS,
    GUIDANCE_MODES,
    MAX_GUIDANCE,
    MODES,
    SAMPLER_TITLES,
    SAMPLERS,
    GenerationCancelled,
    GenerationJob,
    LANDInputError,
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
from slicer.util import VTKObservationMixin

try:  # the Slicer application (absent from the slicer-core wheel)
    import ctk
    import qt
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )

    HAVE_QT = True
except ImportError:
    import unittest

    ctk = qt = None

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        """Placeholder without the Slicer application: only the logic is usable."""

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        """Placeholder without the Slicer application: only the logic is usable."""

    class ScriptedLoadableModuleTest(unittest.TestCase):  # type: ignore[no-redef]
        """Placeholder without the Slicer application: only the logic is usable."""

        __test__ = False  # not collected by pytest

    HAVE_QT = False

__all__ = ["LANDSynthesis", "LANDSynthesisLogic", "LANDSynthesisTest", "LANDSynthesisWidget"]

MODE_TITLES = {
    "": "Model default",
    "none": "none (unconditional)",
    "nodule": "nodules",
    "nodule+lung": "nodules + lungs",
    "nodule+lung+texture": "nodules + lungs + texture",
}
GUIDANCE_MODE_TIPS = {  # keys: land.contract.GUIDANCE_MODES
    "none": "No guidance: plain conditional sampling (the scale is not used).",
    "full": "Contrast with no mask: follow the whole mask (lungs and nodules) more strongly.",
    "nodules": "Contrast with the same lungs without nodules: makes the nodules show (recommended).",
}
DEVICE_TITLES = (("auto", "Auto (GPU if available)"), ("cuda", "GPU (CUDA)"), ("cpu", "CPU"))
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
class LANDSynthesisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self.ui.replacePreviousCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
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
        if self.pollTimer is not None:
            self.pollTimer.stop()
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
            self.logic.cleanup()
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
            node.SetParameter("Sampler", self.ui.samplerComboBox.currentData or "dpmpp2m")
            node.SetParameter("Steps", str(self.ui.stepsSpinBox.value))
            node.SetParameter("Seed", str(self.ui.seedSpinBox.value))
            node.SetParameter("RandomSeed", "true" if self.ui.randomSeedCheckBox.checked else "false")
            fromModel = self.ui.guidanceFromModelCheckBox.checked
            node.SetParameter("GuidanceFromModel", "true" if fromModel else "false")
            node.SetParameter("Guidance", f"{self.ui.guidanceSpinBox.value:g}")
            node.SetParameter("GuidanceMode", self.ui.guidanceModeComboBox.currentData or "nodules")
            node.SetParameter("Device", self.ui.deviceComboBox.currentData or "auto")
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
            self.ui.stepsSpinBox.value = DEFAULT_STEPS.get(self.ui.samplerComboBox.currentData, 25)
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

    # ------------------------------------------------------------------ nodule table
    def setObservedSegmentation(self, seg) -> None:
        if seg is self._observedSegmentation:
            return
        events = (
            slicer.vtkSegmentation.SegmentAdded,
            slicer.vtkSegmentation.SegmentRemoved,
            slicer.vtkSegmentation.SegmentModified,
            slicer.vtkSegmentation.RepresentationModified,
        )
        if self._observedSegmentation is not None:
            for event in events:
                self.removeObserver(self._observedSegmentation, event, self.onSegmentationModified)
        self._observedSegmentation = seg
        if seg is not None:
            for event in events:
                self.addObserver(seg, event, self.onSegmentationModified)
        self.updateNoduleTable()

    def onSegmentationModified(self, caller=None, event=None) -> None:
        if self.tableTimer is not None:
            self.tableTimer.start()

    def updateNoduleTable(self) -> None:
        table = self.ui.noduleTable
        seg = self.segmentationNode()
        rows = self.logic.noduleTable(seg) if seg is not None else []
        ids = [r["segmentId"] for r in rows]
        if ids != self._tableSegmentIds:  # rebuild; otherwise update in place (keeps the focus while editing)
            table.clearContents()
            table.setRowCount(len(rows))
            self._textureSpinBoxes = {}
            for r, row in enumerate(rows):
                spin = qt.QSpinBox()
                spin.setRange(0, 5)
                spin.setSpecialValueText("not set")
                spin.setToolTip("1 non-solid/GGO, 2 mostly non-solid, 3 part-solid, 4 mostly solid, 5 solid")
                spin.valueChanged.connect(
                    lambda value, sid=row["segmentId"]: self.onTextureChanged(sid, value)
                )
                table.setCellWidget(r, 3, spin)
                self._textureSpinBoxes[row["segmentId"]] = spin
            self._tableSegmentIds = ids
        for r, row in enumerate(rows):
            volume = f"{row['volume_ml']:.3f}" if row["voxels"] else "empty"
            diameter = f"{row['diameter_mm']:.1f}" if row["voxels"] else "-"
            meaning = row["textureError"] or seglib.textureText(row["texture"])
            for c, text in ((0, row["name"]), (1, volume), (2, diameter), (4, meaning)):
                item = table.item(r, c)
                if item is None:
                    item = qt.QTableWidgetItem()
                    table.setItem(r, c, item)
                item.setText(text)
                if c == 0:
                    item.setData(qt.Qt.UserRole, row["segmentId"])
            spin = self._textureSpinBoxes[row["segmentId"]]
            value = row["texture"] or 0
            if spin.value != value:
                spin.blockSignals(True)
                spin.value = value
                spin.blockSignals(False)
        table.resizeColumnsToContents()

    def onTextureChanged(self, segmentId: str, value: int) -> None:
        seg = self.segmentationNode()
        if seg is None or seg.GetSegmentation().GetSegment(segmentId) is None:
            return
        self.logic.setNoduleTexture(seg, segmentId, value or None)

    def onNoduleRowSelected(self) -> None:
        items = self.ui.noduleTable.selectedItems()
        if items:
            segmentId = self.ui.noduleTable.item(items[0].row(), 0).data(qt.Qt.UserRole)
            self.ui.segmentEditorWidget.setCurrentSegmentID(segmentId)

    # ------------------------------------------------------------------ actions: masks
    def runWithErrorDisplay(self, title: str, function) -> bool:
        """Run ``function()`` with a wait cursor; show LAND's messages as they are, log unexpected errors."""
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            function()
            error = None
        except LANDSynthesisError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - a slot must not raise; the details go to the log
            logging.exception("LANDSynthesis: %s failed", title)
            error = f"{title} failed: {e}"
        finally:
            qt.QApplication.restoreOverrideCursor()
        if error:
            slicer.util.errorDisplay(error, windowTitle=f"LAND: {title}")
            return False
        return True

    def onCreateBlankReference(self) -> None:
        self.runWithErrorDisplay("blank reference", self._createBlankReference)

    def _createBlankReference(self) -> None:
        info, _ = self.currentModelInfo()
        node = self.logic.createBlankReference(modelInfo=info)
        self.ui.referenceVolumeSelector.setCurrentNode(node)
        seg = self.segmentationNode()
        if seg is not None:
            seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
        self.ensureSegmentation()
        self.updateEditorNodes()
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        extent = " x ".join(f"{e:g}" for e in (info.extentMm if info else (256, 256, 256)))
        grid = "the model's grid" if info else "256³ at 1 mm (no model selected yet)"
        self.showMessage(f"Blank reference: {extent} mm at {grid}. Add the lungs and nodules and paint.")

    def onAddLungs(self) -> None:
        seg = self.ensureSegmentation()
        segmentId = self.logic.addLungsSegment(seg)
        self.ui.segmentEditorWidget.setCurrentSegmentID(segmentId)

    def onAddNodule(self) -> None:
        seg = self.ensureSegmentation()
        segmentId = self.logic.addNoduleSegment(seg, self.ui.noduleTextureSpinBox.value)
        self.ui.segmentEditorWidget.setCurrentSegmentID(segmentId)
        self.ui.noduleTextureLabel.text = seglib.textureText(self.ui.noduleTextureSpinBox.value)

    def onLungsFromCT(self) -> None:
        ref = self.referenceNode()
        if ref is None:
            slicer.util.errorDisplay("Select the CT to segment as the reference volume first.")
            return
        missing = {
            name: req
            for name, req in dependencies.missingRequirements().items()
            if name in ("scipy", "SimpleITK", "numpy")
        }
        try:
            if missing and not dependencies.installInSlicer(missing, askConfirmation=True):
                return
        except RuntimeError as e:
            slicer.util.errorDisplay(str(e), windowTitle="LAND: dependencies")
            return
        seg = self.ensureSegmentation()
        result = {}

        def run():
            result["segmentId"], result["summary"] = self.logic.lungsFromCT(ref, seg)

        if self.runWithErrorDisplay("Lungs from CT", run):
            self.ui.segmentEditorWidget.setCurrentSegmentID(result["segmentId"])
            self.showMessage(
                result["summary"] + ". Check the lungs and correct them with the Segment Editor."
            )

    def _pointRas(self):
        markups = self.ui.markupsSelector.currentNode()
        if markups is None or markups.GetNumberOfControlPoints() == 0:
            raise LANDInputError(
                "Place a point first: choose or create a point list, click the place button and then click "
                "in a slice view at the nodule's centre."
            )
        world = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPositionWorld(markups.GetNumberOfControlPoints() - 1, world)
        ref = self.referenceNode()
        if ref is not None and ref.GetParentTransformNode() is not None:  # into the reference's coordinates
            toRef = vtk.vtkGeneralTransform()
            slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, ref.GetParentTransformNode(), toRef)
            world = list(toRef.TransformPoint(world))
        return world

    def _addNoduleAtPoint(self, lidc: bool) -> None:
        diameter = self.ui.noduleDiameterSpinBox.value
        texture = self.ui.noduleTextureSpinBox.value
        result = {}

        def run():
            center = self._pointRas()
            seg = self.ensureSegmentation()
            add = self.logic.addLidcNodule if lidc else self.logic.addSphereNodule
            result["seg"] = seg
            result["segmentId"], result["warnings"] = add(
                seg, self.referenceNode(), center, diameter, texture
            )

        if not self.runWithErrorDisplay("add nodule", run):
            return
        seg, segmentId, warnings = result["seg"], result["segmentId"], result["warnings"]
        self.ui.segmentEditorWidget.setCurrentSegmentID(segmentId)
        segment = seg.GetSegmentation().GetSegment(segmentId)
        name = segment.GetName()
        source = vtk.reference("")
        shape = f"; shape from {source.get()}" if lidc and segment.GetTag("LAND.LIDC", source) else ""
        self.showMessage(f"Added {name}: {diameter:g} mm, texture {seglib.textureText(texture)}{shape}.")
        for w in warnings:
            self.showMessage(w, warning=True)
        if any("outside the lungs" in w for w in warnings):
            slicer.util.warningDisplay("\n".join(warnings), windowTitle="LAND: nodule outside the lungs")

    def onAddNoduleAtPoint(self) -> None:
        self._addNoduleAtPoint(lidc=False)

    def onAddLidcNodule(self) -> None:
        self._addNoduleAtPoint(lidc=True)

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
            "replacePrevious": self.ui.replacePreviousCheckBox.checked,
            **self.guidanceParameters(),
        }

    def ensureDependencies(self) -> bool:
        missing = dependencies.missingRequirements(includeOptional=False)
        if not missing:
            return True
        missing = dependencies.missingRequirements(includeOptional=True)
        try:
            return dependencies.installInSlicer(missing, askConfirmation=True)
        except RuntimeError as e:
            slicer.util.errorDisplay(f"LAND cannot run yet: {e}", windowTitle="LAND: dependencies")
            return False

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
            node = job.resultNode
            slicer.util.setSliceViewerLayers(background=node, foreground=None, label=None, fit=True)
            seg = self.segmentationNode()
            if seg is not None and seg.GetDisplayNode() is not None:
                display = seg.GetDisplayNode()
                display.SetVisibility(True)
                display.SetVisibility2DFill(False)  # outline on top of the synthetic CT
                display.SetVisibility2DOutline(True)
            extra = f" ({len(job.warnings)} warning(s) below)" if job.warnings else ""
            self.showMessage(
                f"{node.GetName()}: done in {formatDuration(job.elapsed)}{extra}. SYNTHETIC image."
            )
        elif job.state == GenerationJob.CANCELLED:
            self.showMessage("Generation cancelled.")
        else:
            self.showMessage(f"Generation failed: {job.error}", warning=True)
            slicer.util.errorDisplay(job.error or "Generation failed.", windowTitle="LAND: generation failed")

    # ------------------------------------------------------------------ actions: teaching set
    def teachingSetParameters(self) -> dict:
        return {
            "outputDirectory": self.ui.teachingOutputPathLineEdit.currentPath,
            "cases": self.ui.teachingCasesSpinBox.value,
            "modelDirectory": self.selectedModelDirectory() or None,
            "noduleRate": self.ui.teachingNoduleRateSpinBox.value,
            "textures": self.ui.teachingTexturesLineEdit.text.strip() or None,
            "diameters": self.ui.teachingDiametersLineEdit.text.strip() or None,
            "steps": self.ui.teachingStepsSpinBox.value,
            "seed": self.ui.teachingSeedSpinBox.value,
            **self.guidanceParameters(),
        }

    def onTeachingRun(self) -> None:
        if self.logic.isRunning() or not self.ensureDependencies():
            return
        try:
            self.logic.startTeachingSet(
                self.teachingSetParameters(),
                onProgress=self.onTeachingProgress,
                onFinished=self.onTeachingFinished,
            )
        except LANDSynthesisError as e:
            self.ui.teachingStatusLabel.text = str(e)
            slicer.util.errorDisplay(str(e), windowTitle="LAND: cannot make the teaching set")
            return
        self.ui.teachingOutputPathLineEdit.addCurrentPathToHistory()
        self.ui.teachingProgressBar.setVisible(True)
        self.ui.teachingProgressBar.value = 0
        self.updateButtons()
        self.pollTimer.start()

    def onTeachingCancel(self) -> None:
        self.logic.cancel()
        self.ui.teachingCancelButton.enabled = False

    def onTeachingProgress(self, event: dict) -> None:
        if "warning" in event:
            self.ui.teachingStatusLabel.text = "Warning: " + event["warning"]
            return
        fraction = float(event.get("fraction", 0.0))
        self.ui.teachingProgressBar.value = int(round(1000 * fraction))
        text = event.get("text", "")
        self.ui.teachingProgressBar.setFormat(f"{text}  ({100 * fraction:.0f}%)" if text else "%p%")
        self.ui.teachingStatusLabel.text = text

    def onTeachingFinished(self, job: GenerationJob) -> None:
        self.pollTimer.stop()
        self.ui.teachingProgressBar.setVisible(job.state == GenerationJob.SUCCEEDED)
        self.updateButtons()
        if job.state == GenerationJob.SUCCEEDED:
            folder = str(job.outputDirectory)
            self.ui.teachingStatusLabel.text = (
                f"Teaching set written to {folder} in {formatDuration(job.elapsed)} (SYNTHETIC cases)."
            )
            if self.ui.teachingOpenFolderCheckBox.checked:
                qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(folder))
        elif job.state == GenerationJob.CANCELLED:
            self.ui.teachingStatusLabel.text = (
                "Teaching set cancelled (run it again into the same folder to resume)."
            )
        else:
            self.ui.teachingStatusLabel.text = f"Teaching set failed: {job.error}"
            slicer.util.errorDisplay(
                job.error or "Teaching set failed.", windowTitle="LAND: teaching set failed"
            )


# ---------------------------------------------------------------------------------------------- test
class LANDSynthesisTest(ScriptedLoadableModuleTest):
    """The workflow inside the Slicer application: masks -> inputs (geometry), texture tags through .seg.nrrd,
    Generate with a small untrained model, Cancel, and a smoke test of the widget."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LANDSynthesis_inputs_and_tags()
        self.setUp()
        self.test_LANDSynthesis_widget()
        self.setUp()
        self.test_LANDSynthesis_generate_and_cancel()

    # helpers
    @staticmethod
    def _case(withNodule=True):
        m = np.array([[0.0, -0.8, 0.1, 10.3], [0.9, 0.0, 0.0, -20.7], [0.0, 0.0, 2.5, 33.1], [0, 0, 0, 1]])
        ref = slicer.util.addVolumeFromArray(np.full((16, 40, 36), -1000, np.int16), m, name="reference")
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "masks")
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(ref)
        lung = np.zeros((16, 40, 36), np.uint8)
        lung[3:13, 6:34, 5:31] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(lung, seg, seglib.addLungSegment(seg), ref)
        nodule = np.zeros_like(lung)
        nodule[7:9, 18:22, 15:19] = 1
        if withNodule:
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                nodule, seg, seglib.addNoduleSegment(seg, 4), ref
            )
        return m, ref, seg, lung, nodule

    def _smallModel(self):
        logic = LANDSynthesisLogic()
        if dependencies.missingRequirements(includeOptional=False):
            return None
        out = tempfile.mkdtemp(prefix="LANDSynthesisTest-model-")
        subprocess.run(
            [logic.defaultPythonExecutable(), "-m", "land", "init-model", "--config", "small", "--out", out],
            env=logic.childEnvironment(),
            check=True,
            capture_output=True,
        )
        return out

    def test_LANDSynthesis_inputs_and_tags(self):
        self.delayDisplay("Segmentation -> engine inputs, texture tags through .seg.nrrd")
        m, ref, seg, lung, nodule = self._case()
        logic = LANDSynthesisLogic()
        lungArray, nodules, textures = logic.inputsFromSegmentation(seg, ref)
        self.assertTrue(np.array_equal(lungArray != 0, lung != 0))
        self.assertTrue(np.array_equal(nodules, nodule))
        self.assertEqual(textures, {1: 4})
        folder = tempfile.mkdtemp(prefix="LANDSynthesisTest-")
        try:
            path = os.path.join(folder, "case.seg.nrrd")
            self.assertTrue(slicer.util.saveNode(seg, path))
            loaded = slicer.util.loadSegmentation(path)
            ids = seglib.noduleSegmentIds(loaded)
            self.assertEqual(len(ids), 1)
            self.assertEqual(seglib.getTexture(loaded, ids[0]), 4)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Inputs and tags passed")

    def test_LANDSynthesis_widget(self):
        self.delayDisplay("Widget smoke test")
        slicer.util.selectModule("LANDSynthesis")
        widget = slicer.modules.LANDSynthesisWidget
        m, ref, seg, lung, nodule = self._case()
        widget.ui.referenceVolumeSelector.setCurrentNode(ref)
        widget.ui.segmentationSelector.setCurrentNode(seg)
        widget.onAddNodule()
        widget.updateNoduleTable()
        self.assertEqual(widget.ui.noduleTable.rowCount, 2)
        self.assertEqual(widget.ui.noduleTable.item(1, 0).text(), "Nodule 2")
        self.delayDisplay("Widget passed")

    def test_LANDSynthesis_generate_and_cancel(self):
        self.delayDisplay("Generate with a small untrained model, then cancel a run")
        model = self._smallModel()
        if model is None:
            self.delayDisplay(
                "Skipped: the LAND engine's Python packages (torch, monai, ...) are not installed"
            )
            return
        try:
            m, ref, seg, lung, nodule = self._case()
            logic = LANDSynthesisLogic()
            params = {"modelDirectory": model, "steps": 2, "seed": 3, "device": "cpu"}
            node = logic.generate(seg, ref, params)
            self.assertEqual(node.GetImageData().GetDimensions(), ref.GetImageData().GetDimensions())
            a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(a)
            ref.GetIJKToRASMatrix(b)
            self.assertTrue(np.allclose(slicer.util.arrayFromVTKMatrix(a), slicer.util.arrayFromVTKMatrix(b)))
            self.assertIn("SYNTHETIC", node.GetDescription())
            self.assertEqual(node.GetAttribute("LAND.Synthetic"), "true")

            cancelled = {}

            def onProgress(event):
                if event.get("stage") == "denoise" and not cancelled:
                    cancelled["pid"] = logic.job.pid
                    logic.cancel()

            with self.assertRaises(GenerationCancelled):
                logic.generate(seg, ref, {**params, "steps": 50}, onProgress=onProgress)
            time.sleep(0.5)
            self.assertFalse(logic.job.child.alivePids())
            self.assertFalse(logic.job.tempDir.exists())
        finally:
            shutil.rmtree(model, ignore_errors=True)
        self.delayDisplay("Generate and cancel passed")
