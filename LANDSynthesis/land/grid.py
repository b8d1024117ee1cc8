"""The model grid: one rule for where a fixed-size grid sits over a scan, used by ``land prepare-lidc``
(training data) and by ``land generate`` / teaching sets (inference), so a model sees lungs placed the same
way in both."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .volume import Volume


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
    box = _bounding_box(lung) if lung is not None else None
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


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
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
