"""LAND engine: latent diffusion synthesis of 3D chest CT from lung and nodule masks.

Plain Python (no Slicer import). Heavy submodules are imported lazily so ``import land`` stays fast.
The packages, lowest layer first (README "Architecture"): ``interface`` (torch-free contract) and
``resources``, ``imaging``, ``conditioning``, ``models``, ``sampling`` and ``decoding``, then
:mod:`land.pipeline` (:class:`LANDPipeline`) and :mod:`land.cli`; ``data``, ``eval``, ``train``, ``world``
and ``teaching`` build on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .interface import __version__
from .interface.errors import Cancelled, InputError, LANDError, ModelError

if TYPE_CHECKING:
    from .imaging.lungseg import segment_lungs
    from .imaging.volume import Volume
    from .pipeline import LANDPipeline
    from .world.lidc_shapes import nodule_shape_info

# name -> module: imported on first use, so ``import land`` (and ``land.interface``) needs no SimpleITK or
# torch
_LAZY = {
    "Volume": "land.imaging.volume",
    "LANDPipeline": "land.pipeline",
    "segment_lungs": "land.imaging.lungseg",
    "nodule_shape_info": "land.world.lidc_shapes",
}


def __getattr__(name: str) -> Any:
    """``land.Volume``, ``land.LANDPipeline``, ``land.segment_lungs`` and ``land.nodule_shape_info`` on
    first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'land' has no attribute {name!r}")


__all__ = [
    "Cancelled",
    "InputError",
    "LANDError",
    "LANDPipeline",
    "ModelError",
    "Volume",
    "__version__",
    "nodule_shape_info",
    "segment_lungs",
]
