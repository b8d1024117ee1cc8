"""Lung masks from chest CT: a fast classical method (default) or the lungmask R231 U-Net.

Classical method (``segment_lungs(ct)``), all steps on a working grid of about 2 mm (block averages of the
CT, reoriented to LPS), the result brought back to the input grid by linear interpolation of the mask
(threshold 0.5):

1. **Body**: the largest 3D component of voxels above -500 HU, its holes filled slice by slice; air outside
   it (room air, the table's surroundings) is dropped.
2. **Air in the body**: voxels below -320 HU inside the body; 3D components, keeping the largest
   (lungs, usually joined to the airways) and any other with at least 20% of its volume (a lung that is
   not joined); smaller ones (bowel / stomach gas, oesophagus) are dropped.
3. **Trachea and main bronchi**: the trachea is found in the upper slices as a small round air region
   (7-34 mm equivalent diameter, lumen below -900 HU) within 30 mm of the body's left-right midline. From
   it the airway lumen is grown in 3D below -900 HU (lowered step by step to -990 HU when the region leaks
   into the parenchyma: more than 250 mL or 10% of the air). The trachea is followed slice by slice from
   the seed, up to the top of the scan and down to the carina: the first slice where it splits into two
   large parts (10 mm^2 each) that lead into separate branches going on downwards (10 mm, or as far as the
   grown airway goes). Other air joined to the airway, also in the seed's slice (a paratracheal air pocket
   or diverticulum, a lung apex reached through the bronchi), is no branch, so a scan whose top slice
   cuts the trachea below the larynx gets its carina where it is. The trachea and the airway within 40 mm
   (geodesic, along the airway) of it are removed, widened by one voxel for the wall's partial volume.
   Smaller intrapulmonary airways stay in the lungs. Without a trachea found (e.g. a scan starting below
   the carina) this step is skipped.
4. **Lungs**: 3D components of what remains with at least 3% of the largest's volume (in practice the
   two lungs, joined where they touch; they are not split).
5. **Filling**: a closing (radius ~6 mm) of each lung separately, so that juxtapleural nodules and
   vessels at the surface are included; holes filled per axial slice up to 4 cm^2 (vessels; larger 2D
   holes are mostly diaphragm domes seen from above) and in 3D up to 0.5 L, so vessels, nodules and
   tumours inside the lungs belong to the mask; the airway removed in step 3 is removed again.
   Limitation: a large tumour or consolidation against the pleura (not enclosed by aerated lung) is only
   partly included; the lungmask method handles such cases better.

Runs in a few seconds for a 512x512x300 CT on one core. The lungmask method (``method="lungmask"``)
needs the ``lungmask`` package and its R231 weights as a local file (lungmask downloads them at run time
otherwise, which fails offline).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..interface.errors import InputError
from .volume import Volume

__all__ = ["LUNGMASK_WEIGHTS_URL", "LungSegInfo", "lung_volume_litres", "read_ct", "segment_lungs", "summary"]

LUNGMASK_WEIGHTS_URL = "https://github.com/JoHof/lungmask/releases/download/v0.0/unet_r231-d5d2fc3d.pth"
WORK_SPACING_MM = 2.0
BODY_HU = -500.0
AIR_HU = -320.0
AIRWAY_HU = (-900.0, -930.0, -960.0, -990.0)
TRACHEA_DIAMETER_MM = (7.0, 34.0)
TRACHEA_MIDLINE_MM = 30.0
AIRWAY_LEAK_ML = 250.0
MAIN_BRONCHI_MM = 40.0
BRANCH_MM = 10.0
CLOSING_MM = 6.0
MAX_HOLE_2D_MM2 = 400.0
MAX_HOLE_3D_ML = 500.0
_INPLANE = np.zeros((3, 3, 3), bool)
_INPLANE[1] = ndi.generate_binary_structure(2, 1)


@dataclass
class LungSegInfo:
    """What the classical method found (also stored in the result's metadata, ``LAND.LungSeg.*``)."""

    method: str = "classical"
    trachea_found: bool = False
    airway_threshold_hu: float | None = None
    carina_z_mm: float | None = None
    components: int = 0
    volume_l: float = 0.0
    notes: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, str]:
        meta = {
            "LAND.LungSeg.Method": self.method,
            "LAND.LungSeg.VolumeL": f"{self.volume_l:.3f}",
            "LAND.LungSeg.Components": str(self.components),
        }
        if self.method == "classical":
            meta["LAND.LungSeg.TracheaFound"] = str(self.trachea_found).lower()
            if self.airway_threshold_hu is not None:
                meta["LAND.LungSeg.AirwayThresholdHU"] = f"{self.airway_threshold_hu:g}"
            if self.carina_z_mm is not None:
                meta["LAND.LungSeg.CarinaZmm"] = f"{self.carina_z_mm:.1f}"
        if self.notes:
            meta["LAND.LungSeg.Notes"] = "; ".join(self.notes)
        return meta


