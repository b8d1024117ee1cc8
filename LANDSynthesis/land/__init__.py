"""LAND engine: latent diffusion synthesis of 3D chest CT from lung and nodule masks.

Plain Python (no Slicer import). Heavy submodules are imported lazily so ``import land`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from .errors import Cancelled, InputError, LANDError, ModelError

if TYPE_CHECKING:
    from .volume import Volume


def __getattr__(name: str) -> Any:
    """``land.Volume`` on first use, so ``import land`` (and ``land.contract``) needs no SimpleITK."""
    if name == "Volume":
        from .volume import Volume

        return Volume
    raise AttributeError(f"module 'land' has no attribute {name!r}")


__all__ = ["Cancelled", "InputError", "LANDError", "ModelError", "Volume", "__version__"]
