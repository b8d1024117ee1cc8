"""Random whole-body deformations of a phantom: image and masks warped together.

Real chests differ from the procedural phantom far more than its per-seed parameters do: lungs from half
to nearly all of a 320 mm field of view, deeper from front to back, tilted, asymmetric. ``make_phantom(...,
deform=True)`` renders the anatomy on a larger canvas and maps it onto the requested grid with one
smooth transform per case:

* per-axis scale: x chosen so the lungs span a uniform 0.6-0.97 of the grid's width (real adult lungs,
  250-320 mm, fill 0.78-1.0 of a 320 mm grid; a fixed scale range left lungs wider than 0.9 of the grid in
  17 % of the cases), y x times 0.95-1.3 within 0.75-1.6, z 0.8-1.12,
* a rotation (up to 8 degrees about the cranio-caudal axis, 3 degrees about the others),
* an elastic displacement (a smooth random field, 60 mm correlation, up to about 8 mm),
* a translation that centres the lungs' bounding box on the grid (within a few mm), as ``land generate``
  centres a user's lungs on the model grid (:func:`land.imaging.grid.lung_centred_grid`).

The image is sampled linearly, masks by nearest neighbour, so every mask stays aligned with the image it
labels. Coordinates are physical mm (x, y, z), arrays ``[z, y, x]``, identity direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "LUNG_WIDTH_FRACTION",
    "Deformation",
    "canvas_size",
    "lung_box_centre",
    "sample_deformation",
    "warp",
]

ELASTIC_CELL_MM = 60.0
ELASTIC_MM = 4.0  # standard deviation of each displacement component at the coarse nodes
JITTER_MM = 4.0


@dataclass(frozen=True)
class Deformation:
    """Output point p comes from canvas point ``A^-1 (p - t) + d(p)``; ``A`` = rotation @ diag(scale)."""

    scale: tuple[float, float, float]
    rotation: np.ndarray  # 3x3
    jitter_mm: tuple[float, float, float]
    elastic_seed: int

    @property
    def matrix(self) -> np.ndarray:
        return self.rotation @ np.diag(self.scale)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay)
    cz, sz = math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


LUNG_WIDTH_FRACTION = (0.6, 0.97)


def sample_deformation(rng: np.random.Generator, lung_width_fraction: float | None = None) -> Deformation:
    """One random deformation (see the module doc for the ranges); ``lung_width_fraction`` is the share of
    the grid's width the undeformed lungs span (the x scale then draws the deformed share; without it a
    scale of 0.72-1.36)."""
    if lung_width_fraction is None:
        sx = rng.uniform(0.72, 1.36)
    else:
        sx = rng.uniform(*LUNG_WIDTH_FRACTION) / float(lung_width_fraction)
    sy = float(np.clip(sx * rng.uniform(0.95, 1.3), 0.75, 1.6))
    sz = rng.uniform(0.8, 1.12)
    angles = np.radians([rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-8, 8)])
    return Deformation(
        scale=(float(sx), sy, float(sz)),
        rotation=_rotation(*angles),
        jitter_mm=tuple(float(v) for v in rng.uniform(-JITTER_MM, JITTER_MM, 3)),  # type: ignore[arg-type]
        elastic_seed=int(rng.integers(0, 2**31)),
    )


def canvas_size(
    deform: Deformation, size: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[int, int, int]:
    """Voxels (x, y, z) of a canvas centred like the output grid that holds the output's pre-image."""
    half = (np.asarray(size) - 1) * np.asarray(spacing) / 2.0
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    pre = np.abs(corners @ np.linalg.inv(deform.matrix).T).max(axis=0)
    pre += 4.0 * ELASTIC_MM + 2.0 * JITTER_MM + 30.0  # elastic, jitter, the lungs' offset from the centre
    return tuple(int(2 * math.ceil(p / s) + 1) for p, s in zip(pre, spacing, strict=True))  # type: ignore[return-value]


def lung_box_centre(lung: np.ndarray, origin: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Physical centre (x, y, z) of the bounding box of a [z, y, x] mask (the grid's centre when empty)."""
    from ..imaging.grid import bounding_box

    box = bounding_box(lung)
    if box is None:
        return origin + (np.asarray(lung.shape[::-1]) - 1) * spacing / 2.0
    return origin + 0.5 * (box[0] + box[1]) * spacing


def _elastic(
    seed: int, shape: tuple[int, int, int], spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth displacement (mm) per output voxel, components x, y, z, each [z, y, x] float32."""
    rng = np.random.default_rng(seed)
    extent = np.asarray(shape) * spacing[::-1]
    coarse = tuple(int(math.ceil(e / ELASTIC_CELL_MM)) + 2 for e in extent)
    out = []
    for _ in range(3):
        c = rng.standard_normal(coarse).astype(np.float32) * np.float32(ELASTIC_MM)
        factors = [n / m for n, m in zip(shape, coarse, strict=True)]
        f = ndi.zoom(c, factors, order=3, mode="nearest", grid_mode=True)
        out.append(f[: shape[0], : shape[1], : shape[2]])
    return out[0], out[1], out[2]


def warp(
    arrays: dict[str, tuple[np.ndarray, int, float]],
    canvas_origin: np.ndarray,
    spacing: np.ndarray,
    size: tuple[int, int, int],
    deform: Deformation,
    lung_centre: np.ndarray,
) -> dict[str, np.ndarray]:
    """Resample canvas arrays (name -> ([z, y, x] array, spline order 0 or 1, fill value)) onto the output
    grid of ``size`` (x, y, z) voxels of ``spacing`` centred at the origin; ``lung_centre`` (canvas mm)
    lands at the grid centre plus the deformation's jitter."""
    spacing = np.asarray(spacing, np.float64)
    shape = (size[2], size[1], size[0])
    origin = -(np.asarray(size) - 1) * spacing / 2.0
    a_inv = np.linalg.inv(deform.matrix)
    t = np.asarray(deform.jitter_mm) - deform.matrix @ np.asarray(lung_centre, np.float64)
    dx, dy, dz = _elastic(deform.elastic_seed, shape, spacing)
    px = (origin[0] + np.arange(size[0]) * spacing[0] - t[0]).astype(np.float32)[None, None, :]
    py = (origin[1] + np.arange(size[1]) * spacing[1] - t[1]).astype(np.float32)[None, :, None]
    pz = (origin[2] + np.arange(size[2]) * spacing[2] - t[2]).astype(np.float32)[:, None, None]
    coords = []
    for axis, d in zip(range(3), (dx, dy, dz), strict=True):
        q = a_inv[axis, 0] * px + a_inv[axis, 1] * py + a_inv[axis, 2] * pz + d
        coords.append(((q - canvas_origin[axis]) / spacing[axis]).astype(np.float32))
    index = np.stack([coords[2], coords[1], coords[0]])  # [z, y, x] order for the arrays
    out = {}
    for name, (arr, order, fill) in arrays.items():
        res = ndi.map_coordinates(arr, index, order=order, mode="constant", cval=fill, prefilter=False)
        out[name] = res.astype(arr.dtype, copy=False)
    return out
