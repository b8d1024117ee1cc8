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
    nz = np.nonzero(lung) if lung is not None else ()
    if lung is not None and nz[0].size:
        lo = np.array([nz[2].min(), nz[1].min(), nz[0].min()], float) - 0.5
        hi = np.array([nz[2].max(), nz[1].max(), nz[0].max()], float) + 0.5
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
