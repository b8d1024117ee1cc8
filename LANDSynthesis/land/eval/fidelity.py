"""Conditional fidelity: does a generated CT obey the masks it was generated from?

* :func:`lung_dice`: the lungs segmented in the generated CT (``land.imaging.lungseg``'s classical,
threshold-based
  method: body, air below -320 HU inside it, airways removed, holes filled) vs the input lung mask.
* :func:`nodule_stats`: per nodule, its mean HU, the mean / std of the surrounding lung (a shell of
  ``shell_mm`` around the nodule beyond a ``gap_mm`` partial-volume margin, inside the lung mask, outside
  every nodule), contrast, contrast-to-noise ratio, visibility (``contrast > surround std``, signed: every
  texture, ground glass included, is denser than lung, so a nodule drawn as a dark hole is not visible), the
  share of its voxels inside the lung mask and its size (diameter of the sphere of equal volume).
* :func:`lung_parenchyma`: mean and std HU of the lung away from its border and from the nodules.
* :func:`fidelity_summary`: aggregates over cases, also split at ``size_split_mm`` (default 6 mm: below it
  a nodule is a handful of voxels at 2 mm and partial volume hides it even in a perfect image).

Arrays are indexed [z, y, x] (like :class:`land.imaging.volume.Volume`); ``spacing`` is (x, y, z) in mm, ITK
order,
as ``Volume.spacing``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from ..imaging.volume import Volume
from ..interface.errors import InputError

SHELL_MM = 4.0
GAP_MM = 1.0
SIZE_SPLIT_MM = 6.0


@dataclass
class NoduleStat:
    """Fidelity figures of one nodule (HU; ``nan`` where the nodule has no surrounding lung)."""

    label: int
    texture: int | None
    voxels: int
    mean_hu: float
    surround_mean_hu: float
    surround_std_hu: float
    contrast_hu: float
    cnr: float
    visible: bool
    inside_lung_fraction: float
    diameter_mm: float = math.nan  # of the sphere with the nodule's volume

    def to_json(self) -> dict:
        """A JSON-safe dict (non-finite numbers become None)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


