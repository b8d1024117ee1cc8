"""Nearest-neighbour resampling of labelmap layers onto a reference grid, and voxel reordering, in numpy only.

These run in worker threads, so the GUI thread only hands over arrays and matrices. The resampling gives the
voxels Slicer's own export gives (``vtkOrientedImageDataResample`` -> ``vtkImageReslice``, nearest neighbour,
border on): a reference voxel centre maps to a continuous layer index ``x``; it is inside when
``-0.5 <= x <= n - 0.5`` on every axis and then takes the voxel ``clamp(floor(x + 0.5 + 2**-17))``
(``vtkInterpolationMath::Round``, whose 2**-17 tolerance rounds exact halves up).

Arrays are indexed [k, j, i] (``slicer.util.arrayFromVolume``); matrices act on (i, j, k, 1).
"""

from __future__ import annotations

import numpy as np

FLOOR_TOL = 7.62939453125e-06  # VTK_INTERPOLATE_FLOOR_TOL (2**-17)
BORDER = 0.5  # vtkImageReslice's default border thickness
ZERO_TOL = 1e-9  # matrix entries below this (relative) count as zero for the axis-aligned fast path


def _nearest(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(index clamped to 0..n-1, inside) for continuous indices ``x`` along an axis of ``n`` voxels."""
    inside = (x >= -BORDER) & (x <= n - 1 + BORDER)
    index = np.floor(x + (0.5 + FLOOR_TOL)).astype(np.intp)
    np.clip(index, 0, n - 1, out=index)
    return index, inside


def referenceBox(refToLayer: np.ndarray, layerShape: tuple[int, int, int], shape: tuple[int, int, int]):
    """(lo, hi) in (i, j, k) order: the reference voxels that can sample the layer (hi exclusive)."""
    size = np.array(layerShape[::-1], float)
    corners = np.array([[x, y, z, 1.0] for x in (-1, size[0]) for y in (-1, size[1]) for z in (-1, size[2])])
    ref = (np.linalg.inv(refToLayer) @ corners.T)[:3]
    lo = np.maximum(np.floor(ref.min(axis=1)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(ref.max(axis=1)).astype(int) + 2, np.array(shape[::-1]))
    return lo, hi


def axisPermutation(matrix: np.ndarray) -> list[int] | None:
    """For a 3x3 matrix with one nonzero per row and column: the column of each row's nonzero, else None."""
    m = np.abs(np.asarray(matrix, float)[:3, :3])
    nonzero = m > ZERO_TOL * max(float(m.max()), 1e-300)
    if not (np.all(nonzero.sum(axis=0) == 1) and np.all(nonzero.sum(axis=1) == 1)):
        return None
    return [int(np.argmax(nonzero[r])) for r in range(3)]


def resampleNearest(array: np.ndarray, refToLayer: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``array`` (a labelmap layer, [k, j, i]) sampled at the voxel centres of a reference grid of ``shape``.

    ``refToLayer``: 4x4 matrix from reference (i, j, k) to layer array (i, j, k) indices. Voxels outside the
    layer are 0. Exact integer shifts are copied; axis-aligned mappings use one gather; others go slice by
    slice (bounded memory, and the GIL is released often enough for the GUI thread).
    """
    out = np.zeros(shape, array.dtype)
    if array.size == 0:
        return out
    t = np.asarray(refToLayer, float)
    dims = array.shape[::-1]  # layer (ni, nj, nk)
    shift = np.rint(t[:3, 3])
    if np.array_equal(t[:3, :3], np.eye(3)) and np.array_equal(t[:3, 3], shift):
        lo = -shift.astype(int)[::-1]  # where layer [0, 0, 0] lies on the reference, (k, j, i)
        hi = lo + np.array(array.shape)
        dst_lo, dst_hi = np.maximum(lo, 0), np.minimum(hi, shape)
        if np.all(dst_hi > dst_lo):
            src = tuple(slice(a - o, b - o) for a, b, o in zip(dst_lo, dst_hi, lo, strict=True))
            dst = tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True))
            out[dst] = array[src]
        return out
    lo, hi = referenceBox(t, array.shape, shape)
    if np.any(hi <= lo):
        return out
    ranges = [np.arange(lo[a], hi[a], dtype=float) for a in range(3)]  # reference i, j, k
    perm = axisPermutation(t)
    if perm is not None:  # layer axis r varies only along reference axis perm[r]
        index, inside = [], []
        for r in range(3):
            idx, ok = _nearest(t[r, perm[r]] * ranges[perm[r]] + t[r, 3], dims[r])
            index.append(idx)
            inside.append(ok)
        gathered = array[np.ix_(index[2], index[1], index[0])]  # axes: layer k, j, i
        ok = inside[2][:, None, None] & inside[1][None, :, None] & inside[0][None, None, :]
        gathered[~ok] = 0
        # numpy axis p of ``gathered`` is layer axis 2 - p, i.e. reference axis perm[2 - p]
        order = [next(p for p in range(3) if perm[2 - p] == 2 - q) for q in range(3)]
        out[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] = gathered.transpose(order)
        return out
    ii, jj = ranges[0][None, :], ranges[1][:, None]
    for k in range(int(lo[2]), int(hi[2])):
        index, ok = [], None
        for r in range(3):
            x = t[r, 0] * ii + t[r, 1] * jj + (t[r, 2] * k + t[r, 3])
            idx, inside = _nearest(x, dims[r])
            index.append(idx)
            ok = inside if ok is None else (ok & inside)
        if not ok.any():
            continue
        values = array[index[2], index[1], index[0]]
        values[~ok] = 0
        out[k, lo[1] : hi[1], lo[0] : hi[0]] = values
    return out


def conformArray(
    array: np.ndarray,
    ijkToRas: np.ndarray,
    referenceIjkToRas: np.ndarray,
    referenceShape: tuple[int, int, int],
    tolerance: float = 1e-3,
) -> np.ndarray | None:
    """``array`` reordered onto the reference's voxel grid when both sample the same voxel centres with axes
    permuted or flipped (then the reference's IJK-to-RAS matrix describes it exactly); else None."""
    t = np.linalg.inv(np.asarray(referenceIjkToRas, float)) @ np.asarray(ijkToRas, float)  # ijk -> ref ijk
    p, offset = np.rint(t[:3, :3]), np.rint(t[:3, 3])
    if not (np.allclose(t[:3, :3], p, atol=tolerance) and np.allclose(t[:3, 3], offset, atol=tolerance)):
        return None
    if not (np.all(np.abs(p).sum(axis=0) == 1) and np.all(np.abs(p).sum(axis=1) == 1)):
        return None
    size = np.array(referenceShape[::-1])  # (ni, nj, nk)
    array_ijk = array.transpose(2, 1, 0)
    perm = [int(np.argmax(np.abs(p[r]))) for r in range(3)]
    out = array_ijk.transpose(perm)
    if out.shape != tuple(size):
        return None
    for r in range(3):
        if p[r, perm[r]] < 0:
            if offset[r] != size[r] - 1:
                return None
            out = np.flip(out, axis=r)
        elif offset[r] != 0:
            return None
    return np.ascontiguousarray(out.transpose(2, 1, 0))
