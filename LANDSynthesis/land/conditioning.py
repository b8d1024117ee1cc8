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

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .contract import MODES, WARNING_NODULE_OUTSIDE_LUNG  # noqa: F401 - MODES re-exported
from .errors import InputError
from .segment_style import TEXTURE_TAG
from .volume import Volume

LUNG_VALUE = 0.5
NODULE_VALUE = 5
TEXTURES = (1, 2, 3, 4, 5)
SCALE = 5.0

TEXTURE_FIX = f"supply it with --texture LABEL=T (T in 1..5) or the segment tag {TEXTURE_TAG}"


class NoduleOutsideLungWarning(UserWarning):
    """Nodule voxels lie outside the lung mask. ``counts`` maps label -> number of such voxels."""

    code = WARNING_NODULE_OUTSIDE_LUNG

    def __init__(self, message: str, counts: dict[int, int] | None = None) -> None:
        super().__init__(message)
        self.counts = dict(counts or {})


@dataclass
class MaskSet:
    """The anatomical input of one synthesis.

    ``lung``: nonzero = lung. ``nodules``: integer labels, 0 = none, 1..K = nodules. ``textures``: label ->
    texture 1..5. ``names``: label -> display name (e.g. the Slicer segment name).
    """

    lung: Volume | None = None
    nodules: Volume | None = None
    textures: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    @property
    def reference(self) -> Volume | None:
        """The volume that defines the geometry (the lung mask, else the nodule map; None without masks)."""
        return self.lung if self.lung is not None else self.nodules

    def labels(self) -> list[int]:
        """Sorted nodule labels present in the nodule map (nonzero voxels only)."""
        if self.nodules is None:
            return []
        return sorted(label_counts(self.nodules.array))

    def describe(self, label: int) -> str:
        """``label 2 ('Nodule 2')`` style text for messages."""
        name = self.names.get(label)
        return f"label {label}" + (f" ({name!r})" if name else "")


def label_counts(array: np.ndarray) -> dict[int, int]:
    """Voxel count per nonzero label of an integer-valued array (validate first with :func:`check_labels`)."""
    flat = array.ravel()
    if flat.dtype == bool:
        n = int(np.count_nonzero(flat))
        return {1: n} if n else {}
    if np.issubdtype(flat.dtype, np.integer) and flat.size and 0 <= flat.min() and flat.max() < 2**20:
        counts = np.bincount(flat)
        return {int(k): int(counts[k]) for k in np.flatnonzero(counts) if k != 0}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}


def _check_whole_numbers(a: np.ndarray, what: str, labels: str) -> None:
    """InputError unless ``a`` is numeric, finite and holds whole numbers (``labels``: what they mean)."""
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(
            f"{what} has voxel type {a.dtype}; fix: save it as an integer label image ({labels})"
        )
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            raise InputError(
                f"{what} contains {int((~finite).sum())} NaN/infinite voxels; "
                f"fix: save it as an integer label image ({labels})"
            )
        frac = a != np.round(a)
        if frac.any():
            bad = np.unique(a[frac])[:5]
            lo, hi = float(a.min()), float(a.max())
            if lo <= CT_LIKE_MINIMUM:
                raise InputError(_ct_like(what, lo, hi, labels))
            raise InputError(
                f"{what} has non-integer values (e.g. {', '.join(f'{v:g}' for v in bad)}); labels must be "
                f"whole numbers; fix: save it as an integer label image ({labels}), not an "
                "interpolated/resampled float image or a probability map"
            )


CT_LIKE_MINIMUM = -500  # a minimum this low is air in HU: the image is a CT
MAX_LUNG_LABELS = 8  # distinct non-zero values of a lung mask (left/right lungs, lobes, ...)
MAX_LUNG_LABEL = 255
LUNG_LABELS = "0 = background, 1 (or a few labels such as 1 = right, 2 = left lung) = lung"


def _ct_like(what: str, lo: float, hi: float, labels: str) -> str:
    kind = "a CT" if lo <= CT_LIKE_MINIMUM else "an image"
    return (
        f"{what} has values {lo:g}…{hi:g}: this looks like {kind}, not a mask; fix: give the mask file "
        f"({labels}), not the image it was drawn on"
    )


