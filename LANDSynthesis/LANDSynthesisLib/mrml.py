"""MRML helpers shared by the LAND modules; they work in Slicer and in the ``slicer-core`` wheel (no Qt)."""

from __future__ import annotations

import slicer


def moduleParameterNode(logic, logicBase, moduleName: str):
    """The module's parameter node.

    In the Slicer application ``logicBase`` is ``ScriptedLoadableModuleLogic`` and its node is used (unwrapped
    if Slicer returns a parameterNodeWrapper); headless (``logicBase`` None) a singleton
    ``vtkMRMLScriptedModuleNode`` tagged ``moduleName`` in ``slicer.mrmlScene`` is found or added.
    """
    if logicBase is not None:
        node = logicBase.getParameterNode(logic)
        return getattr(node, "parameterNode", node)
    node = slicer.mrmlScene.GetSingletonNode(moduleName, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(moduleName)
        node.SetModuleName(moduleName)
        node.SetName(moduleName)
        node = slicer.mrmlScene.AddNode(node)
    return node
