"""The LAND folder dataset: ``manifest.csv`` plus one folder per case.

Layout::

    DATA/manifest.csv              header row; column ``case`` (else the first column) names the folder,
                                   optional column ``split`` ('train' / 'val'); other columns are kept
    DATA/<case>/image.nii.gz       CT in HU
    DATA/<case>/lung.nii.gz        lung mask (nonzero = lung), same geometry as the image
    DATA/<case>/nodules.nii.gz     nodule labels 0..K, same geometry
    DATA/<case>/textures.json      {"1": 5, "2": 3, ...}: texture 1..5 per nodule label, nothing else
                                   (older datasets kept metadata here: non-integer keys are ignored)
    DATA/<case>/case.json          optional metadata: diameters_mm, centres_mm (LPS), source, ...
    DATA/<case>/image_without_nodules.nii.gz
                                   optional: the same anatomy rendered without its nodules (HU, the
                                   image's geometry), for paired decoder training (``vae.paired_fraction``)

This module owns the format: :func:`write_case` writes a case folder (``land phantoms``, ``land
prepare-lidc``), :func:`load_case` / :func:`read_textures` / :func:`read_case_meta` /
:func:`read_image_without_nodules` read it.

Images are fed to the VAE in [0, 1]: HU clipped to [hu_min, hu_max] (default [-1000, 1000]) and scaled
linearly, the mapping stored in ``model.json``.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..conditioning.encode import encode_conditioning
from ..imaging.io import read_volume
from ..imaging.maskset import MaskSet, check_labels, label_counts
from ..imaging.volume import Volume
from ..interface.errors import InputError

MANIFEST_FILE = "manifest.csv"
IMAGE_FILE = "image.nii.gz"
LUNG_FILE = "lung.nii.gz"
NODULES_FILE = "nodules.nii.gz"
TEXTURES_FILE = "textures.json"
CASE_META_FILE = "case.json"
IMAGE_WITHOUT_NODULES_FILE = "image_without_nodules.nii.gz"  # optional
CASE_FILES = (IMAGE_FILE, LUNG_FILE, NODULES_FILE, TEXTURES_FILE)
CASE_COLUMNS = ("case", "case_id", "id", "folder", "name")
_INT_KEY = re.compile(r"^\s*[+-]?\d+\s*$")


@dataclass(frozen=True)
class CaseFiles:
    """One manifest row: the case folder and its optional split."""

    name: str
    folder: Path
    split: str = "train"
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def image(self) -> Path:
        return self.folder / IMAGE_FILE

    @property
    def lung(self) -> Path:
        return self.folder / LUNG_FILE

    @property
    def nodules(self) -> Path:
        return self.folder / NODULES_FILE

    @property
    def textures(self) -> Path:
        return self.folder / TEXTURES_FILE

    @property
    def image_without_nodules(self) -> Path:
        return self.folder / IMAGE_WITHOUT_NODULES_FILE


@dataclass
class Case:
    """A loaded case: the CT (HU, as stored; None when not read) and its masks."""

    name: str
    image: Volume | None
    masks: MaskSet


def read_manifest(root: str | Path) -> list[CaseFiles]:
    """The cases listed in ``root/manifest.csv`` (InputError when missing, empty or duplicated)."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist")
    if not path.is_file():
        raise InputError(
            f"{path} is missing; a LAND dataset folder has {MANIFEST_FILE} (a header row with a 'case' "
            "column naming each case folder) and one folder per case"
        )
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            columns = list(rows[0].keys()) if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read {path}: {e}") from e
    if not rows:
        raise InputError(f"{path} lists no cases (it needs a header row and one row per case)")
    key = next((c for c in CASE_COLUMNS if c in columns), columns[0])
    cases: list[CaseFiles] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=2):
        name = (row.get(key) or "").strip()
        if not name:
            raise InputError(f"{path} line {i}: empty '{key}' value")
        if name in seen:
            raise InputError(f"{path} line {i}: case {name!r} is listed twice")
        seen.add(name)
        split = (row.get("split") or "train").strip().lower() or "train"
        extra = {k: v for k, v in row.items() if k not in (key, "split") and k is not None}
        cases.append(CaseFiles(name, root / name, split, extra))
    return cases


