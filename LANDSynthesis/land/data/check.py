"""``land check-dataset``: validate a LAND folder dataset and report problems per case.

Problems (exit code 2): missing manifest / folders / files, unreadable or non-3D images, geometry mismatch
between image, lung and nodules, non-integer nodule labels, nodule labels without a texture, textures
outside 1..5, a grid (size or spacing) other than the training config's. Warnings (reported only): textures
for labels absent from the nodule map, an empty lung mask, nodule voxels outside the lungs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..imaging.image_data import check_image_data, check_orientation
from ..imaging.io import read_volume
from ..imaging.maskset import check_labels, check_lung_mask, label_counts
from ..interface.errors import InputError
from ..interface.masks import outside_lung
from .folder import (
    CASE_FILES,
    IMAGE_FILE,
    IMAGE_WITHOUT_NODULES_FILE,
    LUNG_FILE,
    NODULES_FILE,
    TEXTURES_FILE,
    CaseFiles,
    read_manifest,
    read_textures,
)


@dataclass
class CaseReport:
    name: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class DatasetReport:
    root: Path
    problems: list[str] = field(default_factory=list)  # dataset-level (manifest) problems
    cases: list[CaseReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.cases)

    @property
    def bad_cases(self) -> list[CaseReport]:
        return [c for c in self.cases if not c.ok]

    def to_json(self) -> dict:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "problems": list(self.problems),
            "cases": [{"name": c.name, "problems": c.problems, "warnings": c.warnings} for c in self.cases],
        }

    def format_text(self, verbose: bool = True) -> str:
        lines = [f"dataset {self.root}: {len(self.cases)} case(s)"]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        for c in self.cases:
            if c.ok and not c.warnings and not verbose:
                continue
            lines.append(f"{c.name}: {'ok' if c.ok else f'{len(c.problems)} problem(s)'}")
            lines += [f"  PROBLEM: {p}" for p in c.problems]
            lines += [f"  warning: {w}" for w in c.warnings]
        n_bad = len(self.bad_cases)
        summary = "OK" if self.ok else f"{n_bad} case(s) with problems" if n_bad else "dataset problems"
        lines.append(f"summary: {summary}")
        return "\n".join(lines)

    def raise_if_bad(self, limit: int = 5, config: str | None = None) -> None:
        """InputError listing the first ``limit`` problems (for trainers that refuse bad data)."""
        if self.ok:
            return
        items = list(self.problems) + [f"{c.name}: {p}" for c in self.bad_cases for p in c.problems]
        more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
        raise InputError(
            f"dataset {self.root} has problems: "
            + "; ".join(items[:limit])
            + more
            + f"; run 'land check-dataset {self.root}"
            + (f" --config {config}" if config else "")
            + "' for the full report"
        )


@dataclass
class _Header:
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def text(self) -> str:
        return (
            f"size {self.size}, spacing {tuple(round(s, 4) for s in self.spacing)}, "
            f"origin {tuple(round(o, 3) for o in self.origin)}"
        )

    def same(self, other: _Header, tol: float = 1e-4) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )


def _header(path: Path) -> _Header:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        raise InputError(f"cannot read {path.name}: {lines[-1] if lines else 'unknown error'}") from e
    size = tuple(int(s) for s in reader.GetSize())
    dim = len(size)
    if dim == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3 or reader.GetNumberOfComponents() != 1:
        raise InputError(f"{path.name} is not a scalar 3D image (size {size})")
    direction = np.asarray(reader.GetDirection(), float).reshape(dim, dim)[:3, :3]
    return _Header(
        size, tuple(reader.GetSpacing())[:3], tuple(reader.GetOrigin())[:3], tuple(direction.ravel())
    )


def check_case(
    files: CaseFiles,
    grid_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    deep: bool = True,
) -> CaseReport:
    """Check one case folder. ``deep`` also reads the masks (labels, textures, nodules outside the lungs) and
    checks that every image holds all the voxel data its header declares."""
    report = CaseReport(files.name)
    if not files.folder.is_dir():
        report.problems.append(f"case folder {files.folder} does not exist")
        return report
    missing = [n for n in CASE_FILES if not (files.folder / n).is_file()]
    if missing:
        report.problems.append(f"missing file(s): {', '.join(missing)}")
    headers: dict[str, _Header] = {}
    optional = (IMAGE_WITHOUT_NODULES_FILE,) if files.image_without_nodules.is_file() else ()
    for name in (IMAGE_FILE, LUNG_FILE, NODULES_FILE, *optional):
        if name in missing:
            continue
        try:
            check_orientation(files.folder / name)
            if deep:
                check_image_data(files.folder / name)
            headers[name] = _header(files.folder / name)
        except InputError as e:
            report.problems.append(str(e))
    first = next(iter(headers), None)
    for name, h in headers.items():
        if name != first and not h.same(headers[first]):
            report.problems.append(
                f"geometry mismatch: {name} ({h.text()}) differs from {first} ({headers[first].text()})"
            )
    if first is not None and grid_size is not None:
        h = headers[first]
        if tuple(h.size) != tuple(int(s) for s in grid_size):
            report.problems.append(
                f"grid size {h.size} differs from the config's data.grid_size {tuple(grid_size)} "
                "(resample the case onto the model grid, e.g. with land prepare-lidc)"
            )
        if spacing is not None and not np.allclose(h.spacing, spacing, atol=1e-3):
            report.problems.append(
                f"spacing {tuple(round(s, 4) for s in h.spacing)} differs from the config's data.spacing "
                f"{tuple(spacing)}"
            )
    textures: dict[int, int] = {}
    if TEXTURES_FILE not in missing:
        textures, problems = read_textures(files.textures)
        report.problems.extend(problems)
    if deep and NODULES_FILE in headers:
        _check_masks(files, textures, LUNG_FILE in headers, report)
    return report


def _check_masks(files: CaseFiles, textures: dict[int, int], have_lung: bool, report: CaseReport) -> None:
    try:
        nodules = read_volume(files.nodules)
        check_labels(nodules, NODULES_FILE)
    except InputError as e:
        report.problems.append(str(e))
        return
    labels = sorted(label_counts(nodules.array))
    no_texture = [k for k in labels if k not in textures]
    if no_texture:
        report.problems.append(f"nodule label(s) {no_texture} have no texture in {TEXTURES_FILE}")
    absent = sorted(set(textures) - set(labels))
    if absent:
        report.warnings.append(
            f"{TEXTURES_FILE} gives textures for label(s) {absent} absent from {NODULES_FILE}"
        )
    if not have_lung:
        return
    try:
        lung_volume = read_volume(files.lung)
        check_lung_mask(lung_volume, LUNG_FILE)
        lung = lung_volume.array != 0
    except InputError as e:
        report.problems.append(str(e))
        return
    if not lung.any():
        report.warnings.append(f"{LUNG_FILE} is empty")
    if lung.shape == nodules.array.shape:
        outside = label_counts(nodules.array[outside_lung(lung, nodules.array)])
        if outside:
            parts = ", ".join(f"label {k}: {n} voxels" for k, n in sorted(outside.items()))
            report.warnings.append(f"nodule voxels outside the lung mask ({parts})")


def check_dataset(
    root: str | Path,
    grid_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    deep: bool = True,
) -> DatasetReport:
    """Check every case listed in ``root/manifest.csv`` (grid checked when ``grid_size`` is given, x-y-z)."""
    report = DatasetReport(Path(root))
    try:
        cases = read_manifest(root)
    except InputError as e:
        report.problems.append(str(e))
        return report
    for files in cases:
        report.cases.append(check_case(files, grid_size, spacing, deep))
    return report


def report_json(report: DatasetReport) -> str:
    return json.dumps(report.to_json(), indent=2)
