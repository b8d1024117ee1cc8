"""The files shipped with the engine: the demo model, the demo masks and the training configs.

The one place that says where they are. They are package data of ``land`` (this folder), so every layout
finds them beside this file: a repository checkout or editable install (``LANDSynthesis/land/resources``),
an installed wheel (``site-packages/land/resources``) and the Slicer extension
(``qt-scripted-modules/land/resources``, installed by LANDSynthesis/CMakeLists.txt). Torch-free and
stdlib-only: the Slicer modules import it.
"""

from __future__ import annotations

from pathlib import Path

DEMO_MODEL_NAME = "land-demo-phantom"
DEMO_MASKS_NAME = "demo_masks.seg.nrrd"


def resources_dir() -> Path:
    """The folder holding the shipped files (``land/resources``)."""
    return Path(__file__).resolve().parent


def demo_model_dir() -> Path:
    """The bundled demo model's directory (it may lack ``model.json`` in a trimmed installation)."""
    return resources_dir() / "models" / DEMO_MODEL_NAME


def demo_masks_path() -> Path:
    """The bundled demo mask set (lungs + nodules of textures 1, 3, 5), used when no --mask is given."""
    return resources_dir() / "demo_masks" / DEMO_MASKS_NAME


def configs_dir() -> Path:
    """The bundled training configs (``paper.json``, ``small.json``, ``demo.json``, ``tiny.json``, ...)."""
    return resources_dir() / "configs"


def has_demo_model() -> bool:
    """Whether this installation holds the bundled demo model."""
    return (demo_model_dir() / "model.json").is_file()