def _check(ct_hu: np.ndarray, *masks: np.ndarray) -> None:
    if ct_hu.ndim != 3:
        raise InputError(f"expected a 3D CT array [z, y, x], got shape {ct_hu.shape}")
    for m in masks:
        if m.shape != ct_hu.shape:
            raise InputError(
                f"mask shape {m.shape} differs from the CT's {ct_hu.shape}; fix: resample the masks onto the "
                "CT grid (land.eval.sets.resample_like)"
            )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def segment_generated_lungs(ct_hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Lung mask (bool [z, y, x]) of a CT by ``land.imaging.lungseg``'s classical threshold-based method."""
    from ..imaging.lungseg import segment_lungs

    vol = Volume(np.asarray(ct_hu), spacing=tuple(float(s) for s in spacing))
    return segment_lungs(vol).array != 0


def lung_dice(ct_hu: np.ndarray, lung_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Dice of the lungs segmented in ``ct_hu`` (:func:`segment_generated_lungs`) with ``lung_mask``."""
    _check(ct_hu, lung_mask)
    return dice(segment_generated_lungs(ct_hu, spacing), lung_mask)


def lung_parenchyma(
    ct_hu: np.ndarray, lung_mask: np.ndarray, nodule_labels: np.ndarray
) -> tuple[float, float]:
    """Mean and standard deviation (HU) of the lung parenchyma: the lung mask eroded by one voxel (no
    partial volume with the chest wall), outside every nodule dilated by one voxel; ``nan`` when empty."""
    _check(ct_hu, lung_mask, nodule_labels)
    lung = ndi.binary_erosion(np.asarray(lung_mask) != 0)
    lung &= ~ndi.binary_dilation(np.asarray(nodule_labels) != 0)
    values = np.asarray(ct_hu, dtype=np.float64)[lung]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std())


def _shell(
    nodule: np.ndarray, spacing_zyx: np.ndarray, gap_mm: float, shell_mm: float
) -> tuple[tuple, np.ndarray]:
    """(bounding-box slices, shell mask in the box): voxels at (gap, gap + shell] mm from the nodule."""
    reach = gap_mm + shell_mm
    pad = np.ceil(reach / spacing_zyx).astype(int) + 1
    idx = np.nonzero(nodule)
    box = tuple(
        slice(max(int(i.min()) - p, 0), min(int(i.max()) + p + 1, n))
        for i, p, n in zip(idx, pad, nodule.shape, strict=True)
    )
    dist = ndi.distance_transform_edt(~nodule[box], sampling=spacing_zyx)
    return box, (dist > gap_mm) & (dist <= reach)


def nodule_ring(
    nodules: np.ndarray, spacing: Sequence[float], gap_mm: float = GAP_MM, shell_mm: float = SHELL_MM
) -> np.ndarray:
    """Boolean [z, y, x] mask of the voxels at (gap, gap + shell] mm from any nodule voxel (``nodules``
    nonzero; ``spacing`` x, y, z): the surrounding ring that :func:`nodule_stats` measures (there also
    restricted to the lungs)."""
    nodule = np.asarray(nodules) != 0
    ring = np.zeros(nodule.shape, bool)
    if nodule.any():
        box, shell = _shell(nodule, np.asarray(tuple(spacing)[::-1], dtype=np.float64), gap_mm, shell_mm)
        ring[box] = shell
    return ring


def nodule_stats(
    ct_hu: np.ndarray,
    lung_mask: np.ndarray,
    nodule_labels: np.ndarray,
    textures: Mapping[int, int],
    spacing: Sequence[float],
    shell_mm: float = SHELL_MM,
    gap_mm: float = GAP_MM,
) -> list[NoduleStat]:
    """Per-nodule HU, contrast and CNR against the surrounding lung (see the module docstring)."""
    _check(ct_hu, lung_mask, nodule_labels)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"spacing must be 3 positive values (x, y, z) in mm, got {spacing}")
    spacing_zyx = np.asarray(tuple(spacing)[::-1], dtype=np.float64)
    voxel_mm3 = float(np.prod(spacing_zyx))
    ct = np.asarray(ct_hu, dtype=np.float64)
    lung = np.asarray(lung_mask) != 0
    labels = np.asarray(nodule_labels)
    any_nodule = labels != 0
    out: list[NoduleStat] = []
    for label in (int(v) for v in np.unique(labels) if v != 0):
        nodule = labels == label
        voxels = int(nodule.sum())
        mean_hu = float(ct[nodule].mean())
        box, shell = _shell(nodule, spacing_zyx, gap_mm, shell_mm)
        shell &= lung[box] & ~any_nodule[box]
        ring = ct[box][shell]
        if ring.size:
            s_mean, s_std = float(ring.mean()), float(ring.std())
        else:
            s_mean = s_std = float("nan")
        contrast = mean_hu - s_mean
        if ring.size == 0:
            cnr = float("nan")
        elif s_std > 0:
            cnr = contrast / s_std
        else:
            cnr = math.copysign(math.inf, contrast) if contrast else 0.0
        texture = textures.get(label)
        out.append(
            NoduleStat(
                label=label,
                texture=None if texture is None else int(texture),
                voxels=voxels,
                mean_hu=mean_hu,
                surround_mean_hu=s_mean,
                surround_std_hu=s_std,
                contrast_hu=contrast,
                cnr=cnr,
                visible=bool(ring.size and contrast > s_std),
                inside_lung_fraction=float(lung[nodule].mean()),
                diameter_mm=float((6.0 * voxels * voxel_mm3 / math.pi) ** (1.0 / 3.0)),
            )
        )
    return out


FALSE_NODULE_HU = -300.0
FALSE_NODULE_MM = 5.0
FALSE_NODULE_ELONGATION = 2.5


def false_nodules(
    ct_hu: np.ndarray,
    lung_mask: np.ndarray,
    nodule_labels: np.ndarray,
    spacing: Sequence[float],
    threshold_hu: float = FALSE_NODULE_HU,
    min_diameter_mm: float = FALSE_NODULE_MM,
    max_elongation: float = FALSE_NODULE_ELONGATION,
) -> list[dict[str, float]]:
    """Nodule-like blobs nobody painted: 3D components denser than ``threshold_hu`` inside the lung (eroded
    by 2 voxels, so partial volume with the chest wall and mediastinum does not count) and more than 5 mm
    from every painted nodule, at least ``min_diameter_mm`` (sphere of equal volume) and compact — longest
    over shortest principal axis at most ``max_elongation`` — which leaves out vessels, long and thin.
    Returns each blob's diameter (mm), mean HU and elongation."""
    _check(ct_hu, lung_mask, nodule_labels)
    spacing_zyx = np.asarray(tuple(spacing)[::-1], dtype=np.float64)
    lung = ndi.binary_erosion(np.asarray(lung_mask) != 0, iterations=2)
    far = ndi.distance_transform_edt(np.asarray(nodule_labels) == 0, sampling=spacing_zyx) > 5.0
    dense = (np.asarray(ct_hu) > threshold_hu) & lung & far
    comps, n = ndi.label(dense)
    voxel_mm3 = float(np.prod(spacing_zyx))
    out = []
    for i, sl in enumerate(ndi.find_objects(comps), start=1):
        if sl is None:
            continue
        blob = comps[sl] == i
        voxels = int(blob.sum())
        diameter = (6.0 * voxels * voxel_mm3 / math.pi) ** (1.0 / 3.0)
        if diameter < min_diameter_mm or voxels < 4:
            continue
        pts = np.argwhere(blob) * spacing_zyx
        eig = np.sort(np.linalg.eigvalsh(np.cov(pts.T)))
        elongation = float(np.sqrt(eig[-1] / max(eig[0], (spacing_zyx.min() / 2) ** 2 / 3)))
        if elongation <= max_elongation:
            mean = float(np.asarray(ct_hu)[sl][blob].mean())
            out.append({"diameter_mm": round(diameter, 2), "mean_hu": round(mean, 1),
                        "elongation": round(elongation, 2)})  # fmt: skip
    return out


def _as_dict(stat: NoduleStat | Mapping) -> dict:
    return asdict(stat) if isinstance(stat, NoduleStat) else dict(stat)


def _finite(values: Sequence[float | None]) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return a[np.isfinite(a)]


SPEARMAN_MIN_RELIABLE = 10  # fewer nodules with a texture: the rank correlation is a small-sample figure


def spearman_note(n: int) -> str | None:
    """The caveat of a Spearman rho over ``n`` nodules (None from :data:`SPEARMAN_MIN_RELIABLE` up)."""
    if n >= SPEARMAN_MIN_RELIABLE:
        return None
    return f"over {n} nodule{'s' if n != 1 else ''} only: a small sample, the rho is unreliable"


def _nodule_figures(nodules: Sequence[dict]) -> dict:
    """Count, Spearman rho (and p) of texture vs mean HU, and share visible of a list of nodule dicts."""
    from scipy.stats import spearmanr

    with_texture = [n for n in nodules if n.get("texture") is not None and n.get("mean_hu") is not None]
    tex = [n["texture"] for n in with_texture]
    hu = [n["mean_hu"] for n in with_texture]
    rho = p = None
    if len(with_texture) >= 3 and len(set(tex)) > 1 and len(set(hu)) > 1:
        r = spearmanr(tex, hu)
        rho, p = float(r.statistic), float(r.pvalue)
    visible = [bool(n.get("visible")) for n in nodules]
    return {
        "nodules": len(nodules),
        "texture_hu_spearman_rho": rho,
        "texture_hu_spearman_p": p,
        "texture_hu_spearman_n": len(with_texture),
        "texture_hu_spearman_note": spearman_note(len(with_texture)) if rho is not None else None,
        "share_visible": float(np.mean(visible)) if visible else None,
    }


def fidelity_summary(per_case: Sequence[Mapping], size_split_mm: float = SIZE_SPLIT_MM) -> dict:
    """Aggregate per-case results ``{"lung_dice": float | None, "nodules": [NoduleStat | dict, ...]}``.

    Returns the number of cases and nodules, mean/std lung Dice, the mean over cases of the lung parenchyma's
    mean and std HU (``lung_mean_hu`` / ``lung_std_hu``, from the optional per-case keys of those names),
    the Spearman rho (and p) of texture vs nodule mean HU over all nodules with a texture (None with fewer
    than 3 nodules or a constant input), the
    share of visible nodules, the share of nodules mostly outside the lung (``inside_lung_fraction`` < 0.5)
    and any voxel outside, the mean nodule HU and count per texture, and count, rho and share visible of
    the nodules below and at or above ``size_split_mm`` (``by_size``; nodules without a size are left out).
    """
    dices = _finite([c.get("lung_dice") for c in per_case])
    parenchyma_mean = _finite([c.get("lung_mean_hu") for c in per_case])
    parenchyma_std = _finite([c.get("lung_std_hu") for c in per_case])
    nodules = [_as_dict(n) for c in per_case for n in c.get("nodules", [])]
    figures = _nodule_figures(nodules)
    rho, p = figures["texture_hu_spearman_rho"], figures["texture_hu_spearman_p"]
    with_texture = [n for n in nodules if n.get("texture") is not None and n.get("mean_hu") is not None]
    tex = [n["texture"] for n in with_texture]
    sized = [n for n in nodules if n.get("diameter_mm") is not None and math.isfinite(n["diameter_mm"])]
    by_size = {
        "split_mm": float(size_split_mm),
        "below": _nodule_figures([n for n in sized if n["diameter_mm"] < size_split_mm]),
        "at_or_above": _nodule_figures([n for n in sized if n["diameter_mm"] >= size_split_mm]),
    }
    by_texture: dict[str, dict[str, float | int]] = {}
    for t in sorted(set(tex)):
        values = [n["mean_hu"] for n in with_texture if n["texture"] == t]
        by_texture[str(t)] = {
            "n": len(values),
            "mean_hu": float(np.mean(values)),
            "std_hu": float(np.std(values)),
        }
    inside = _finite([n.get("inside_lung_fraction") for n in nodules])
    false_counts = _finite([len(c["false_nodules"]) for c in per_case if c.get("false_nodules") is not None])
    ring = _finite([n.get("surround_mean_hu") for n in sized if n["diameter_mm"] >= size_split_mm])
    cnr = _finite([n.get("cnr") for n in nodules])

    def share(mask: np.ndarray) -> float | None:
        return float(mask.mean()) if mask.size else None

    return {
        "cases": len(per_case),
        "cases_with_dice": int(dices.size),
        "lung_dice_mean": float(dices.mean()) if dices.size else None,
        "lung_dice_std": float(dices.std()) if dices.size else None,
        "lung_mean_hu": float(parenchyma_mean.mean()) if parenchyma_mean.size else None,
        "lung_std_hu": float(parenchyma_std.mean()) if parenchyma_std.size else None,
        "nodules": len(nodules),
        "texture_hu_spearman_rho": rho,
        "texture_hu_spearman_p": p,
        "texture_hu_spearman_note": figures["texture_hu_spearman_note"],
        "share_visible": figures["share_visible"],
        "share_outside_lung": share(inside < 0.5),
        "share_partly_outside_lung": share(inside < 1.0),
        "cnr_median": float(np.median(cnr)) if cnr.size else None,
        "ring_mean_hu": float(ring.mean()) if ring.size else None,  # 1-5 mm around nodules >= the split
        "false_nodules_per_case": float(false_counts.mean()) if false_counts.size else None,
        "mean_hu_by_texture": {t: v["mean_hu"] for t, v in by_texture.items()},
        "by_texture": by_texture,
        "by_size": by_size,
    }
