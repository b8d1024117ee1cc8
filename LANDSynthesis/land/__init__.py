"""LAND engine: latent diffusion synthesis of 3D chest CT from lung and nodule masks.

Plain Python (no Slicer import). Heavy submodules are imported lazily so ``import land`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import Cancelled, InputError, LANDError, ModelError
from .volume import Volume

__all__ = ["Cancelled", "InputError", "LANDError", "ModelError", "Volume", "__version__"]
