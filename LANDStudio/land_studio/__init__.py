"""LAND Studio: the LANDSynthesis panel in a browser, on trame-slicer (``land studio``; issue 27).

A second front end on the same contract as the desktop module: Slicer's own MRML scene, segmentation nodes
and segment editor effects run in this process through ``trame-slicer`` (the ``slicer-core`` wheel, rendered
off-screen); the segment conventions, mask export, options, engine-output handling and the ``land generate``
child process are ``LANDSynthesisLib``'s (the desktop module's Qt-free logic), used unchanged. Nothing here
copies a rule of the engine or of the module.

Installed with the ``studio`` extra from a checkout (``pip install -e ".[studio]"``); the engine's wheel does
not carry it. ``land studio`` imports this package lazily.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# No X server: VTK renders off-screen through EGL (Mesa llvmpipe without a GPU); set before VTK loads.
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

CHECKOUT = Path(__file__).resolve().parents[2]
# LANDSynthesisLib lives beside the engine, as on Slicer's module path
MODULE_DIR = CHECKOUT / "LANDSynthesis"


def ensure_module_path() -> None:
    """Make ``LANDSynthesisLib`` importable (it is the Slicer module's library, not an installed package)."""
    if (MODULE_DIR / "LANDSynthesisLib").is_dir() and str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))


REQUIRED = ("trame", "trame_slicer", "trame_vuetify", "slicer")


def missing_requirements() -> list[str]:
    """The studio's packages that this environment lacks (empty when ``land studio`` can start)."""
    import importlib.util

    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def main(args) -> int:
    """``land studio``: the class launcher (no Slicer in that process) that gives each browser its own
    paint-and-generate page (``--page``, the launcher's child); with ``--teaching-set`` the teaching session's
    launcher and, with ``--trainee``, one trainee's reading page."""
    import importlib

    from land.interface.errors import InputError

    if args.max_sessions < 1:
        raise InputError("--max-sessions must be at least 1")
    if args.gpu_slots < 0:
        raise InputError("--gpu-slots must be 0 (one per GPU) or more")
    if getattr(args, "teaching_set", None):
        module = "land_studio.teaching_app" if args.trainee else "land_studio.launcher"
        return importlib.import_module(module).serve(args)
    if args.page:
        return importlib.import_module("land_studio.app").main(args)
    return importlib.import_module("land_studio.studio_launcher").serve(args)
