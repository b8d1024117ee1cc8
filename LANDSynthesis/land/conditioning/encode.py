"""LAND's conditioning mask: lung and nodule masks -> a [0, 1] image, max-pooled to the latent grid.

Encoding (LAND paper): background 0, lung 0.5, nodule = its texture 1..5 (texture mode) or 5 (modes without
texture); everything divided by 5. Per mode:

============================  ======  =====================
mode                          lung    nodule (label k)
============================  ======  =====================
``none``                      0       0 (all zeros)
``nodule``                    0       1.0 (lung ignored)
``nodule+lung``               0.1     1.0
``nodule+lung+texture``       0.1     texture[k] / 5
============================  ======  =====================

Requirements: modes with ``lung`` need a lung mask. A nodule map is optional in every mode: without one
(or with an empty one) the nodule part is zero, i.e. a nodule-free CT; in ``nodule`` mode that gives the
same all-zero mask as ``none``. Every mode needs at least one mask, for the geometry.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..imaging.maskset import MaskSet, check_nodules_inside, validate
from ..imaging.volume import Volume
from ..interface.errors import InputError

LUNG_VALUE = 0.5
NODULE_VALUE = 5
SCALE = 5.0


def encode_conditioning(
    masks: MaskSet, mode: str, strict: bool = False, check_outside: bool = True
) -> Volume:
    """The conditioning mask (float32 in [0, 1]) on the masks' grid; see the module docstring.

    Nodule voxels outside the lung mask (checked whenever a lung mask is given and the mode uses nodules)
    trigger a :class:`NoduleOutsideLungWarning`, or an :class:`InputError` when ``strict``;
    ``check_outside=False`` for masks resampled from those the user painted, which were judged there
    (:func:`check_nodules_inside`; a resampled nodule can cross the lung's edge by a voxel).
    """
    labels = validate(masks, mode)
    ref = masks.reference
    assert ref is not None
    out = np.zeros(ref.array.shape, np.float32)
    if mode == "none":
        return Volume.like(ref, out)
    if "lung" in mode:
        out[masks.lung.array != 0] = np.float32(LUNG_VALUE / SCALE)  # type: ignore[union-attr]
    if masks.nodules is None or not labels:
        return Volume.like(ref, out)
    if check_outside:
        check_nodules_inside(masks, strict)
    nod = masks.nodules.array
    inside = nod != 0
    if mode == "nodule+lung+texture":
        lut = np.zeros(max(labels) + 1, np.float32)
        for k in labels:
            lut[k] = np.float32(masks.textures[k] / SCALE)
        out[inside] = lut[nod[inside].astype(np.intp)]
    else:
        out[inside] = np.float32(NODULE_VALUE / SCALE)
    return Volume.like(ref, out)


def pool_to_latent(
    cond: np.ndarray | torch.Tensor | Volume, factor: int = 4, nodule_fraction: bool = False
) -> torch.Tensor:
    """3D max-pool a conditioning mask ``factor`` times down to the latent grid -> float32 (N, 1, d, h, w).

    Accepts (D, H, W), (N, D, H, W) or (N, 1, D, H, W); D, H and W must be divisible by ``factor``. Max
    pooling keeps every nodule, however small, in the latent grid. With ``nodule_fraction`` a second
    channel holds the share of each latent voxel that nodules cover (average-pooled nodule occupancy,
    0..1), which tells the denoiser where inside an 8 mm latent voxel a nodule's edge lies -> (N, 2, d, h, w).
    """
    if isinstance(cond, Volume):
        cond = cond.array
    t = torch.as_tensor(np.ascontiguousarray(cond) if isinstance(cond, np.ndarray) else cond)
    if t.dim() == 3:
        t = t[None, None]
    elif t.dim() == 4:
        t = t[:, None]
    elif t.dim() != 5 or t.shape[1] != 1:
        raise InputError(
            f"conditioning mask shape {tuple(t.shape)} is not (D,H,W), (N,D,H,W) or (N,1,D,H,W); "
            "fix: pass a single-channel 3D mask"
        )
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise InputError(
            f"pooling factor {factor!r} must be a positive integer (the VAE compression, e.g. 4)"
        )
    spatial = tuple(t.shape[2:])
    if any(s % factor for s in spatial):
        raise InputError(
            f"conditioning mask size {spatial} (z, y, x) is not divisible by the latent factor {factor}; "
            f"fix: resample the masks to the model grid first (a size divisible by {factor}, e.g. with "
            "land.conditioning.model_grid.to_model_grid)"
        )
    t = t.to(torch.float32)
    pooled = t.contiguous() if factor == 1 else F.max_pool3d(t, kernel_size=factor, stride=factor)
    if not nodule_fraction:
        return pooled
    share = nodule_region(t).to(torch.float32)
    if factor > 1:
        share = F.avg_pool3d(share, kernel_size=factor, stride=factor)
    return torch.cat([pooled, share], dim=1)


def nodule_region(cond: torch.Tensor) -> torch.Tensor:
    """Where an encoded conditioning mask (any mode, any grid) marks a nodule: values above the lung's.

    Nodules encode as >= 1/5 (texture 1) and lungs as 0.1, so the threshold halfway between finds every
    nodule in every mode; in mode ``none`` (all zeros) nothing is found. A batched condition (N, C, ...)
    is read from channel 0, the encoded mask (further channels, e.g. the nodule fraction, follow it).
    """
    if cond.dim() == 5:
        cond = cond[:, :1]
    return cond > (LUNG_VALUE + 1.0) / (2 * SCALE)
