"""The user's masks as one object, and every check on them: :class:`MaskSet`, its lung mask, nodule labels,
textures, geometry and the nodules-inside-the-lungs rule, and the ``--texture`` parser.

Numpy only. Putting masks onto the model grid and encoding them as the condition the networks read is
:mod:`land.conditioning`'s job.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..interface.contract import MODES, WARNING_NODULE_OUTSIDE_LUNG  # noqa: F401 - MODES re-exported
from ..interface.errors import InputError
from ..interface.masks import outside_lung
from ..interface.segment_style import TEXTURE_TAG
from .volume import Volume

TEXTURES = (1, 2, 3, 4, 5)

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
    """Number of nodule voxels outside the lung mask, per label (empty without a lung mask or nodules).

    A nodule voxel that touches the lung (a lung voxel among its 26 neighbours) is not outside: painting at
    the lung's border is ambiguous by a voxel (:func:`land.interface.masks.outside_lung`)."""
    if masks.lung is None or masks.nodules is None:
        return {}
    nod = masks.nodules.array
    return label_counts(nod[outside_lung(masks.lung.array, nod)])


def check_nodules_inside(masks: MaskSet, strict: bool = False) -> None:
    """:class:`NoduleOutsideLungWarning` (``strict``: :class:`InputError`) naming the nodules with voxels
    outside the lung mask and how many, on the masks' own grid; voxels touching the lung (within one voxel)
    count as inside (:func:`outside_lung_counts`)."""
    check_geometry(masks)
    counts = outside_lung_counts(masks)
    if not counts:
        return
    totals = label_counts(masks.nodules.array)  # type: ignore[union-attr]
    parts = ", ".join(
        f"{masks.describe(k)}: {n} of {totals.get(k, n)} voxels" for k, n in sorted(counts.items())
    )
    message = (
        f"nodule voxels lie outside the lung mask ({parts}; voxels touching the lung count as inside); "
        "the LAND paper shows that nodules outside the "
        "lungs give unrealistic images; fix: move or redraw those nodules inside the lungs"
    )
    if strict:
        raise InputError(message + " (this is an error because strict checking is on)")
    warnings.warn(NoduleOutsideLungWarning(message, counts), stacklevel=3)


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
