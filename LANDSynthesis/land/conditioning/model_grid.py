"""Masks onto the model grid, and into the condition the networks read: the one path from the user's masks.

:func:`model_grid_condition` is the straight line :meth:`land.pipeline.LANDPipeline.generate` takes:

1. check the nodules against the lungs where the user painted them
(:func:`land.imaging.maskset.check_nodules_inside`);
2. place the model grid on the lungs, ``crop`` (the model's voxel size, a field-of-view warning for what is
cut
   off) or ``scale`` (voxels :func:`land.imaging.grid.fit_factor` times larger) (:func:`masks_to_model_grid`);
3. resample the masks onto it, keeping every nodule at its size (:func:`to_model_grid`, :func:`_keep_nodule`);
4. encode them (:func:`land.conditioning.encode.encode_conditioning`).

:func:`from_model_grid` takes a generated CT back into the input's geometry (``--match-input``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from ..imaging.grid import crop_note, fit_factor, lung_centred_grid, lung_extent_mm
from ..imaging.maskset import MaskSet, check_geometry, check_labels, check_nodules_inside, label_counts
from ..imaging.volume import Volume
from ..interface.contract import WARNING_FIELD_OF_VIEW, check_fit
from ..interface.errors import InputError
from .encode import encode_conditioning


class FieldOfViewWarning(UserWarning):
    """Part of the lungs or nodules lies outside the model's field of view and is cut off."""

    code = WARNING_FIELD_OF_VIEW


def grid_reference(size: Sequence[int], spacing: Sequence[float]) -> Volume:
    """The model grid (``size``, ``spacing`` x, y, z) with identity direction, centred at the origin."""
    origin = tuple(-(n - 1) * s / 2.0 for n, s in zip(size, spacing, strict=True))
    return Volume(np.zeros(tuple(reversed(tuple(size))), np.uint8), tuple(spacing), origin)


def on_model_grid(reference: Volume, size: Sequence[int], spacing: Sequence[float]) -> bool:
    """True when a volume already has the model's grid size and spacing."""
    return tuple(reference.size) == tuple(size) and bool(np.allclose(reference.spacing, spacing, atol=1e-4))


def masks_to_model_grid(
    masks: MaskSet | None, size: Sequence[int], spacing: Sequence[float], fit: str = "crop"
) -> tuple[MaskSet | None, Volume]:
    """Masks on the model grid and the grid as a reference volume (:func:`to_model_grid`).

    ``fit`` ``crop``: the model's voxel size (a chest larger than the grid is cut off, with a
    :class:`FieldOfViewWarning` that says what); ``scale``: voxels :func:`land.imaging.grid.fit_factor`
    times larger when the lungs fill more of the grid than the model was trained on. Without masks: None
    and the centred grid; masks already on the model grid are kept as they are.
    """
    check_fit(fit)
    if masks is None or masks.reference is None:
        return None, grid_reference(size, spacing)
    if on_model_grid(masks.reference, size, spacing):
        return masks, Volume.like(masks.reference, np.zeros(masks.reference.array.shape, np.uint8))
    size, spacing = tuple(size), tuple(spacing)
    extent = lung_extent_mm(masks.lung, masks.lung.array != 0) if masks.lung is not None else None
    if fit == "scale":
        factor = fit_factor(extent, size, spacing)
        spacing = tuple(float(s) * factor for s in spacing)
    else:
        note = crop_note(extent, size, spacing)
        if note:
            warnings.warn(FieldOfViewWarning(note), stacklevel=4)
    return to_model_grid(masks, size, spacing)  # type: ignore[arg-type]


def model_grid_condition(
    masks: MaskSet | None,
    mode: str,
    size: Sequence[int],
    spacing: Sequence[float],
    strict: bool = False,
    fit: str = "crop",
) -> tuple[np.ndarray, Volume, MaskSet | None]:
    """Masks -> (encoded conditioning mask on the model grid (D, H, W) float32, model-grid reference,
    masks on the model grid); all zeros without masks or in mode ``none``. Nodules outside the lungs are
    judged where the user painted, before any resampling; ``fit``: :func:`masks_to_model_grid`."""
    if masks is not None and masks.reference is not None and mode != "none":
        check_nodules_inside(masks, strict)
    masks, ref = masks_to_model_grid(masks, size, spacing, fit)
    if masks is None or mode == "none":
        cond = np.zeros(ref.array.shape, np.float32)
    else:
        cond = encode_conditioning(masks, mode, check_outside=False).array
    return cond, ref, masks


