"""The model grid: one rule for where a fixed-size grid sits over a scan, used by ``land prepare-lidc``
(training data) and by ``land generate`` / teaching sets (inference), so a model sees lungs placed the same
way in both."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .volume import Volume

FIT_FILL = 0.85  # --fit scale: the lungs may fill this share of the grid along each axis
CHEST_WALL_MM = 20.0  # body wall and ribs beside the lungs, for the cropping warning


def lung_centred_grid(
    reference: Volume, lung: np.ndarray | None, size: Sequence[int], spacing: Sequence[float]
) -> tuple[Volume, tuple[int, int, int]]:
    """``size`` voxels (x, y, z) of ``spacing`` mm in ``reference``'s direction, centred on the bounding box
    of ``lung`` (a [z, y, x] mask on ``reference``; the whole volume when None or empty).

    The grid's voxel centres lie on the lattice of ``spacing`` mm that starts at ``reference``'s origin
    (the centre is rounded to that lattice, so it is within half a voxel of the lungs' centre): a scan
    already at ``spacing`` is cropped, not interpolated. Returns an all-zero uint8 volume on the grid and
    its first voxel's index (x, y, z) in that lattice.
    """
    size_a = np.asarray([int(s) for s in size], float)
    spacing_a = np.asarray([float(s) for s in spacing], float)
    direction = np.asarray(reference.direction, float).reshape(3, 3)
    box = bounding_box(lung) if lung is not None else None
    if box is not None:
        lo, hi = box[0] - 0.5, box[1] + 0.5
    else:
        lo, hi = np.full(3, -0.5), np.asarray(reference.size, float) - 0.5
    # the box centre as a continuous index of the output lattice (same origin and axes as the reference)
    centre = 0.5 * (lo + hi) * np.asarray(reference.spacing, float) / spacing_a
    start = np.floor(centre - (size_a - 1) / 2.0 + 0.5).astype(int)
    origin = np.asarray(reference.origin, float) + direction @ (start * spacing_a)
    grid = Volume(
        np.zeros(tuple(int(s) for s in size_a[::-1]), np.uint8),
        tuple(float(s) for s in spacing_a),  # type: ignore[arg-type]
        tuple(float(v) for v in origin),  # type: ignore[arg-type]
        tuple(float(d) for d in reference.direction),  # type: ignore[arg-type]
    )
    return grid, (int(start[0]), int(start[1]), int(start[2]))


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """First and last voxel index (x, y, z) of a [z, y, x] mask's nonzero voxels (None when empty), from its
    projections onto each axis (no index arrays over the whole mask)."""
    first, last = [], []
    for axis in (2, 1, 0):
        nz = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        if nz.size == 0:
            return None
        first.append(nz[0])
        last.append(nz[-1])
    return np.asarray(first, float), np.asarray(last, float)


def lung_extent_mm(reference: Volume, lung: np.ndarray) -> np.ndarray | None:
    """Extent (x, y, z, mm along ``reference``'s axes) of the bounding box of a [z, y, x] mask on it."""
    box = bounding_box(lung)
    if box is None:
        return None
    return (box[1] - box[0] + 1.0) * np.asarray(reference.spacing, float)


def fit_factor(extent_mm: np.ndarray | None, size: Sequence[int], spacing: Sequence[float]) -> float:
    """Voxel-size factor (>= 1, the same on every axis) that makes lungs of ``extent_mm`` fill at most
    ``FIT_FILL`` of a grid of ``size`` voxels of ``spacing`` mm: 1 when they already do."""
    if extent_mm is None:
        return 1.0
    grid_mm = np.asarray(size, float) * np.asarray(spacing, float)
    return float(max(1.0, np.max(extent_mm / (FIT_FILL * grid_mm))))


def crop_note(extent_mm: np.ndarray | None, size: Sequence[int], spacing: Sequence[float]) -> str | None:
    """What a grid of ``size`` x ``spacing`` cuts off around lungs of ``extent_mm`` (None when the lungs and
    a chest wall of ``CHEST_WALL_MM`` beside them fit in x and y, and the lungs fit in z)."""
    if extent_mm is None:
        return None
    grid_mm = np.asarray(size, float) * np.asarray(spacing, float)
    need = extent_mm + np.array([2 * CHEST_WALL_MM, 2 * CHEST_WALL_MM, 0.0])
    if np.all(need <= grid_mm):
        return None
    lungs = " x ".join(f"{v:.0f}" for v in extent_mm)
    grid = " x ".join(f"{v:.0f}" for v in grid_mm)
    fill = float(np.max(extent_mm / grid_mm))
    return (
        f"the lungs span {lungs} mm and fill {fill:.0%} of the model's {grid} mm field of view: the chest "
        "wall, ribs and body outline around them are cut off"
        + (", and so is part of the lungs" if np.any(extent_mm > grid_mm) else " (the lungs fit)")
        + f"; --fit scale generates the whole chest with voxels {fit_factor(extent_mm, size, spacing):.2f}x "
        "larger"
    )
