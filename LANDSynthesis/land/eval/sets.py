"""Sets of volumes on disk: a folder dataset (``manifest.csv``) or a plain folder of image files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..data.folder import MANIFEST_FILE, hu_to_unit, read_manifest
from ..imaging.io import READ_EXTENSIONS, read_provenance, read_volume
from ..imaging.volume import Volume
from ..interface.errors import InputError


@dataclass
class VolumeSet:
    """The image files of a set, in a fixed order, with a display name per file."""

    root: Path
    files: list[Path]
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        """sha256 of every file's path relative to the root, size and modification time."""
        h = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            h.update(json.dumps([str(f.relative_to(self.root)), st.st_size, st.st_mtime_ns]).encode())
        return h.hexdigest()


def _is_image(p: Path) -> bool:
    name = p.name.lower()
    return p.is_file() and name.endswith(READ_EXTENSIONS) and not name.startswith(".")


def list_volumes(root: str | Path, what: str = "set") -> VolumeSet:
    """The CT files of ``root``: ``<case>/image.nii.gz`` of each case in ``manifest.csv``, else every image
    file (.nii.gz, .nii, .nrrd, .mha, ...) directly in the folder, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{what} folder {root} does not exist; fix: check the path")
    if (root / MANIFEST_FILE).is_file():
        cases = read_manifest(root)
        missing = [c.name for c in cases if not c.image.is_file()]
        if missing:
            raise InputError(
                f"{what} {root}: case(s) {', '.join(missing[:5])} have no image.nii.gz; fix: complete the "
                "dataset or remove those rows from manifest.csv"
            )
        return VolumeSet(root, [c.image for c in cases], [c.name for c in cases])
    files = sorted(p for p in root.iterdir() if _is_image(p))
    if not files:
        raise InputError(
            f"{what} folder {root} holds no image files ({', '.join(READ_EXTENSIONS)}) "
            f"and no {MANIFEST_FILE}; "
            "fix: point it at a folder of CT volumes"
        )
    names = [
        p.name[: len(p.name) - len(next(e for e in READ_EXTENSIONS if p.name.lower().endswith(e)))]
        for p in files
    ]
    return VolumeSet(root, files, names)


def resize_unit(volume: np.ndarray, size: int | None) -> np.ndarray:
    """Trilinear resize of a [z, y, x] array to ``size`` voxels per side (None: unchanged)."""
    if size is None or volume.shape == (size,) * 3:
        return volume
    import torch

    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=(size,) * 3, mode="trilinear", align_corners=False)[
        0, 0
    ].numpy()


INTENSITY_PROTOCOLS = ("wdm", "fixed-window")
"""How ``land evaluate`` maps HU to the [0, 1] input of the FID features and MS-SSIM (default first)."""


def check_intensity_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`INTENSITY_PROTOCOLS`, else ValueError naming the choices."""
    if protocol not in INTENSITY_PROTOCOLS:
        raise ValueError(
            f"unknown intensity protocol {protocol!r}; choose one of {', '.join(INTENSITY_PROTOCOLS)}"
        )
    return protocol


def describe_intensity_protocol(protocol: str, hu_window: tuple[float, float] = (-1000.0, 1000.0)) -> str:
    """The exact words for ``protocol`` in reports, e.g. ``wdm (HU clipped to [-1000, per-volume 99.9th
    percentile], min-max to [0,1] per volume)``."""
    if check_intensity_protocol(protocol) == "wdm":
        return "wdm (HU clipped to [-1000, per-volume 99.9th percentile], min-max to [0,1] per volume)"
    lo, hi = hu_window
    return f"fixed-window (HU clipped to [{lo:g}, {hi:g}], mapped linearly to [0,1]; not the WDM-3D scaling)"


def wdm_unit(array: np.ndarray) -> np.ndarray:
    """WDM-3D's per-volume scaling (float32): HU below -1000 set to -1000, then clipped at the volume's own
    99.9th percentile, then min-max to [0, 1] with the clipped volume's min and max; a constant volume gives
    all zeros."""
    a = np.maximum(np.asarray(array, dtype=np.float32), np.float32(-1000.0))
    a = np.minimum(a, np.float32(np.percentile(a, 99.9)))
    lo, hi = a.min(), a.max()
    if not hi > lo:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def volume_to_unit(
    array: np.ndarray, protocol: str = "wdm", hu_window: tuple[float, float] = (-1000.0, 1000.0)
) -> np.ndarray:
    """A HU volume as float32 in [0, 1] under ``protocol`` (one of :data:`INTENSITY_PROTOCOLS`):
    ``wdm`` is :func:`wdm_unit`; ``fixed-window`` clips to ``hu_window`` and maps it linearly to [0, 1]."""
    if check_intensity_protocol(protocol) == "wdm":
        return wdm_unit(array)
    return hu_to_unit(array, *hu_window)


class UnitVolumes(Sequence):
    """A lazy sequence of a set's volumes as float32 in [0, 1] (:func:`volume_to_unit` with ``protocol``),
    optionally resized (after the scaling) to ``size``^3.

    The last few volumes read are kept (pairs for MS-SSIM re-read little).
    """

    def __init__(
        self,
        vset: VolumeSet,
        *,
        protocol: str = "wdm",
        hu_window: tuple[float, float] = (-1000.0, 1000.0),
        size: int | None = None,
        keep: int = 4,
    ) -> None:
        self.vset, self.protocol = vset, check_intensity_protocol(protocol)
        self.hu_window, self.size = tuple(hu_window), size
        self._get = lru_cache(maxsize=keep)(self._read)

    def _read(self, index: int) -> np.ndarray:
        hu = read_volume(self.vset.files[index]).array
        return resize_unit(volume_to_unit(hu, self.protocol, self.hu_window), self.size)

    def __len__(self) -> int:
        return len(self.vset)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._get(index % len(self))


def resample_like(vol: Volume, reference: Volume, default: float = 0.0) -> Volume:
    """``vol`` resampled (nearest neighbour, physical space) onto ``reference``'s grid."""
    if vol.same_geometry(reference):
        return Volume.like(reference, vol.array)
    image = sitk.Resample(
        vol.to_sitk(), reference.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, float(default)
    )
    return Volume.like(reference, sitk.GetArrayFromImage(image))


def source_case(path: Path) -> str | None:
    """The mask case a generated file was made from (its provenance ``case``; None if not recorded)."""
    try:
        case = read_provenance(path).get("case")
    except InputError:
        return None
    return str(case) if case not in (None, "") else None