def _matrix(direction: Iterable[float]) -> np.ndarray:
    return np.asarray(tuple(direction), float).reshape(3, 3)


def _continuous_index(vol: Volume, point: np.ndarray) -> np.ndarray:
    return np.linalg.solve(_matrix(vol.direction), np.asarray(point) - np.asarray(vol.origin)) / np.asarray(
        vol.spacing
    )


def _resample(
    vol: Volume, grid: Volume, interpolator: int, default: float, pixel: int | None = None
) -> np.ndarray:
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in grid.size])
    f.SetOutputSpacing([float(s) for s in grid.spacing])
    f.SetOutputOrigin([float(o) for o in grid.origin])
    f.SetOutputDirection([float(d) for d in grid.direction])
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(float(default))
    image = Volume.like(vol, vol.array).to_sitk()
    f.SetOutputPixelType(image.GetPixelID() if pixel is None else pixel)
    return sitk.GetArrayFromImage(f.Execute(image))


def _inside_slices(src: Volume, grid: Volume) -> tuple[slice, slice, slice]:
    """[z, y, x] slices of ``src`` voxels whose centres fall inside ``grid`` (same direction assumed)."""
    offset = _continuous_index(grid, np.asarray(src.origin)) * np.asarray(grid.spacing)  # mm along grid axes
    slices = []
    for axis in (2, 1, 0):
        sp_in, sp_out, n_in, n_out = src.spacing[axis], grid.spacing[axis], src.size[axis], grid.size[axis]
        lo = math.ceil((-0.5 * sp_out - offset[axis]) / sp_in - 1e-9)
        hi = math.floor(((n_out - 0.5) * sp_out - offset[axis]) / sp_in + 1e-9)
        lo, hi = max(lo, 0), min(hi, n_in - 1)
        slices.append(slice(lo, hi + 1) if hi >= lo else slice(0, 0))
    return tuple(slices)  # type: ignore[return-value]


def _keep_nodule(
    out: np.ndarray, nod: np.ndarray, label: int, painted: int, sampled: int, ref: Volume, grid: Volume
) -> str | None:
    """Make nearest-neighbour resampling keep nodule ``label`` at its size: when it came out with fewer than
    half the model voxels its painted volume fills (``painted`` voxels inside the grid; a thin or small
    nodule can fall between the model grid's voxel centres), the model voxels holding most of its painted
    voxel centres are marked, background ones only, up to that volume and at least one. Returns its volume
    in mm³ when it is smaller than one model voxel (else None)."""
    volume = painted * math.prod(ref.spacing)
    voxels = volume / math.prod(grid.spacing)
    target = max(1, int(round(voxels)))
    if sampled < max(1, 0.5 * voxels):
        zyx = np.argwhere(nod == label)
        points = np.asarray(ref.origin)[:, None] + _matrix(ref.direction) @ (
            np.asarray(ref.spacing)[:, None] * zyx[:, ::-1].T
        )
        ijk = np.rint(
            np.linalg.solve(_matrix(grid.direction), points - np.asarray(grid.origin)[:, None])
            / np.asarray(grid.spacing)[:, None]
        ).astype(np.int64)
        size = np.asarray(grid.size)[:, None]
        ijk = ijk[:, np.all((ijk >= 0) & (ijk < size), axis=0)]
        cells, hits = np.unique(ijk, axis=1, return_counts=True)
        for i in np.argsort(-hits, kind="stable"):
            if sampled >= target:
                break
            x, y, z = cells[:, i]
            if out[z, y, x] == 0:
                out[z, y, x] = label
                sampled += 1
    return f"{volume:.3g} mm³" if voxels < 1 else None


