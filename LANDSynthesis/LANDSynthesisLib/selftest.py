"""LANDSynthesis's in-application self test (Reload and Test in the Slicer application)."""

from __future__ import annotations

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
from LANDSynthesisLib.application import ScriptedLoadableModuleTest
from LANDSynthesisLib.logic import (
    GenerationCancelled,
    LANDSynthesisLogic,
)


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
            self.assertFalse(logic.job.child.alive_pids())
            self.assertFalse(logic.job.tempDir.exists())
        finally:
            shutil.rmtree(model, ignore_errors=True)
        self.delayDisplay("Generate and cancel passed")