def sha256_manifest(root: str | Path) -> str:
    """sha256 of ``manifest.csv`` (recorded in a trained model's provenance)."""
    from ..models.model_dir import sha256_file

    return sha256_file(Path(root) / MANIFEST_FILE)


def parse_textures(obj: object) -> tuple[dict[int, int], list[str]]:
    """Textures from a loaded ``textures.json`` and the problems found (integer keys only; others ignored)."""
    if not isinstance(obj, dict):
        return {}, [f'{TEXTURES_FILE} must hold a JSON object like {{"1": 5}}, not {type(obj).__name__}']
    textures: dict[int, int] = {}
    problems = []
    for key, value in obj.items():
        if not _INT_KEY.match(str(key)):
            continue  # other keys (e.g. "source", "_comment") are allowed
        label = int(key)
        if label < 1:
            problems.append(f"{TEXTURES_FILE}: key {key!r} is not a nodule label (labels are 1..K)")
            continue
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5
        if not ok:
            problems.append(f"{TEXTURES_FILE}: texture {value!r} of label {label} is not an integer 1..5")
            continue
        textures[label] = int(value)
    return textures, problems


def read_textures(path: str | Path) -> tuple[dict[int, int], list[str]]:
    """Parse a ``textures.json`` file: (label -> texture, problems)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        return {}, [f"cannot read {TEXTURES_FILE}: {e}"]
    except json.JSONDecodeError as e:
        return {}, [f"{TEXTURES_FILE} is not valid JSON: {e}"]
    return parse_textures(obj)


def write_case(
    folder: str | Path,
    image: Volume,
    lung: Volume,
    nodules: Volume,
    textures: dict[int, int],
    meta: dict | None = None,
    *,
    image_without_nodules: Volume | None = None,
) -> Path:
    """Write one case folder: CT (int16 HU), lung mask (uint8), nodule labels, optionally the same CT
    rendered without its nodules (int16 HU, the image's geometry), ``case.json`` (``meta``), and last
    ``textures.json`` (label -> texture only), whose presence marks the case complete."""
    from ..imaging.atomic import atomic_path, atomic_write_text

    folder = Path(folder)
    labels = nodules.array
    label_type = np.uint8 if labels.size == 0 or labels.max() < 256 else np.uint16
    arrays = [
        (IMAGE_FILE, image.with_array(_hu_int16(image.array))),
        (LUNG_FILE, lung.with_array((lung.array != 0).astype(np.uint8))),
        (NODULES_FILE, nodules.with_array(labels.astype(label_type))),
    ]
    if image_without_nodules is not None:
        if not image_without_nodules.same_geometry(image):
            raise InputError(
                f"{IMAGE_WITHOUT_NODULES_FILE} ({image_without_nodules.geometry_text()}) must have the "
                f"image's geometry ({image.geometry_text()})"
            )
        arrays.append((IMAGE_WITHOUT_NODULES_FILE, image.with_array(_hu_int16(image_without_nodules.array))))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / IMAGE_WITHOUT_NODULES_FILE).unlink(missing_ok=True)  # a rewritten case keeps no stale pair
    import SimpleITK as sitk

    for name, volume in arrays:
        with atomic_path(folder / name, ".nii.gz") as tmp:
            sitk.WriteImage(volume.to_sitk(), str(tmp), True)
    atomic_write_text(folder / CASE_META_FILE, json.dumps(meta or {}, indent=1))
    atomic_write_text(
        folder / TEXTURES_FILE, json.dumps({str(k): int(v) for k, v in sorted(textures.items())})
    )
    return folder


def _hu_int16(array: np.ndarray) -> np.ndarray:
    return np.clip(np.round(array), -32768, 32767).astype(np.int16)


def read_image_without_nodules(files: CaseFiles, reference: Volume | None = None) -> Volume | None:
    """The case's CT rendered without its nodules (HU), or None when the case has none; InputError when it
    cannot be read or its geometry differs from ``reference`` (the case's image, when given)."""
    path = files.image_without_nodules
    if not path.is_file():
        return None
    try:
        volume = read_volume(path)
    except InputError as e:
        raise InputError(f"case {files.name}: {e}") from e
    if reference is not None and not volume.same_geometry(reference):
        raise InputError(
            f"case {files.name}: {IMAGE_WITHOUT_NODULES_FILE} ({volume.geometry_text()}) and {IMAGE_FILE} "
            f"({reference.geometry_text()}) differ"
        )
    return volume


def write_manifest(root: str | Path, columns: Sequence[str], rows: Iterable[dict]) -> Path:
    """Write ``root/manifest.csv`` (first column ``case``) atomically; returns its path."""
    from ..imaging.atomic import atomic_path

    path = Path(root) / MANIFEST_FILE
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_case_meta(folder: str | Path) -> dict:
    """A case's metadata: ``case.json``, or (datasets written before it) the non-label keys of
    ``textures.json``; ``{}`` when there is none or it cannot be read."""
    folder = Path(folder)
    for name in (CASE_META_FILE, TEXTURES_FILE):
        try:
            obj = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(obj, dict):
            meta = {k: v for k, v in obj.items() if not _INT_KEY.match(str(k))}
            if meta or name == CASE_META_FILE:
                return meta
    return {}


def hu_to_unit(array: np.ndarray, hu_min: float = -1000.0, hu_max: float = 1000.0) -> np.ndarray:
    """HU clipped to [hu_min, hu_max] and mapped linearly to [0, 1] (float32)."""
    a = np.clip(np.asarray(array, dtype=np.float32), hu_min, hu_max)
    return (a - np.float32(hu_min)) / np.float32(hu_max - hu_min)


def load_case(files: CaseFiles, image: bool = True) -> Case:
    """Read a case and check it (InputError naming the case and the problem; see ``land check-dataset``)."""

    def fail(message: str) -> InputError:
        return InputError(
            f"case {files.name}: {message}; run 'land check-dataset' on the dataset for details"
        )

    missing = [n for n in CASE_FILES if not (files.folder / n).is_file() and (image or n != IMAGE_FILE)]
    if missing:
        raise fail(f"missing {', '.join(missing)} in {files.folder}")
    try:
        lung = read_volume(files.lung)
        nodules = read_volume(files.nodules)
        ct = read_volume(files.image) if image else None
        check_labels(nodules, f"{NODULES_FILE} of case {files.name}")
    except InputError as e:
        raise fail(str(e)) from e
    if not lung.same_geometry(nodules):
        raise fail(
            f"{LUNG_FILE} ({lung.geometry_text()}) and {NODULES_FILE} ({nodules.geometry_text()}) differ"
        )
    if ct is not None and not ct.same_geometry(lung):
        raise fail(f"{IMAGE_FILE} ({ct.geometry_text()}) and {LUNG_FILE} ({lung.geometry_text()}) differ")
    textures, problems = read_textures(files.textures)
    if problems:
        raise fail("; ".join(problems))
    labels = sorted(label_counts(nodules.array))
    missing_textures = [k for k in labels if k not in textures]
    if missing_textures:
        raise fail(f"nodule label(s) {missing_textures} have no texture in {TEXTURES_FILE}")
    textures = {k: v for k, v in textures.items() if k in labels}  # textures of absent labels: ignored
    return Case(files.name, ct, MaskSet(lung=lung, nodules=nodules, textures=textures))


def conditioning_array(masks: MaskSet, mode: str) -> np.ndarray:
    """The full-resolution conditioning mask of a case (nodules outside the lungs are not an error here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encode_conditioning(masks, mode).array


class FolderDataset(Dataset):
    """Whole cases: ``{"name", "image": (1, D, H, W) float32 in [0, 1], "cond": (1, D, H, W) | None}``.

    ``cond`` is the full-resolution conditioning mask for ``mode`` (None when ``mode`` is None).
    """

    def __init__(
        self,
        cases: Sequence[CaseFiles] | str | Path,
        hu_min: float = -1000.0,
        hu_max: float = 1000.0,
        mode: str | None = None,
    ) -> None:
        self.cases = read_manifest(cases) if isinstance(cases, (str, Path)) else list(cases)
        self.hu_min, self.hu_max, self.mode = float(hu_min), float(hu_max), mode

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        case = load_case(self.cases[index])
        assert case.image is not None
        image = torch.from_numpy(hu_to_unit(case.image.array, self.hu_min, self.hu_max))[None]
        cond = None
        if self.mode is not None:
            cond = torch.from_numpy(np.ascontiguousarray(conditioning_array(case.masks, self.mode)))[None]
        return {"name": case.name, "image": image, "cond": cond, "spacing": case.image.spacing}


class PatchDataset(Dataset):
    """Random VAE training patches. Items are addressed by ``(case_index, patch_seed)`` tuples.

    ``patch_size`` is x, y, z (like the grid size); the patch tensor is (1, z, y, x) in [0, 1]. A share
    ``nodule_fraction`` of the patches is centred (jittered by up to a quarter patch) on a random nodule
    voxel of the case, so that small nodules are not almost absent from training; cases without nodules
    always give uniform patches. With ``with_nodules`` an item is ``(patch, nodule_mask)``, the mask a
    (1, z, y, x) float tensor of 0/1. Up to ``cache_volumes`` cases are kept in memory (int16 HU + nodule
    mask) so that repeated cases are not re-read.
    """

    def __init__(
        self,
        cases: Sequence[CaseFiles],
        patch_size: Sequence[int],
        hu_min: float = -1000.0,
        hu_max: float = 1000.0,
        cache_volumes: int = 0,
        nodule_fraction: float = 0.0,
        with_nodules: bool = False,
    ) -> None:
        if not 0.0 <= nodule_fraction <= 1.0:
            raise InputError(f"nodule_fraction must be in [0, 1], got {nodule_fraction}")
        self.cases = list(cases)
        self.patch_zyx = tuple(int(p) for p in reversed(tuple(patch_size)))
        self.hu_min, self.hu_max = float(hu_min), float(hu_max)
        self.cache_volumes = int(cache_volumes)
        self.nodule_fraction, self.with_nodules = float(nodule_fraction), bool(with_nodules)
        # case index -> (HU array, nodule mask or None, flat indices of its nodule voxels)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.cases)

    def _volume(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        files = self.cases[index]
        if not files.image.is_file():
            raise InputError(f"case {files.name}: {files.image} is missing")
        array = read_volume(files.image).array
        nodules = None
        if (self.nodule_fraction > 0 or self.with_nodules) and files.nodules.is_file():
            nodules = read_volume(files.nodules).array != 0
            if nodules.shape != array.shape:
                raise InputError(
                    f"case {files.name}: nodules {nodules.shape} and image {array.shape} differ in size; "
                    "run land check-data"
                )
        voxels = np.flatnonzero(nodules) if nodules is not None else np.zeros(0, np.intp)
        entry = (array, nodules, voxels)
        if self.cache_volumes > 0:
            self._cache[index] = entry
            while len(self._cache) > self.cache_volumes:
                self._cache.popitem(last=False)
        return entry

    def _corner(self, shape: tuple[int, ...], voxels: np.ndarray, seed: int) -> tuple[int, ...]:
        from .sampling import patch_origin

        rng = np.random.default_rng([int(seed), 0x40D])
        if voxels.size == 0 or self.nodule_fraction <= 0 or rng.random() >= self.nodule_fraction:
            return patch_origin(shape, self.patch_zyx, seed)
        centre = np.unravel_index(int(voxels[rng.integers(voxels.size)]), shape)
        corner = []
        for c, p, s in zip(centre, self.patch_zyx, shape, strict=True):
            jitter = int(rng.integers(-(p // 4), p // 4 + 1))
            corner.append(int(np.clip(c - p // 2 + jitter, 0, s - p)))
        return tuple(corner)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        array, nodules, voxels = self._volume(int(index))
        if any(p > s for p, s in zip(self.patch_zyx, array.shape, strict=True)):
            raise InputError(
                f"case {self.cases[index].name}: patch {self.patch_zyx} is larger than the volume "
                f"{array.shape}; use a smaller vae.patch_size"
            )
        corner = self._corner(array.shape, voxels, seed)
        sl = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_zyx, strict=True))
        patch = torch.from_numpy(hu_to_unit(array[sl], self.hu_min, self.hu_max))[None]
        if not self.with_nodules:
            return patch
        mask = np.zeros(self.patch_zyx, np.float32) if nodules is None else nodules[sl].astype(np.float32)
        return patch, torch.from_numpy(mask)[None]
