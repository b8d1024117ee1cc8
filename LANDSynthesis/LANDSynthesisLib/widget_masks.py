"""The LAND Synthesis panel's mask tools: the nodule table and the buttons that add lungs and nodules."""

from __future__ import annotations

import logging

import slicer
import vtk

from LANDSynthesisLib import dependencies
from LANDSynthesisLib import segments as seglib
from LANDSynthesisLib.application import qt
from LANDSynthesisLib.logic import (
    LANDInputError,
    LANDSynthesisError,
)


class MaskActionsMixin:
    """LANDSynthesisWidget's nodule table and mask actions."""

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
        self.updatePairNodules(rows)

    def updatePairNodules(self, rows) -> None:
        """The matched pair's nodule choices: the nodule segments, in the table's order (the choice kept)."""
        combo = self.ui.pairNoduleComboBox
        items = [(row["name"], row["segmentId"]) for row in rows]
        if [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count)] == items:
            return
        current = combo.currentData
        combo.blockSignals(True)
        combo.clear()
        for name, segmentId in items:
            combo.addItem(name, segmentId)
        combo.setCurrentIndex(max(combo.findData(current), 0) if current else 0)
        combo.blockSignals(False)

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
        if not dependencies.ensureInSlicer(missing, "Lungs from CT"):
            return
        seg = self.ensureSegmentation()
        task = []
        if not self.runWithErrorDisplay(
            "Lungs from CT", lambda: task.append(self.logic.startLungsFromCT(ref))
        ):
            return
        # the segmentation runs on a worker thread (seconds for a thin-slice CT); the panel stays usable
        self.ui.lungsFromCTButton.enabled = False
        self.showMessage(f"Segmenting the lungs in '{ref.GetName()}'…")
        self._pollLungs(task[0], seg)

    def _pollLungs(self, task, seg) -> None:
        import qt  # the GUI only (the module's logic imports without Qt)

        if not task.done:
            qt.QTimer.singleShot(100, lambda: self._pollLungs(task, seg))
            return
        result = {}

        def finish():
            result["segmentId"], result["summary"] = self.logic.finishLungsFromCT(task, seg)

        self.ui.lungsFromCTButton.enabled = self.referenceNode() is not None
        if self.runWithErrorDisplay("Lungs from CT", finish):
            self.ui.segmentEditorWidget.setCurrentSegmentID(result["segmentId"])
            self.showMessage(
                result["summary"] + ". Check the lungs and correct them with the Segment Editor."
            )

    def _pointRas(self):
        markups = self.ui.markupsSelector.currentNode()
        if markups is None or markups.GetNumberOfDefinedControlPoints() == 0:  # placed, not being placed
            raise LANDInputError(
                "Place a point first: choose or create a point list, click the place button and then click "
                "in a slice view at the nodule's centre."
            )
        defined = slicer.vtkMRMLMarkupsNode.PositionDefined
        last = max(
            i
            for i in range(markups.GetNumberOfControlPoints())
            if markups.GetNthControlPointPositionStatus(i) == defined
        )  # the newest placed point (a point being placed comes after it)
        world = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPositionWorld(last, world)
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