def lung_volume_litres(mask: Volume) -> float:
    """Volume of the nonzero voxels in litres."""
    return float(np.count_nonzero(mask.array)) * float(np.prod(mask.spacing)) / 1e6


def segment_lungs(ct: Volume, method: str = "classical", weights: str | os.PathLike | None = None) -> Volume:
    """Lung mask (uint8 0/1, the CT's geometry) of a chest CT in HU.

    ``method`` "classical" (see the module docstring) or "lungmask" (R231 U-Net; ``weights`` is the local
    ``.pth`` file; needs ``pip install lungmask``). Trachea and main bronchi are excluded; vessels and
    nodules inside the lungs are included. The result's metadata describes what was found.
    """
    if ct.array.ndim != 3:
        raise InputError(f"expected a 3D CT, got an array of shape {ct.array.shape}")
    if method == "classical":
        if weights is not None:
            raise InputError("weights are only used by method='lungmask'")
        mask, info = _classical(ct)
    elif method == "lungmask":
        mask, info = _lungmask(ct, weights)
    else:
        raise InputError(f"unknown lung segmentation method {method!r}; use 'classical' or 'lungmask'")
    out = Volume.like(ct, mask)
    info.volume_l = lung_volume_litres(out)
    out.metadata.update(info.metadata())
    return out


# --------------------------------------------------------------------------------------------- lungmask


def _lungmask(ct: Volume, weights: str | os.PathLike | None) -> tuple[np.ndarray, LungSegInfo]:
    where = (
        f"download the R231 weights ({LUNGMASK_WEIGHTS_URL}) once, keep the file anywhere (e.g. next to "
        "your models) and pass its path (--lung-weights PATH / weights=PATH)"
    )
    if weights is None:
        raise InputError(f"the lungmask method needs its weights as a local file: {where}")
    if not os.path.isfile(weights):
        raise InputError(f"lungmask weights not found: {weights}; {where}")
    try:
        import lungmask  # noqa: F401
    except ImportError as e:
        raise InputError(
            f"the lungmask method needs the lungmask package: pip install lungmask; then {where}"
        ) from e
    image = ct.to_sitk()
    try:
        from lungmask import LMInferer

        inferer = LMInferer(modelpath=str(weights), tqdm_disable=True)
        labels = inferer.apply(image)
    except ImportError:  # lungmask < 0.2.14: module-level API
        from lungmask import mask as lm_mask

        model = lm_mask.get_model("unet", "R231", modelpath=str(weights))
        labels = lm_mask.apply(image, model)
    labels = np.asarray(labels)
    if labels.shape != ct.array.shape:
        raise InputError(f"lungmask returned shape {labels.shape} for a CT of shape {ct.array.shape}")
    mask = (labels > 0).astype(np.uint8)
    info = LungSegInfo(method="lungmask", components=_count_components(mask))
    return mask, info


def _count_components(mask: np.ndarray) -> int:
    return int(ndi.label(mask)[1]) if mask.any() else 0


# -------------------------------------------------------------------------------------------- classical


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    """Ellipsoidal structuring element with per-axis radii (z, y, x) in voxels."""
    r = np.maximum(np.asarray(radius_vox, float), 0.5)
    n = np.floor(r).astype(int)
    zz, yy, xx = np.ogrid[-n[0] : n[0] + 1, -n[1] : n[1] + 1, -n[2] : n[2] + 1]
    return (zz / r[0]) ** 2 + (yy / r[1]) ** 2 + (xx / r[2]) ** 2 <= 1.0