def check_lung_mask(lung: Volume, what: str = "lung mask") -> None:
    """Raise :class:`InputError` unless the lung mask holds 0 and at most :data:`MAX_LUNG_LABELS` whole-number
    labels 1..255 (every non-zero label is lung); the message names what was found (a CT, a probability map,
    NaN)."""
    a = lung.array
    if a.dtype == bool or a.size == 0:
        return
    _check_whole_numbers(a, what, LUNG_LABELS)
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > MAX_LUNG_LABEL:
        raise InputError(_ct_like(what, lo, hi, LUNG_LABELS))
    counts = np.bincount(a.ravel().astype(np.intp, copy=False), minlength=1)
    labels = np.flatnonzero(counts[1:]) + 1
    if labels.size > MAX_LUNG_LABELS:
        raise InputError(
            f"{what} has {labels.size} different non-zero values ({lo:g}…{hi:g}), more than the "
            f"{MAX_LUNG_LABELS} labels a lung mask holds: this looks like an image or a multi-organ "
            f"segmentation, not a lung mask; fix: give a lung mask ({LUNG_LABELS})"
        )


def check_labels(nodules: Volume, what: str = "nodule label map") -> None:
    """Raise :class:`InputError` unless every voxel is a non-negative integer label."""
    a = nodules.array
    if a.dtype == bool or a.size == 0:
        return
    _check_whole_numbers(a, what, "0 = none, 1..K = nodules")
    low = a.min()
    if low <= CT_LIKE_MINIMUM:
        raise InputError(_ct_like(what, float(low), float(a.max()), "0 = none, 1..K = nodules"))
    if low < 0:
        raise InputError(
            f"{what} has negative values (minimum {low:g}); labels must be 0 (no nodule) or 1..K; "
            "fix: relabel the image so that background is 0 and each nodule has a positive label"
        )


def check_texture(label: object, value: object) -> int:
    """Return ``value`` if it is an integer texture 1..5, else raise :class:`InputError` naming the label."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or not 1 <= int(value) <= 5:  # type: ignore[arg-type]
        which = f"label {label}" if isinstance(label, (int, np.integer)) else str(label)
        raise InputError(
            f"texture {value!r} of nodule {which} is invalid: a texture is an integer 1..5 "
            "(1 = ground-glass ... 5 = solid); fix: " + TEXTURE_FIX
        )
    return int(value)  # type: ignore[arg-type]


def check_label_key(label: object) -> int:
    """Return ``label`` if it is a positive integer nodule label, else raise :class:`InputError`."""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or int(label) < 1:
        raise InputError(
            f"texture given for nodule label {label!r}, which is not a positive integer; "
            "fix: use the nodule's label value 1..K, e.g. --texture 1=5"
        )
    return int(label)


def check_mode(mode: str) -> str:
    """Return ``mode`` if valid, else raise :class:`InputError` listing the valid modes."""
    if mode not in MODES:
        raise InputError(f"unknown conditioning mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


def check_geometry(masks: MaskSet) -> None:
    """Raise :class:`InputError` when the lung mask and nodule map differ in shape or geometry."""
    lung, nod = masks.lung, masks.nodules
    if lung is not None and nod is not None and not lung.same_geometry(nod):
        raise InputError(
            "the lung mask and the nodule map have different geometry:\n"
            f"  lung mask:  {lung.geometry_text()}, direction {tuple(round(d, 4) for d in lung.direction)}\n"
            f"  nodule map: {nod.geometry_text()}, direction {tuple(round(d, 4) for d in nod.direction)}\n"
            "fix: export both on the same grid (in Slicer: one segmentation, or export the label maps "
            "with the same reference volume), or resample one onto the other"
        )


def validate(masks: MaskSet, mode: str) -> list[int]:
    """Check masks, labels and textures for ``mode``; return the nodule labels present."""
    check_mode(mode)
    if masks.reference is None:
        raise InputError(
            "no masks given: the conditioning needs a lung mask and/or a nodule map for its geometry; "
            "fix: supply a mask, or generate unconditionally without masks"
        )
    if "lung" in mode and masks.lung is None:
        raise InputError(
            f"mode {mode!r} needs a lung mask but none was given; fix: supply a lung mask (a segment named "
            "'Lungs' in a .seg.nrrd, or a lung mask image), or use mode 'nodule' or 'none'"
        )
    check_geometry(masks)
    if "lung" in mode and not np.any(masks.lung.array):  # type: ignore[union-attr]
        raise InputError(
            f"the lung mask is empty (no lung voxels) but mode {mode!r} draws the CT around the lungs; fix: "
            "paint or load the lungs (a segment named 'Lungs'), or use mode 'nodule' or 'none'"
        )
    if masks.nodules is not None:
        check_labels(masks.nodules)
    labels = masks.labels()
    for label, texture in masks.textures.items():
        check_texture(check_label_key(label), texture)
    extra = sorted(set(masks.textures) - set(labels))
    if extra:
        present = ", ".join(masks.describe(k) for k in labels) or "none"
        raise InputError(
            f"texture given for nodule label(s) {', '.join(map(str, extra))} not present in the nodule map "
            f"(labels present: {present}); fix: remove those textures or correct the label numbers"
        )
    if mode == "nodule+lung+texture":
        missing = [k for k in labels if k not in masks.textures]
        if missing:
            raise InputError(
                f"mode {mode!r} needs a texture for every nodule, missing for "
                f"{', '.join(masks.describe(k) for k in missing)}; fix: {TEXTURE_FIX}"
            )
    return labels


def outside_lung_counts(masks: MaskSet) -> dict[int, int]:
    """Number of nodule voxels outside the lung mask, per label (empty without a lung mask or nodules)."""
    if masks.lung is None or masks.nodules is None:
        return {}
    nod = masks.nodules.array
    return label_counts(nod[(masks.lung.array == 0) & (nod != 0)])


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


def check_nodules_inside(masks: MaskSet, strict: bool = False) -> None:
    """:class:`NoduleOutsideLungWarning` (``strict``: :class:`InputError`) naming the nodules with voxels
    outside the lung mask and how many, on the masks' own grid."""
    check_geometry(masks)
    counts = outside_lung_counts(masks)
    if not counts:
        return
    totals = label_counts(masks.nodules.array)  # type: ignore[union-attr]
    parts = ", ".join(
        f"{masks.describe(k)}: {n} of {totals.get(k, n)} voxels" for k, n in sorted(counts.items())
    )
    message = (
        f"nodule voxels lie outside the lung mask ({parts}); the LAND paper shows that nodules outside the "
        "lungs give unrealistic images; fix: move or redraw those nodules inside the lungs"
    )
    if strict:
        raise InputError(message + " (this is an error because strict checking is on)")
    warnings.warn(NoduleOutsideLungWarning(message, counts), stacklevel=3)


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
            "land.io.to_model_grid)"
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


