"""A voxel array with its physical geometry (the engine's image type, independent of Slicer)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # SimpleITK is imported where it is used: generating needs no SimpleITK
    import SimpleITK as sitk


@dataclass
class Volume:
    """A 3D image: ``array`` is indexed ``[z, y, x]`` (SimpleITK / Slicer ``arrayFromVolume`` order).

    ``spacing``, ``origin`` and ``direction`` follow ITK conventions (LPS, x-y-z order, direction as a
    row-major 3x3 tuple of 9 floats).
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int, int]:
        """Size in x, y, z order (ITK order)."""
        z, y, x = self.array.shape
        return (x, y, z)

    def same_geometry(self, other: Volume, tol: float = 1e-4) -> bool:
        """True when both volumes share size, spacing, origin and direction (within ``tol``)."""
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def geometry_text(self) -> str:
        """Human-readable geometry, for error messages."""
        return (
            f"size {self.size}, spacing {tuple(round(s, 4) for s in self.spacing)}, "
            f"origin {tuple(round(o, 3) for o in self.origin)}"
        )

    def with_array(self, array: np.ndarray) -> Volume:
        """A copy with the same geometry and a new voxel array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from volume shape {self.array.shape}")
        return replace(self, array=array, metadata=dict(self.metadata))

    def to_sitk(self) -> sitk.Image:
        """The volume as a SimpleITK image (metadata copied)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in self.direction))
        for key, value in self.metadata.items():
            image.SetMetaData(key, str(value))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, metadata: bool = False) -> Volume:
        """A volume from a SimpleITK image (optionally with its metadata dictionary)."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()} if metadata else {}
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=tuple(image.GetSpacing()),
            origin=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
            metadata=meta,
        )

    @classmethod
    def like(cls, reference: Volume, array: np.ndarray) -> Volume:
        """A new volume with ``reference``'s geometry and no metadata."""
        return cls(array, reference.spacing, reference.origin, reference.direction)