def to_model_grid(
    masks: MaskSet, size: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[MaskSet, Volume]:
    """Resample masks (nearest neighbour) onto the model grid; return them and the grid as a reference volume.

    The grid has the model ``size`` and ``spacing`` (x, y, z), the input's direction (no rotation), and is
    centred on the lung mask's bounding box (the image without a lung mask) by the rule training data was
    prepared with (:func:`land.imaging.grid.lung_centred_grid`, within half a model voxel), so physical
    positions
    are kept. The reference volume's array is an all-zero uint8 placeholder. Lungs or nodules
    cut off by the field of view give a :class:`FieldOfViewWarning`; no nodule vanishes or shrinks by the
    sampling (:func:`_keep_nodule`), one smaller than a model voxel keeps one voxel and is named in a
    warning; a nodule entirely outside the field of view is dropped (with its texture and name).
    """
    ref = masks.reference
    if ref is None:
        raise InputError("no masks to resample; fix: give a lung mask and/or a nodule map")
    if len(size) != 3 or any(
        isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size
    ):
        raise InputError(f"model grid size {size} must be three positive integers (x, y, z)")
    if len(spacing) != 3 or any(not s > 0 for s in spacing):
        raise InputError(f"model grid spacing {spacing} must be three positive numbers in mm (x, y, z)")
    check_geometry(masks)
    if masks.nodules is not None:
        check_labels(masks.nodules)
    grid, _ = lung_centred_grid(ref, masks.lung.array != 0 if masks.lung is not None else None, size, spacing)
    inside = _inside_slices(ref, grid)
    notes: list[str] = []
    lung_out = None
    if masks.lung is not None:
        lung = masks.lung.array != 0
        total = int(np.count_nonzero(lung))
        cut = total - int(np.count_nonzero(lung[inside]))
        if total and cut:
            extent = [round(float(s * n), 1) for s, n in zip(spacing, size, strict=True)]
            notes.append(
                f"{cut / total:.1%} of the lung mask ({cut} voxels) lies outside the model's field of view "
                f"({extent[0]} x {extent[1]} x {extent[2]} mm, centred on the lungs) and is cut off"
            )
        lung_out = Volume.like(
            grid, _resample(Volume.like(ref, lung.astype(np.uint8)), grid, sitk.sitkNearestNeighbor, 0)
        )
    nod_out, textures, names = None, dict(masks.textures), dict(masks.names)
    small: list[str] = []
    if masks.nodules is not None:
        nod = masks.nodules.array
        if nod.dtype == bool or not np.issubdtype(nod.dtype, np.integer):
            nod = nod.astype(np.uint16 if nod.size == 0 or nod.max() < 65536 else np.int32)
        before = label_counts(nod)
        kept = label_counts(nod[inside])
        out = _resample(Volume.like(ref, nod), grid, sitk.sitkNearestNeighbor, 0)
        after = label_counts(out)
        for label, n in sorted(before.items()):
            if label not in kept:
                notes.append(
                    f"nodule {masks.describe(label)} lies outside the model's field of view and is dropped"
                )
                textures.pop(label, None)
                names.pop(label, None)
                continue
            if kept[label] < n:
                notes.append(f"{1 - kept[label] / n:.0%} of nodule {masks.describe(label)} is cut off")
            size_note = _keep_nodule(out, nod, label, kept[label], after.get(label, 0), ref, grid)
            if size_note:
                small.append(f"{masks.describe(label)} ({size_note})")
        nod_out = Volume.like(grid, out)
    if small:
        warnings.warn(
            FieldOfViewWarning(
                f"nodule(s) smaller than one voxel of the model grid ({math.prod(spacing):g} mm³): "
                + ", ".join(small)
                + "; each is kept as one voxel, the model cannot draw it at its true size"
            ),
            stacklevel=2,
        )
    if notes:
        warnings.warn(
            FieldOfViewWarning(
                "; ".join(notes) + ". The CT is generated only inside the model's field of view; for full "
                "coverage use smaller anatomy or a model with a larger grid"
            ),
            stacklevel=2,
        )
    return MaskSet(lung=lung_out, nodules=nod_out, textures=textures, names=names), grid


def from_model_grid(ct: Volume, reference: Volume, default_hu: float = -1000) -> Volume:
    """Resample a CT generated on the model grid back into ``reference``'s geometry (linear interpolation).

    Voxels outside the generated field of view get ``default_hu`` (air). The result keeps ``ct``'s dtype
    (integer types rounded) and has no metadata.
    """
    data = ct.array.astype(np.float32, copy=False)
    out = _resample(Volume.like(ct, data), reference, sitk.sitkLinear, default_hu, sitk.sitkFloat32)
    if np.issubdtype(ct.array.dtype, np.integer):
        info = np.iinfo(ct.array.dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(ct.array.dtype)
    elif out.dtype != ct.array.dtype:
        out = out.astype(ct.array.dtype)
    return Volume.like(reference, out)
