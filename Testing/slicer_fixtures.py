"""pytest fixtures for the LANDSynthesis module on Slicer's real MRML and module logics (no application).

Needs the ``slicer-core`` wheel (``pip install slicer-core==5.11.0.6``); tests that use these fixtures
are skipped when it is absent. Recipe (see the field notes): one scene with an application logic that has its
colour logic; the volumes and segmentations logics on the same scene and application logic, registered as
"Volumes" and "Segmentations"; ``slicer.mrmlScene`` and ``slicer.modules`` set so ``slicer.util`` helpers
work headless.

Import the fixtures into a test module with ``from slicer_fixtures import *  # noqa: F403``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "LANDSynthesis"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))  # LANDSynthesisLib and LANDSynthesis.py, as Slicer's module path does

__all__ = [
    "MODULE_DIR",
    "REPO",
    "geometry_matrix",
    "land_logic",
    "mrml",
    "physical_points_ras",
    "slicer_core",
    "small_model",
    "start_headless_slicer",
]


class SlicerCore(types.SimpleNamespace):
    """The headless Slicer: ``scene``, ``app_logic``, ``volumes``, ``segmentations`` (module logics)."""


def start_headless_slicer():
    """Set up Slicer's MRML scene and module logics without the application (see the module docstring).

    Returns ``(core, restore)``; ``restore()`` puts ``slicer.mrmlScene`` / ``slicer.modules`` back.
    """
    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app_logic)
    colors.SetMRMLScene(scene)  # adds the default colour nodes
    app_logic.SetModuleLogic("Colors", colors)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(scene)
    volumes.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Volumes", volumes)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    segmentations.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic("Segmentations", segmentations)
    from LANDSynthesisLib.mrml import bindScene

    restore = bindScene(scene, volumes, segmentations)
    core = SlicerCore(
        slicer=slicer,
        scene=scene,
        app_logic=app_logic,
        colors=colors,
        volumes=volumes,
        segmentations=segmentations,
    )

    return core, restore


@pytest.fixture(scope="session")
def slicer_core():
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the 'slicer' module found is not slicer-core")
    core, restore = start_headless_slicer()
    yield core
    restore()


@pytest.fixture
def mrml(slicer_core):
    """The headless Slicer with a scene emptied after the test (default colour nodes kept)."""
    yield slicer_core
    scene = slicer_core.scene
    scene.Clear(0)
    for node in list(scene.GetNodesByClass("vtkMRMLScriptedModuleNode")):  # singletons survive Clear(0)
        scene.RemoveNode(node)


@pytest.fixture
def land_logic(mrml, tmp_path):
    """A LANDSynthesisLogic whose temporary files go to ``tmp_path / "tmp"`` (checked empty by tests)."""
    from LANDSynthesisLib.logic import LANDSynthesisLogic

    logic = LANDSynthesisLogic()
    logic.tempRoot = str(tmp_path / "tmp")
    Path(logic.tempRoot).mkdir()
    logic.pythonExecutable = sys.executable
    yield logic
    logic.cleanup()


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """An untrained small LAND model directory (``land init-model --config small``), made once per session."""
    pytest.importorskip("torch")
    from land.cli import main

    out = tmp_path_factory.mktemp("models") / "small-untrained"
    assert main(["init-model", "--config", "small", "--out", str(out)]) == 0
    return out


def geometry_matrix(spacing, origin, angle_deg: float = 0.0, flip: bool = False) -> np.ndarray:
    """An IJK-to-RAS matrix: rotation ``angle_deg`` about an oblique axis (and an optional axis flip), then
    per-axis ``spacing``, then ``origin`` — a non-trivial geometry for exactness tests."""
    a = np.deg2rad(angle_deg)
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)  # Rodrigues
    if flip:
        rot = rot @ np.diag([1.0, -1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def physical_points_ras(shape_kji, ijk_to_ras: np.ndarray) -> np.ndarray:
    """RAS position of every voxel centre, array [k, j, i, 3], computed by hand: p = M @ (i, j, k, 1)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], -1).astype(float)
    return (ijk1 @ np.asarray(ijk_to_ras, float).T)[..., :3]
