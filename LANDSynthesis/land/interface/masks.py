"""Mask rules shared by the engine's readers and the Slicer modules (numpy and scipy only, no torch).

Segments in one Slicer labelmap layer cannot overlap: painting a nodule with Segment Editor's default
"overwrite other segments" cuts it out of the lung segment. :func:`restore_lung` puts the lung back under
such nodules, so a nodule painted on the lung counts as inside it whatever the file layout.

Which nodule voxels are "outside the lungs" (:func:`outside_lung`): those that are not lung and do not touch
the lung, i.e. have no lung voxel among their 26 neighbours. A voxel painted at the lung's border is
partial-volume ambiguous (a convex lung edge drawn a voxel wider or narrower), so one voxel of tolerance is
given; the part of a nodule that juts out further is reported.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def is_lung_segment_name(name: str) -> bool:
    """True for segment names starting with "lung" (any case) that do not mention a nodule: the lungs;
    every other segment of a segmentation is a nodule."""
    n = name.strip().lower()
    return n.startswith("lung") and "nodule" not in n


def lung_under(lung: np.ndarray, nodule: np.ndarray) -> np.ndarray:
    """Voxels of ``nodule`` that were lung before the nodule was painted over it: each nodule voxel takes
    the lung/not-lung value of the nearest voxel outside the nodule, lung where a lung voxel and a non-lung
    voxel are equally near (a voxel on the lung's edge touches both). A nodule enclosed by lung, or touching
    its edge from inside, is lung; the part of a nodule that juts out of the lung is not."""
    from scipy.ndimage import distance_transform_edt

    lung, nodule = np.asarray(lung) != 0, np.asarray(nodule) != 0
    out = np.zeros(lung.shape, bool)
    idx = np.nonzero(nodule)
    if not idx[0].size or not lung.any():
        return out
    spans = zip(idx, lung.shape, strict=True)
    box = tuple(slice(max(int(i.min()) - 1, 0), min(int(i.max()) + 2, n)) for i, n in spans)
    inside, around = nodule[box], lung[box]
    lung_near, other_near = ~inside & around, ~inside & ~around
    if not lung_near.any():  # no lung beside the nodule (or it fills its whole neighbourhood)
        return out
    if not other_near.any():  # only lung beside it: enclosed by lung
        out[box] = inside
        return out
    to_lung = distance_transform_edt(~lung_near)
    to_other = distance_transform_edt(~other_near)
    out[box] = inside & (to_lung <= to_other + 1e-6)
    return out


def restore_lung(lung: np.ndarray, nodules: np.ndarray, labels: Iterable[int] | None = None) -> np.ndarray:
    """``lung`` (bool) plus the lung under each nodule label (all labels present by default) that shares no
    voxel with the lung, i.e. may have been cut out of it (see the module docstring). A nodule that overlaps
    the lung mask was not cut out of it, and the lung mask already says where its lung is."""
    out = np.asarray(lung) != 0
    nodules = np.asarray(nodules)
    labels = [int(k) for k in np.unique(nodules) if k] if labels is None else list(labels)
    base = out.copy()
    for k in labels:
        nodule = nodules == k
        if not (base & nodule).any():
            out |= lung_under(base, nodule)
    return out


def outside_lung(lung: np.ndarray, nodule: np.ndarray) -> np.ndarray:
    """Voxels of ``nodule`` (nonzero) outside the lungs by the module's rule: not lung (nonzero ``lung``) and
    no lung voxel among their 26 neighbours (a voxel touching the lung is inside within partial volume)."""
    lung, nodule = np.asarray(lung) != 0, np.asarray(nodule) != 0
    out = nodule & ~lung
    idx = np.nonzero(out)
    if not idx[0].size or not lung.any():
        return out
    spans = list(zip(idx, lung.shape, strict=True))
    box = tuple(slice(max(int(i.min()) - 1, 0), min(int(i.max()) + 2, n)) for i, n in spans)
    near = np.pad(lung[box], 1)  # lung around the candidates, one voxel wider, zeros past the volume's edge
    touch = np.zeros(lung[box].shape, bool)
    nz, ny, nx = touch.shape
    for dz in range(3):
        for dy in range(3):
            for dx in range(3):
                touch |= near[dz : dz + nz, dy : dy + ny, dx : dx + nx]
    out[box] &= ~touch
    return out
