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


def bindScene(scene, volumesLogic, segmentationsLogic):
    """Make ``slicer.util`` and this module's logic work on ``scene`` outside the Slicer application.

    The logic reaches the scene through ``slicer.mrmlScene`` and the module logics through
    ``slicer.modules.volumes.logic()`` / ``slicer.modules.segmentations.logic()``, which only the application
    sets. A host that makes its own scene (the ``slicer-core`` wheel in tests, LAND Studio on trame-slicer)
    binds them here. Returns ``restore()``, which puts the previous values back.
    """
    import types

    previous = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: volumesLogic),
        segmentations=types.SimpleNamespace(logic=lambda: segmentationsLogic),
    )

    def restore() -> None:
        for name, value in previous.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)

    return restore