def _components(mask: np.ndarray, structure: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the voxel count per label (index 0 = background, count 0)."""
    labels, n = ndi.label(mask, structure=structure)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    return labels, counts


def _fill_holes_2d(mask: np.ndarray, max_area_vox: float) -> np.ndarray:
    """Fill holes of each axial slice (axis 0) up to ``max_area_vox`` voxels."""
    padded = np.pad(mask, ((1, 1), (0, 0), (0, 0)))  # so that slices 0 and -1 are not "border" slices
    filled = ndi.binary_fill_holes(padded, structure=_INPLANE)[1:-1]
    holes = filled & ~mask
    if not holes.any():
        return mask
    labels, counts = _components(holes, _INPLANE)
    keep = counts <= max_area_vox
    keep[0] = False
    return mask | keep[labels]


def _fill_holes_3d(mask: np.ndarray, max_vox: float) -> np.ndarray:
    holes = ndi.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    labels, counts = _components(holes)
    keep = counts <= max_vox
    keep[0] = False
    return mask | keep[labels]


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, counts = _components(mask)
    if len(counts) < 2:
        return mask
    return labels == int(np.argmax(counts))


def _work_image(ct: Volume) -> tuple[sitk.Image, sitk.Image]:
    """The CT as float32 (input grid) and on the ~2 mm working grid, reoriented to LPS (z superior)."""
    image = sitk.Cast(ct.to_sitk(), sitk.sitkFloat32)
    try:
        oriented = sitk.DICOMOrient(image, "LPS")
    except RuntimeError:  # oblique directions DICOMOrient cannot map: keep as is
        oriented = image
    factors = [max(1, int(round(WORK_SPACING_MM / s))) for s in oriented.GetSpacing()]
    factors = [min(f, max(1, n // 16)) for f, n in zip(factors, oriented.GetSize(), strict=True)]
    work = sitk.BinShrink(oriented, factors) if any(f > 1 for f in factors) else oriented
    return image, work


def _find_trachea(
    hu: np.ndarray, air: np.ndarray, body: np.ndarray, spacing_zyx: np.ndarray
) -> tuple[int, int, int] | None:
    """A voxel (z, y, x) in the trachea lumen: searched from the top slice down over the upper 45% of
    the air's z extent; the first slice with a round, lumen-dark air region near the body midline."""
    zs = np.flatnonzero(air.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    top, bottom = int(zs[-1]), int(zs[0])
    stop = top - int(math.ceil(0.45 * (top - bottom + 1)))
    pix_mm2 = float(spacing_zyx[1] * spacing_zyx[2])
    dmin, dmax = TRACHEA_DIAMETER_MM
    for z in range(top, max(stop, bottom - 1), -1):
        lumen = air[z] & (hu[z] < AIRWAY_HU[0])
        if not lumen.any():
            continue
        cols = np.flatnonzero(body[z].any(axis=0))
        if cols.size == 0:
            continue
        mid_x = 0.5 * (cols[0] + cols[-1])
        labels, _ = ndi.label(lumen)
        best = None
        for lab, sl in enumerate(ndi.find_objects(labels), start=1):
            region = labels[sl] == lab
            area = float(region.sum()) * pix_mm2
            diam = 2.0 * math.sqrt(area / math.pi)
            if not dmin <= diam <= dmax:
                continue
            h = (sl[0].stop - sl[0].start) * spacing_zyx[1]
            w = (sl[1].stop - sl[1].start) * spacing_zyx[2]
            if max(h, w) > 2.2 * diam or area < 0.45 * h * w:  # not round / compact
                continue
            yy, xx = np.nonzero(region)
            cx = xx.mean() + sl[1].start
            off = abs(cx - mid_x) * spacing_zyx[2]
            if off > TRACHEA_MIDLINE_MM:
                continue
            # the seed must continue downwards (a tube), not be a bubble
            if z - 1 >= 0 and not (air[z - 1][yy + sl[0].start, xx + sl[1].start]).any():
                continue
            if best is None or off < best[0]:
                iy, ix = int(yy[len(yy) // 2]) + sl[0].start, int(xx[len(xx) // 2]) + sl[1].start
                best = (off, (z, iy, ix))
        if best is not None:
            return best[1]
    return None


def _grow_airway(
    hu: np.ndarray, air: np.ndarray, seed: tuple[int, int, int], voxel_ml: float
) -> tuple[np.ndarray | None, float | None]:
    """Airway lumen connected to ``seed`` below the first non-leaking threshold (None if all leak)."""
    limit = min(AIRWAY_LEAK_ML, 0.1 * air.sum() * voxel_ml)
    for threshold in AIRWAY_HU:
        lumen = air & (hu < threshold)
        if not lumen[seed]:
            continue
        labels, _ = ndi.label(lumen)
        region = labels == labels[seed]
        if region.sum() * voxel_ml <= limit:
            return region, threshold
    return None, None


def _trunk_parts(airway: np.ndarray, trunk_next: np.ndarray, z: int) -> list[np.ndarray]:
    """The 2D regions of ``airway[z]`` that touch ``trunk_next`` (the trachea in the neighbouring slice)."""
    labels, _ = ndi.label(airway[z])
    return [labels == lab for lab in np.unique(labels[trunk_next & (labels > 0)])]


def _is_split(
    airway: np.ndarray, parts: list[np.ndarray], z: int, min_area: float, branch_slices: int
) -> bool:
    """Whether two large ``parts`` of slice ``z`` lead into separate airway branches that both go on
    ``branch_slices`` slices further down, or as far as the grown airway goes (on thick slices it loses the
    bronchi soon after the carina); a blind pocket or a ring that joins again below is no split."""
    large = [p for p in parts if p.sum() >= min_area]
    if len(large) < 2:
        return False
    below, _ = ndi.label(airway[: z + 1])
    bottom = int(np.flatnonzero(below.any(axis=(1, 2)))[0])
    need = min(branch_slices, z - bottom - 1)
    branches = set()
    for part in large:
        lab = int(np.bincount(below[z][part]).argmax())
        if lab and z - int(np.flatnonzero((below == lab).any(axis=(1, 2)))[0]) >= need:
            branches.add(lab)
    return len(branches) >= 2


def _main_airways(
    airway: np.ndarray, seed: tuple[int, int, int], spacing_zyx: np.ndarray
) -> tuple[np.ndarray, int | None]:
    """Trachea + main bronchi part of a grown airway, and the carina slice (None when not found).

    The trachea is followed slice by slice from the seed's 2D region, up to the airway's top and down to the
    carina: the first slice where it splits into two large branches that both go on downwards. Air joined
    to the airway elsewhere in the seed's slice (a lung apex reached through the bronchi, a paratracheal
    air pocket) is not taken for a branch.
    """
    z0 = seed[0]
    labels, _ = ndi.label(airway[z0])
    trunk = np.zeros_like(airway)
    trunk[z0] = labels == labels[seed[1:]]
    for z in range(z0 + 1, airway.shape[0]):  # the trachea above the seed (z grows superior)
        parts = _trunk_parts(airway, trunk[z - 1], z)
        if not parts:
            break
        trunk[z] = np.logical_or.reduce(parts)
    min_area = 10.0 / float(spacing_zyx[1] * spacing_zyx[2])
    branch_slices = max(1, int(math.ceil(BRANCH_MM / float(spacing_zyx[0]))))
    carina = None
    for z in range(z0 - 1, -1, -1):
        parts = _trunk_parts(airway, trunk[z + 1], z)
        if not parts:
            break
        trunk[z] = np.logical_or.reduce(parts)
        if _is_split(airway, parts, z, min_area, branch_slices):
            carina = z
            break
    if carina is None:
        return airway.copy(), None
    sl = ndi.find_objects(airway.astype(np.uint8))[0]
    sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
    tube = airway[sl]
    reached = trunk[sl]  # the trachea down to the carina
    # geodesic growth along the airway, alternating 6- and 26-neighbourhoods (~Euclidean steps)
    step = float(np.mean(spacing_zyx))
    struct6 = ndi.generate_binary_structure(3, 1)
    struct26 = ndi.generate_binary_structure(3, 3)
    for i in range(int(math.ceil(MAIN_BRONCHI_MM / step))):
        grown = ndi.binary_dilation(reached, struct26 if i % 2 else struct6) & tube
        if np.array_equal(grown, reached):
            break
        reached = grown
    out = np.zeros_like(airway)
    out[sl] = reached
    return out, carina


def _classical(ct: Volume) -> tuple[np.ndarray, LungSegInfo]:
    info = LungSegInfo()
    image, work = _work_image(ct)
    hu = sitk.GetArrayFromImage(work)  # [z, y, x], z superior
    spacing = np.asarray(work.GetSpacing()[::-1], float)  # z, y, x
    voxel_ml = float(np.prod(spacing)) / 1000.0

    body = _largest(hu > BODY_HU)
    body = _fill_holes_2d(body, np.inf)
    air = (hu < AIR_HU) & body
    labels, counts = _components(air)
    if counts.size < 2 or counts.max() * voxel_ml < 50.0:
        info.notes.append("no lung-sized air region inside the body")
        return np.zeros(ct.array.shape, np.uint8), info
    keep = counts >= 0.2 * counts.max()
    keep[0] = False
    air = keep[labels]

    removed = np.zeros_like(air)
    seed = _find_trachea(hu, air, body, spacing)
    if seed is not None:
        airway, threshold = _grow_airway(hu, air, seed, voxel_ml)
        if airway is None:
            info.notes.append("airway region growing leaked at every threshold; airway kept")
        else:
            info.trachea_found = True
            info.airway_threshold_hu = threshold
            removed, carina = _main_airways(airway, seed, spacing)
            if carina is None:
                info.notes.append("carina not found: the whole grown airway was removed")
            else:
                z_mm = work.TransformIndexToPhysicalPoint((0, 0, int(carina)))[2]
                info.carina_z_mm = float(z_mm)
    else:
        info.notes.append("trachea not found; airways not removed")
    wall = ndi.binary_dilation(removed, ndi.generate_binary_structure(3, 1)) if removed.any() else removed
    lungs = air & ~wall

    labels, counts = _components(lungs)
    if counts.size < 2 or not counts.any():
        info.notes.append("nothing left after airway removal")
        return np.zeros(ct.array.shape, np.uint8), info
    kept = {int(lab) for lab in np.flatnonzero(counts >= 0.03 * counts.max())}
    radius = CLOSING_MM / spacing
    pad = tuple(int(np.ceil(r)) + 1 for r in radius)
    ball = _ball(radius)
    out = np.zeros_like(lungs)
    for lab, sl in zip(range(1, len(counts)), ndi.find_objects(labels), strict=False):
        if lab not in kept or sl is None:
            continue
        part = np.pad(labels[sl] == lab, [(p, p) for p in pad])
        closed = ndi.binary_closing(part, ball)
        closed = closed[tuple(slice(p, -p) for p in pad)]
        out[sl] |= closed
    out = _fill_holes_2d(out, MAX_HOLE_2D_MM2 / (spacing[1] * spacing[2]))
    out = _fill_holes_3d(out, MAX_HOLE_3D_ML / voxel_ml)
    out &= ~removed
    out &= body
    labels, counts = _components(out)
    keep = counts >= 0.03 * max(int(counts.max()), 1)
    keep[0] = False
    out = keep[labels]
    info.components = int(keep.sum())

    return _to_input_grid(out, work, image), info


def _to_input_grid(mask: np.ndarray, work: sitk.Image, image: sitk.Image) -> np.ndarray:
    """A working-grid mask on the input grid: linear interpolation, threshold 0.5, only within the mask's
    bounding box (plus a margin)."""
    result = np.zeros(image.GetSize()[::-1], np.uint8)
    objects = ndi.find_objects(mask.astype(np.uint8))
    if not objects or objects[0] is None:
        return result
    box = objects[0]
    corners = [
        work.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
        for z in (box[0].start - 1, box[0].stop)
        for y in (box[1].start - 1, box[1].stop)
        for x in (box[2].start - 1, box[2].stop)
    ]
    index = np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    lo = np.maximum(np.floor(index.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 2, np.array(image.GetSize()))
    if np.any(hi <= lo):
        return result
    reference = sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])
    small = sitk.GetImageFromArray(mask.astype(np.float32))
    small.CopyInformation(work)
    back = sitk.Resample(small, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    result[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] = sitk.GetArrayViewFromImage(back) >= 0.5
    return result


# ------------------------------------------------------------------------------------------ land lungs

MASK_OUTPUTS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd")


def read_ct(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """A CT in HU from a DICOM folder (:func:`land.imaging.dicom.read_dicom_series`) or an image file
    (:func:`land.imaging.io.read_volume`: NIfTI, NRRD, MetaImage)."""
    if Path(path).is_dir():
        from .dicom import read_dicom_series

        return read_dicom_series(path, series_uid).volume
    if series_uid is not None:
        raise InputError(f"--series picks a series in a DICOM folder; {path} is a file; fix: drop --series")
    from .io import read_volume

    return read_volume(path)


def summary(mask: Volume) -> str:
    """One line: the lung volume, parts, and the carina (classical method) from the mask's metadata."""
    meta = mask.metadata
    parts = int(meta.get("LAND.LungSeg.Components", 0))
    text = f"lungs {lung_volume_litres(mask):.2f} L in {parts} part{'s' if parts != 1 else ''}"
    if meta.get("LAND.LungSeg.Method") == "lungmask":
        return text + " (lungmask R231)"
    if "LAND.LungSeg.CarinaZmm" in meta:
        text += f", carina found at z {meta['LAND.LungSeg.CarinaZmm']} mm (trachea and main bronchi left out)"
    notes = meta.get("LAND.LungSeg.Notes")
    if "LAND.LungSeg.CarinaZmm" not in meta and "carina not found" not in (notes or ""):
        text += ", carina not found"
    return text + (f" ({notes})" if notes else "")


def register(sub: Any, command: Callable) -> None:
    """Add ``land lungs`` to the CLI."""
    p = sub.add_parser(
        "lungs",
        help="segment the lungs of a chest CT (the lung mask to paint nodules on and generate from)",
        description="Segment the lungs of a chest CT in HU, as the Slicer module's 'Lungs from CT' does: "
        "trachea and main bronchi left out, vessels and nodules inside the lungs included. Writes a Slicer "
        "segmentation (.seg.nrrd, one 'Lungs' segment: add nodule segments in 3D Slicer, then land generate "
        "--mask FILE) or a lung label image (.nii.gz, .nii, .nrrd: 1 lung, 0 elsewhere).",
        epilog="examples:\n  land lungs DICOM_FOLDER --out lungs.seg.nrrd\n"
        "  land lungs ct.nii.gz --out lungs.nii.gz --method lungmask --lung-weights unet_r231-d5d2fc3d.pth\n",
    )
    p.add_argument("ct", help="the CT: a DICOM folder (one series) or a NIfTI / NRRD / MetaImage file")
    p.add_argument("--out", required=True, help="lung mask to write: .seg.nrrd, .nii.gz, .nii or .nrrd")
    p.add_argument(
        "--method",
        choices=["classical", "lungmask"],
        default="classical",
        help="classical: thresholds and the airway tree (seconds, no download); lungmask: the R231 U-Net "
        "(pip install lungmask; needs --lung-weights)",
    )
    p.add_argument("--lung-weights", help=f"lungmask R231 weights file ({LUNGMASK_WEIGHTS_URL})")
    p.add_argument("--series", help="the series UID to read when the DICOM folder holds several")

    @command("lungs")
    def cmd_lungs(args: argparse.Namespace) -> int:
        from .atomic import preflight_outputs
        from .io import derived_record, write_mask, write_seg_nrrd
        from .maskset import MaskSet

        out = Path(args.out)
        if not out.name.lower().endswith(MASK_OUTPUTS):
            raise InputError(
                f"--out {out} must end in {', '.join(MASK_OUTPUTS)}; fix: name it lungs.seg.nrrd (a Slicer "
                "segmentation to paint nodules in) or lungs.nii.gz (a label image)"
            )
        preflight_outputs({"CT": args.ct, "--lung-weights": args.lung_weights}, files={"--out": out})
        ct = read_ct(args.ct, args.series)
        mask = segment_lungs(ct, args.method, args.lung_weights)
        if not mask.array.any():
            notes = mask.metadata.get("LAND.LungSeg.Notes")
            raise InputError(
                f"no lungs found in {args.ct}" + (f" ({notes})" if notes else "") + "; fix: give a chest CT "
                "in HU (air about -1000, soft tissue 0..100), or paint the lungs in 3D Slicer; nothing was "
                "written"
            )
        source = Path(args.ct).name
        provenance = derived_record(
            f"Lung mask of the real CT {source} (land lungs, {args.method}), not synthetic",
            created_by="land lungs",
            source=source,
            method=args.method,
        )
        if out.name.lower().endswith(".seg.nrrd"):
            write_seg_nrrd(out, MaskSet(lung=mask), provenance)
        else:
            write_mask(out, mask, mask.metadata, provenance)
        print(f"wrote {out}: {summary(mask)}")
        return 0