_PAIR = re.compile(r"^\s*([^=]*?)\s*=\s*(.*?)\s*$")


def parse_texture_overrides(text: str | Iterable[str] | None) -> dict[int, int]:
    """Parse ``"1=5,2=3"`` (or ``["1=5", "2=3"]``, e.g. repeated ``--texture``) into ``{1: 5, 2: 3}``.

    Items are separated by commas, semicolons or whitespace; a label given twice with different textures
    is an error.
    """
    if text is None:
        return {}
    chunks = [text] if isinstance(text, str) else list(text)
    chunks = [re.sub(r"\s*=\s*", "=", str(chunk)).strip() for chunk in chunks]
    items = [item for chunk in chunks for item in re.split(r"[,;\s]+", chunk) if item]
    result: dict[int, int] = {}
    for item in items:
        m = _PAIR.match(item)
        if not m or not m.group(1) or not m.group(2):
            raise InputError(
                f"texture override {item!r} is malformed; write LABEL=TEXTURE pairs such as '1=5,2=3' "
                "(label = nodule label 1..K, texture = integer 1..5)"
            )
        label_text, texture_text = m.groups()
        if not re.fullmatch(r"\+?\d+", label_text) or int(label_text) < 1:
            raise InputError(
                f"texture override {item!r}: nodule label {label_text!r} is not a positive integer; "
                "write LABEL=TEXTURE, e.g. '1=5'"
            )
        label = int(label_text)
        if not re.fullmatch(r"\+?\d+", texture_text):
            raise InputError(
                f"texture override {item!r}: texture {texture_text!r} of nodule label {label} is not an "
                "integer 1..5; write LABEL=TEXTURE, e.g. '1=5'"
            )
        texture = check_texture(label, int(texture_text))
        if label in result and result[label] != texture:
            raise InputError(
                f"texture overrides give nodule label {label} two textures ({result[label]} and {texture}); "
                "fix: give each label once"
            )
        result[label] = texture
    return result


def parse_texture_value(label: object, text: str) -> int:
    """Parse a texture stored as text (e.g. a segment tag value) strictly: '3' -> 3; '2.5', 'x' -> error."""
    text = str(text).strip()
    if not re.fullmatch(r"\+?\d+", text):
        raise InputError(f"texture {text!r} of nodule {label} is not an integer 1..5; fix: " + TEXTURE_FIX)
    return check_texture(label, int(text))
