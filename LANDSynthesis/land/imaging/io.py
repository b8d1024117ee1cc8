"""Reading and writing volumes and masks: Slicer segmentations, label maps, CT images and provenance.

Masks come either as one Slicer segmentation (``.seg.nrrd``: segments named ``Lung...`` form the lung mask,
every other segment is a nodule, numbered 1..K in segment order, its texture in the segment tag
``LAND.Texture``) or as a lung mask image plus a nodule label image. Outputs are marked SYNTHETIC in their
header and carry their provenance (NRRD key/value fields; for NIfTI the ``descrip`` field and a JSON sidecar).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import threading
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..interface import __version__
from ..interface.contract import WARNING_SEGMENTATION
from ..interface.errors import Cancelled, InputError
from ..interface.masks import is_lung_segment_name, restore_lung
from ..interface.segment_style import LUNG_COLOR, LUNG_TERMINOLOGY, NODULE_COLORS, NODULE_TERMINOLOGY
from .atomic import atomic_path, atomic_write_text, check_target, write_error
from .image_data import check_image_data, check_image_file
from .maskset import (
    TEXTURE_TAG,
    MaskSet,
    check_geometry,
    check_label_key,
    check_labels,
    check_lung_mask,
    check_texture,
    label_counts,
    parse_texture_overrides,
    parse_texture_value,
)
from .volume import Volume

PathLike = str | os.PathLike
READ_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
NIFTI_DESCRIP_LEN = 79  # the 80-byte NIfTI descrip field, NUL-terminated

_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(\w+)$")


class SegmentationWarning(UserWarning):
    """Something in a segmentation file was ignored or resolved (empty segment, overlapping nodules)."""

    code = WARNING_SEGMENTATION


# ----------------------------------------------------------------------------------------------- reading


def _extension(path: Path, known: Iterable[str]) -> str | None:
    name = path.name.lower()
    return next((ext for ext in known if name.endswith(ext)), None)


def _check_input_file(path: PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}; fix: check the path")
    if not p.is_file():
        raise InputError(f"{what} {p} is not a file; fix: give the path of an image file")
    if _extension(p, READ_EXTENSIONS) is None:
        raise InputError(
            f"{what} {p} has an unsupported file type; fix: use one of {', '.join(READ_EXTENSIONS)}"
        )
    return p


def _read_image(path: PathLike, what: str = "file") -> sitk.Image:
    p = _check_input_file(path, what)
    check_image_file(p)
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # our messages, never ITK's C++ warnings
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        if re.search(r"zero-valued spacing|spacing \(0\)", str(e), re.IGNORECASE):
            raise InputError(
                f"{what} {p} has a zero-length axis (spacing 0 in its header: {detail}): the image has no "
                "extent along it and its geometry cannot be known; fix: write the real voxel size into the "
                "header (e.g. set the spacing in 3D Slicer's Volumes module and save the file again)"
            ) from e
        raise InputError(
            f"could not read {what} {p}: {detail}; fix: check that it is a valid NIfTI/NRRD/MHA image"
        ) from e
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)


def _as_3d(image: sitk.Image, path: PathLike, what: str = "file") -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{what} {path} has {image.GetNumberOfComponentsPerPixel()} values per voxel (a vector/RGB "
            "image); fix: give a scalar 3D volume"
        )
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(
            f"{what} {path} is a {image.GetDimension()}D image of size {image.GetSize()}, not a 3D volume; "
            "fix: give a 3D volume (one CT or mask, not a slice or a time series)"
        )
    return image


def read_volume(path: PathLike) -> Volume:
    """Read a 3D scalar image: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd).

    Raises :class:`InputError` for a missing, unreadable or non-3D file. Header metadata is kept.
    """
    image = _as_3d(_read_image(path), path)
    return Volume.from_sitk(image, metadata=True)


def _parse_tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in text.split("|"):
        if ":" in item:
            key, value = item.split(":", 1)
            tags[key.strip()] = value.strip()
    return tags


def _int_field(fields: Mapping[str, str], key: str, default: int, where: str) -> int:
    text = fields.get(key, str(default)).strip()
    if not re.fullmatch(r"-?\d+", text):
        raise InputError(f"{where} has an invalid {key} {text!r}; fix: re-save the segmentation in 3D Slicer")
    return int(text)


def _segments(image: sitk.Image) -> dict[int, dict[str, str]]:
    segments: dict[int, dict[str, str]] = {}
    for key in image.GetMetaDataKeys():
        m = _SEGMENT_KEY.match(key)
        if m:
            segments.setdefault(int(m.group(1)), {})[m.group(2)] = image.GetMetaData(key)
    return segments


def _masks_from_segmentation(image: sitk.Image, path: PathLike, overrides: Mapping[int, int]) -> MaskSet:
    segments = _segments(image)
    if image.GetDimension() != 3:
        raise InputError(f"segmentation {path} is {image.GetDimension()}D; fix: re-save it in 3D Slicer")
    layers = image.GetNumberOfComponentsPerPixel()
    voxels = sitk.GetArrayViewFromImage(image)  # (z, y, x) or (z, y, x, layers)
    shape = voxels.shape[:3]
    template = Volume(
        np.zeros((1, 1, 1), np.uint8), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    )
    lung = np.zeros(shape, bool)
    nodules = np.zeros(shape, np.uint16)
    textures: dict[int, int] = {}
    names: dict[int, str] = {}
    has_lung = False
    lung_layers: set[int] = set()
    nodule_layer: dict[int, int] = {}
    covered_by: dict[int, set[int]] = {}
    holder: dict[tuple[int, int], str] = {}  # (layer, label value) -> the first segment that holds it
    seen: set[tuple[int, int]] = set()
    for index in sorted(segments):
        fields = segments[index]
        name = fields.get("Name") or fields.get("ID") or f"Segment {index}"
        where = f"segment {name!r} of {path}"
        value = _int_field(fields, "LabelValue", 1, where)
        layer = _int_field(fields, "Layer", 0, where)
        if not 0 <= layer < layers:
            raise InputError(
                f"{where} is in layer {layer} but the file has {layers} layer(s); "
                "fix: re-save the segmentation in 3D Slicer"
            )
        other = holder.setdefault((layer, value), name)
        if (layer, value) in seen and not (is_lung_segment_name(other) and is_lung_segment_name(name)):
            # two lung segments may share a value (both are lung); a nodule cannot share one
            raise InputError(
                f"segments {other!r} and {name!r} of {path} share label value {value} in layer {layer}, so "
                "they are the same voxels and which of them each voxel belongs to cannot be told (3D Slicer "
                "gives every segment of a layer its own value: the header was edited or written by another "
                "tool); fix: correct the Segment<N>_LabelValue fields of the header, or open the file in 3D "
                "Slicer, delete or repaint one of the two segments and save it again"
            )
        seen.add((layer, value))
        mask = (voxels if layers == 1 else voxels[..., layer]) == value
        if is_lung_segment_name(name):
            has_lung = True
            lung |= mask
            lung_layers.add(layer)
            continue
        if not mask.any():
            warnings.warn(SegmentationWarning(f"{where} is empty and is ignored"), stacklevel=3)
            continue
        label = len(names) + 1
        under = nodules[mask]
        overlap = int(np.count_nonzero(under))
        for earlier in np.unique(under[under != 0]).tolist():
            covered_by.setdefault(int(earlier), set()).add(label)
        if overlap:
            warnings.warn(
                SegmentationWarning(
                    f"{where} overlaps earlier nodule segments in {overlap} voxels; they go to {name!r}"
                ),
                stacklevel=3,
            )
        nodules[mask] = label
        names[label] = name
        nodule_layer[label] = layer
        tags = _parse_tags(fields.get("Tags", ""))
        if TEXTURE_TAG in tags and label not in overrides:
            textures[label] = parse_texture_value(
                f"label {label} ({name!r}, tag {TEXTURE_TAG})", tags[TEXTURE_TAG]
            )
    if not segments:
        raise InputError(
            f"segmentation {path} has no segments; fix: add a 'Lungs' segment and nodule segments"
        )
    counts = label_counts(nodules)
    hidden = [k for k in names if k not in counts]
    if hidden:
        k = hidden[0]
        by = " and ".join(repr(names[j]) for j in sorted(covered_by.get(k, ())))
        raise InputError(
            f"segment {names[k]!r} of {path} is hidden: every voxel of it is also in segment {by} (another "
            "layer), and a voxel holds one nodule; fix: in 3D Slicer's Segment Editor erase the overlap from "
            f"one of them (or delete {names[k]!r} if it is not a separate nodule), then save again"
        )
    if lung.any():
        # Segments in one layer cannot overlap: Slicer's default "overwrite other segments" cuts each
        # nodule out of the lung segment. The lung under such nodules is restored (land.interface.masks).
        shared = [label for label, layer in nodule_layer.items() if layer in lung_layers]
        lung = restore_lung(lung, nodules, shared)
    nodule_array = nodules.astype(np.uint8) if len(names) < 256 else nodules
    return MaskSet(
        lung=Volume.like(template, lung.astype(np.uint8)) if has_lung else None,
        nodules=Volume.like(template, nodule_array),
        textures=textures,
        names=names,
    )


def is_segmentation(image: sitk.Image) -> bool:
    """True when an image carries Slicer segmentation fields (``Segment0_ID``, ...)."""
    return bool(_segments(image))


def _label_image(path: PathLike) -> Volume:
    vol = read_volume(path)
    check_labels(vol, f"nodule label image {path}")
    a = vol.array
    if a.dtype == bool:
        a = a.astype(np.uint8)
    elif not np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.uint16 if a.size == 0 or a.max() < 65536 else np.int32)
    return Volume.like(vol, a)


def read_masks(
    mask_path: PathLike | None,
    nodules_path: PathLike | None = None,
    texture_overrides: Mapping[int, int] | str | Iterable[str] | None = None,
) -> MaskSet:
    """Read the masks of one synthesis.

    ``mask_path`` is a Slicer ``.seg.nrrd`` (then ``nodules_path`` must be None) or a lung mask image
    (0 and up to 8 whole-number labels, every non-zero label lung; see :func:`check_lung_mask`; None for
    nodules only); ``nodules_path`` a label image (0 none, 1..K nodules). A ``.seg.nrrd`` without segment
    fields is refused (its labels could be lungs or nodules).
    ``texture_overrides`` (``{1: 5}`` or ``"1=5,2=3"``) supply or replace nodule textures.
    """
    if mask_path is None and nodules_path is None:
        raise InputError("no masks given; fix: give a .seg.nrrd, or a lung mask and/or a nodule label image")
    if isinstance(texture_overrides, Mapping):
        overrides = {check_label_key(k): check_texture(k, v) for k, v in texture_overrides.items()}
    else:
        overrides = parse_texture_overrides(texture_overrides)
    image = _read_image(mask_path, "mask file") if mask_path is not None else None
    if image is not None and not is_segmentation(image) and str(mask_path).lower().endswith(".seg.nrrd"):
        raise InputError(
            f"{mask_path} is named .seg.nrrd but has no segment fields (Segment0_Name, Segment0_LabelValue, "
            "...), so LAND cannot tell its lungs from its nodules; fix: save the segmentation again from 3D "
            "Slicer (Segmentations module), or give a lung mask image with --mask and a nodule label image "
            "with --nodules"
        )
    if image is not None and is_segmentation(image):
        if nodules_path is not None:
            raise InputError(
                f"{mask_path} is a segmentation that holds the nodules, and a nodule image {nodules_path} "
                "was given too; fix: give only the segmentation, or a lung mask image plus a nodule image"
            )
        masks = _masks_from_segmentation(image, mask_path, overrides)
    else:
        lung = None
        if image is not None:
            vol = Volume.from_sitk(_as_3d(image, mask_path, "lung mask"))
            check_lung_mask(vol, f"lung mask {mask_path}")
            lung = Volume.like(vol, (vol.array != 0).astype(np.uint8))
        nodules = _label_image(nodules_path) if nodules_path is not None else None
        masks = MaskSet(lung=lung, nodules=nodules)
        masks.names = {k: f"Nodule {k}" for k in masks.labels()}
        check_geometry(masks)
    unknown = sorted(set(overrides) - set(masks.names))
    if unknown:
        present = ", ".join(masks.describe(k) for k in sorted(masks.names)) or "none"
        raise InputError(
            f"texture override for nodule label(s) {', '.join(map(str, unknown))}, which the masks do not "
            f"have (nodules: {present}); fix: use the labels listed"
        )
    masks.textures.update(overrides)
    return masks


# ----------------------------------------------------------------------------------------------- writing


def _check_output(path: PathLike, known: Iterable[str]) -> tuple[Path, str]:
    p = check_target(path)
    ext = _extension(p, known)
    if ext is None:
        raise InputError(f"cannot write {p}: unsupported file type; fix: use one of {', '.join(known)}")
    return p, ext


def _write_sitk(image: sitk.Image, tmp: Path, final: Path, compress: bool = True) -> None:
    """Write with SimpleITK, then read the file's size back: ITK can truncate a file silently (disk full)."""
    try:
        sitk.WriteImage(image, str(tmp), compress)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise write_error(final, lines[-1] if lines else "unknown error") from None
    try:
        check_image_data(tmp)
    except InputError:
        raise write_error(final, "the written file came out incomplete (is the disk full?)") from None


