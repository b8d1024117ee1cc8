"""Matched pairs: the same synthetic patient with and without a chosen nodule.

Radiology teaching compares a finding with the same anatomy without it. :func:`generate_pair` samples the
CT with every nodule, recording the latent the U-Net sees at every step; then samples it again, same seed,
from the masks without the chosen nodule (its voxels become lung), keeping the recorded latent outside the
nodule's latent neighbourhood (the latent voxels it touches, dilated by ``margin`` voxels) at every step, so
only that neighbourhood is denoised anew, in context (:class:`land.sampling.diffusion.KnownLatent`). Both
latents are
decoded with their own masks. The decoder reaches several latent voxels (measured on the demo model: up to
hundreds of HU within 3 latent voxels of the changed ones, a few HU beyond 5), so the CT without the nodule
blends into the first CT over ``band`` latent voxels beyond the regenerated ones and equals it beyond them
(``max_abs_hu_beyond_margin`` 0; ``max_abs_hu_beyond_margin_decoded``: what the decoders alone gave there).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..imaging.maskset import MaskSet
from ..imaging.volume import Volume
from ..interface.errors import InputError

__all__ = ["PAIR_MARGIN", "generate_pair", "without_nodule"]

PAIR_MARGIN = 2  # latent voxels around the nodule's latent footprint that are denoised anew
PAIR_BAND = 3  # latent voxels beyond them over which the new CT blends into the first (the decoder's reach)


def without_nodule(masks: MaskSet, label: int) -> MaskSet:
    """The masks with nodule ``label`` removed: its voxels become lung (its texture and name dropped)."""
    if masks.nodules is None or label not in masks.labels():
        present = ", ".join(str(k) for k in masks.labels()) or "none"
        raise InputError(f"--pair {label}: the masks have no nodule {label} (nodules: {present}); name one")
    spot = masks.nodules.array == label
    kept = np.where(spot, 0, masks.nodules.array).astype(masks.nodules.array.dtype)
    nodules = masks.nodules.with_array(kept)
    lung = masks.lung
    if lung is not None:
        if lung.same_geometry(masks.nodules):
            lung = lung.with_array(np.where(spot, 1, lung.array).astype(lung.array.dtype))
        else:
            raise InputError("--pair needs the lung mask and the nodule map on one grid; fix: resample one")
    textures = {k: v for k, v in masks.textures.items() if k != label}
    names = {k: v for k, v in masks.names.items() if k != label}
    return replace(masks, lung=lung, nodules=nodules, textures=textures, names=names)


def _footprint(
    grid_masks: MaskSet, label: int, compression: int, margin: int, band: int
) -> tuple[np.ndarray, np.ndarray]:
    """(latent voxels to denoise anew (bool d, h, w): those the nodule touches, dilated by ``margin``;
    image-grid weight of the new CT: 1 on them, falling linearly to 0 over ``band`` latent voxels beyond)."""
    assert grid_masks.nodules is not None
    spot = grid_masks.nodules.array == label
    if not spot.any():
        raise InputError(f"nodule {label} is not on the model grid (outside its field of view)")
    d, h, w = (n // compression for n in spot.shape)
    blocks = spot[: d * compression, : h * compression, : w * compression]
    touched = blocks.reshape(d, compression, h, compression, w, compression).any(axis=(1, 3, 5))
    region = ndi.binary_dilation(touched, np.ones((3, 3, 3), bool), iterations=margin)
    region_img = np.kron(region.astype(np.uint8), np.ones((compression,) * 3, np.uint8)) > 0
    dist = ndi.distance_transform_edt(~region_img)  # image voxels from the regenerated region
    weight = np.clip(1.0 - dist / float(band * compression), 0.0, 1.0)
    return region, weight.astype(np.float32)


def generate_pair(pipe: Any, masks: MaskSet, label: int, margin: int = PAIR_MARGIN, band: int = PAIR_BAND,
                  **options: Any) -> tuple[Volume, Volume, dict[str, Any]]:  # fmt: skip
    """(CT with every nodule, the same CT without nodule ``label``, figures) on the model grid, or both in
    the masks' geometry with ``match_input=True``. ``options``: as :meth:`LANDPipeline.generate`."""
    import torch

    from .diffusion import KnownLatent

    if isinstance(label, bool) or not isinstance(label, int | np.integer) or label < 1:
        raise InputError(f"--pair takes a nodule label (1, 2, ...), got {label!r}")
    if not isinstance(margin, int) or margin < 1:
        raise InputError(f"the pair margin must be at least 1 latent voxel, got {margin!r}")
    match_input = bool(options.pop("match_input", False))
    options.pop("known", None)
    reduced = without_nodule(masks, int(label))
    grid_masks, ref = pipe.model_grid_masks(masks, options.get("fit", "crop"))
    grid_reduced, _ = pipe.model_grid_masks(reduced, options.get("fit", "crop"))
    compression = pipe.config.vae.compression
    region, weight = _footprint(grid_masks, int(label), compression, margin, band)
    recorded = KnownLatent.record()
    with_ct = pipe.generate(grid_masks, known=recorded, **options)
    keep = torch.from_numpy(~region)[None, None]
    without_ct = pipe.generate(grid_reduced, known=KnownLatent.keep(recorded, keep), **options)
    a, b = with_ct.array.astype(np.float32), without_ct.array.astype(np.float32)
    beyond = weight == 0
    decoded_gap = float(np.abs(a - b)[beyond].max()) if beyond.any() else 0.0
    blended = np.rint(weight * b + (1.0 - weight) * a).astype(np.int16)
    gap = float(np.abs(blended.astype(np.float32) - a)[beyond].max()) if beyond.any() else 0.0
    spacing = float(max(ref.spacing))
    figures = {
        "nodule": int(label),
        "margin_latent_voxels": margin,
        "margin_mm": round((margin + band) * compression * spacing, 1),
        "regenerated_share": round(float(region.mean()), 5),
        "max_abs_hu_beyond_margin_decoded": round(decoded_gap, 1),
        "max_abs_hu_beyond_margin": round(gap, 1),
        "max_abs_hu_near_nodule": round(float(np.abs(a - blended)[weight > 0].max()), 1),
    }
    meta = dict(without_ct.metadata)
    meta.update({"description": meta["description"] + f" without nodule {label} (matched pair)",
                 "pair_of": with_ct.metadata["description"], "pair_removed_nodule": str(label),
                 "pair_identical_beyond_mm": str(figures["margin_mm"])})  # fmt: skip
    without_ct = without_ct.with_array(blended)
    without_ct.metadata = meta
    if match_input and masks.reference is not None:
        from ..conditioning.model_grid import from_model_grid

        hu_min = int(pipe.config.intensity["hu_min"])
        pair = []
        for ct in (with_ct, without_ct):
            back = from_model_grid(ct, masks.reference, default_hu=hu_min)
            back.metadata = ct.metadata
            pair.append(back)
        with_ct, without_ct = pair
    return with_ct, without_ct, figures