def write_seg_nrrd(path: PathLike, masks: MaskSet, provenance: Mapping[str, object] | None = None) -> None:
    """Write masks as a Slicer segmentation (single-layer labelmap ``.seg.nrrd``).

    ``provenance`` (e.g. :func:`derived_record`) says what the masks are: NRRD ``content`` and the
    ``LAND.Provenance`` field (:func:`read_provenance`).

    Segments: "Lungs" (if a lung mask is given) and one per nodule label, named from ``masks.names``
    (default "Nodule k"), with colours, terminology and the tag ``LAND.Texture:<t>`` where known. Nodules
    overwrite the lung in the shared layer, as in Slicer; :func:`read_masks` restores them into the lung.
    """
    p, ext = _check_output(path, (".nrrd",))
    ref = masks.reference
    if ref is None:
        raise InputError("no masks to write; fix: give a lung mask and/or a nodule map")
    check_geometry(masks)
    if masks.nodules is not None:
        check_labels(masks.nodules)
    labels = masks.labels()
    dtype = np.uint8 if len(labels) + 1 < 256 else np.uint16
    voxels = np.zeros(ref.array.shape, dtype)
    segments: list[tuple[str, str, tuple[float, ...], list[str]]] = []
    if masks.lung is not None:
        voxels[masks.lung.array != 0] = 1
        segments.append(("Lungs", "Lungs", LUNG_COLOR, [f"TerminologyEntry:{LUNG_TERMINOLOGY}"]))
    for i, label in enumerate(labels):
        voxels[masks.nodules.array == label] = len(segments) + 1  # type: ignore[union-attr]
        name = masks.names.get(label) or f"Nodule {label}"
        if is_lung_segment_name(name):
            name = f"Nodule {label} ({name})"
        tags = [f"TerminologyEntry:{NODULE_TERMINOLOGY}"]
        if label in masks.textures:
            tags.append(f"{TEXTURE_TAG}:{check_texture(label, masks.textures[label])}")
        segments.append((f"Nodule_{label}", name, NODULE_COLORS[i % len(NODULE_COLORS)], tags))
    image = Volume.like(ref, voxels).to_sitk()
    x, y, z = ref.size
    for i, (seg_id, name, color, tags) in enumerate(segments):
        fields = {
            "ID": seg_id,
            "Name": name,
            "NameAutoGenerated": "0",
            "Color": " ".join(f"{c:g}" for c in color),
            "ColorAutoGenerated": "0",
            "LabelValue": str(i + 1),
            "Layer": "0",
            "Extent": f"0 {x - 1} 0 {y - 1} 0 {z - 1}",
            "Tags": "|".join(["Segmentation.Status:inprogress", *tags]) + "|",
        }
        for key, value in fields.items():
            image.SetMetaData(f"Segment{i}_{key}", value)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    _set_nrrd_provenance(image, provenance)
    with atomic_path(p, ext) as tmp:
        _write_sitk(image, tmp, p)


def derived_record(description: str, **fields: object) -> dict[str, object]:
    """Provenance of an output derived from the user's own data (e.g. the lungs of a real CT): ``synthetic``
    false, ``description``, ``land_version``, ``created`` (UTC) and ``fields``. Only generated CTs are
    SYNTHETIC (:func:`provenance_record`)."""
    record: dict[str, object] = {"description": description, "synthetic": "false", **fields}
    record.setdefault("land_version", __version__)
    record.setdefault("created", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return record


def _set_nrrd_provenance(image: sitk.Image, provenance: Mapping[str, object] | None) -> None:
    if provenance:
        image.SetMetaData("NRRD_content", _one_line(provenance.get("description", "")))
        image.SetMetaData("LAND.Provenance", json.dumps(dict(provenance), sort_keys=True, default=str))


def write_mask(
    path: PathLike,
    mask: Volume,
    fields: Mapping[str, str] | None = None,
    provenance: Mapping[str, object] | None = None,
) -> None:
    """Write a mask as a label image (uint8; NIfTI or NRRD), atomically; not marked synthetic (it is drawn
    on the user's own scan). NRRD keeps ``fields`` (e.g. ``LAND.LungSeg.*``) as key/value fields.
    ``provenance`` (:func:`derived_record`) says what the mask is: NRRD ``content`` and ``LAND.Provenance``,
    NIfTI ``descrip`` (its description, 79 characters)."""
    p, ext = _check_output(path, WRITE_EXTENSIONS)
    image = Volume.like(mask, (mask.array != 0).astype(np.uint8)).to_sitk()
    if ext == ".nrrd":
        for key, value in (fields or {}).items():
            image.SetMetaData(key, _one_line(value))
        _set_nrrd_provenance(image, provenance)
    elif provenance:
        image.SetMetaData("ITK_FileNotes", _one_line(provenance.get("description", ""))[:NIFTI_DESCRIP_LEN])
    with atomic_path(p, ext) as tmp:
        _write_sitk(image, tmp, p)


def sidecar_path(path: PathLike) -> Path:
    """The JSON sidecar of a NIfTI file: ``ct.nii.gz`` -> ``ct.json``."""
    p = Path(path)
    ext = _extension(p, (".nii.gz", ".nii")) or p.suffix
    return p.with_name(p.name[: len(p.name) - len(ext)] + ".json")


def provenance_record(provenance: Mapping[str, object]) -> dict[str, object]:
    """The provenance as stored: the given fields plus ``synthetic``, ``description`` (starting with
    "SYNTHETIC"), ``land_version`` and ``created`` (UTC) where missing."""
    record: dict[str, object] = {str(k): v for k, v in provenance.items()}
    description = str(record.get("description") or "")
    if not description.startswith("SYNTHETIC"):
        model = record.get("model_id", record.get("model", "unknown model"))
        seed = record.get("seed", "?")
        description = (
            f"SYNTHETIC - {description}" if description else f"SYNTHETIC CT - LAND {model} seed {seed}"
        )
    record["synthetic"] = "true"
    record["description"] = description
    record.setdefault("land_version", __version__)
    record.setdefault("created", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return record


def _nrrd_key(key: str) -> str:
    return "LAND." + "".join(part[:1].upper() + part[1:] for part in re.split(r"[_\s]+", key) if part)


def _one_line(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("\r", " ").replace("\n", " ")


def write_volume(
    path: PathLike,
    volume: Volume,
    provenance: Mapping[str, object] | None = None,
    compress: bool = True,
    cancel: threading.Event | None = None,
) -> None:
    """Write a synthetic volume as NIfTI (``.nii``/``.nii.gz``) or NRRD (``.nrrd``), atomically.

    ``compress=False`` writes raw NRRD data (faster to load, e.g. into Slicer).
    The header says SYNTHETIC (NIfTI ``descrip``, NRRD ``content`` and ``LAND.Synthetic:=true``).
    The provenance (default: ``volume.metadata``; see :func:`provenance_record`) goes into NRRD key/value
    fields ``LAND.<Key>`` plus ``LAND.Provenance`` (JSON), or a JSON sidecar next to a NIfTI file.
    Files are written under a temporary name in the same folder and renamed, so no partial output remains.
    ``cancel`` set before the rename (a Ctrl-C or SIGTERM during the write) raises :class:`Cancelled` and
    leaves nothing (a file already at ``path`` stays as it was).
    """
    p, ext = _check_output(path, WRITE_EXTENSIONS)
    record = provenance_record(volume.metadata if provenance is None else provenance)
    description = str(record["description"])
    image = Volume.like(volume, volume.array).to_sitk()
    with atomic_path(p, ext) as tmp:
        if ext == ".nrrd":
            image.SetMetaData("NRRD_content", _one_line(description))
            for key, value in record.items():
                image.SetMetaData(_nrrd_key(key), _one_line(value))
            image.SetMetaData("LAND.Provenance", json.dumps(record, sort_keys=True, default=str))
            _write_sitk(image, tmp, p, compress)
            _stop_if_cancelled(cancel, p)
        else:
            image.SetMetaData("ITK_FileNotes", _one_line(description)[:NIFTI_DESCRIP_LEN])
            _write_sitk(image, tmp, p)
            _stop_if_cancelled(cancel, p)
            # the volume is complete on disk; its sidecar goes first, then the volume is renamed
            side = check_target(sidecar_path(p))
            atomic_write_text(side, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
            _stop_if_cancelled(cancel, p, side)


def _stop_if_cancelled(cancel: threading.Event | None, target: Path, *written: Path) -> None:
    """:class:`Cancelled` (after removing ``written``) when ``cancel`` is set: the output is not renamed."""
    if cancel is not None and cancel.is_set():
        for path in written:
            path.unlink(missing_ok=True)
        raise Cancelled(f"cancelled while writing {target}; nothing was written")


def read_provenance(path: PathLike) -> dict[str, object]:
    """The provenance written by :func:`write_volume` ({} for a file without any).

    NRRD: the ``LAND.Provenance`` field. NIfTI: the JSON sidecar, else ``{"description": <descrip>}``.
    """
    p = _check_input_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"could not read the header of {p}; fix: check that it is a valid image") from e
    keys = set(reader.GetMetaDataKeys())
    if "LAND.Provenance" in keys:
        return dict(json.loads(reader.GetMetaData("LAND.Provenance")))
    if _extension(p, (".nii.gz", ".nii")):
        side = sidecar_path(p)
        if side.is_file():
            return dict(json.loads(side.read_text(encoding="utf-8")))
        if "descrip" in keys and reader.GetMetaData("descrip").strip():
            return {"description": reader.GetMetaData("descrip").strip()}
    return {k[len("LAND.") :]: reader.GetMetaData(k) for k in sorted(keys) if k.startswith("LAND.")}
