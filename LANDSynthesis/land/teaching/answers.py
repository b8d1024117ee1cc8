"""The answer key of a teaching set: ``key/answers.csv`` and ``key/answers.json``.

One row per nodule: case, nodule id (1..K, segment "Nodule k" of the case's ``.seg.nrrd``; a matched twin
keeps its original's ids, so it lacks one), centre in DICOM patient
coordinates (LPS mm: x to the patient's left, y posterior, z superior), the slice (Instance Number of the
DICOM file that contains the centre, 1-based), diameter (mm) and texture (1..5, LIDC scale). Cases without
nodules appear in ``answers.json`` (``"nodules": []``) and in the CSV only through ``cases`` in the JSON;
the scorer reads the JSON.

Matched pairs (``--pair-rate``): each case of a pair carries ``"pair"`` in ``answers.json`` and the JSON
lists ``"pairs"`` — ``with_nodule`` and ``without_nodule`` (case ids), ``nodule`` (the id of the nodule that
only the first has; the twin's key lists the others under the same ids), its centre, slice, diameter and
texture, and ``identical_beyond_mm`` (the CTs are identical farther than that from the nodule) — also as
``pairs.csv``.
A mark in the twin where the nodule was is a false positive, as any mark off its key's nodules.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..imaging.atomic import atomic_write_text
from ..interface.errors import InputError

FORMAT = "land-teaching-answers/1"
CSV_FIELDS = ("case", "nodule", "x_mm", "y_mm", "z_mm", "slice", "diameter_mm", "texture", "texture_name")
PAIR_CSV_FIELDS = ("with_nodule", "without_nodule", "nodule", "x_mm", "y_mm", "z_mm", "slice", "diameter_mm",
                   "texture", "identical_beyond_mm")  # fmt: skip
CASE_FIELDS = ("case", "dicom", "segmentation", "thumbnail", "series_uid", "slices", "nodules", "pair")
COORDINATES = "DICOM patient coordinates (LPS, mm): x to the patient's left, y posterior, z superior"


@dataclass(frozen=True)
class KeyNodule:
    """One nodule of the key."""

    case: str
    nodule: int
    centre_mm: tuple[float, float, float]
    slice: int
    diameter_mm: float
    texture: int

    @property
    def radius_mm(self) -> float:
        return self.diameter_mm / 2.0


@dataclass(frozen=True)
class KeyPair:
    """A matched pair of the key: ``without_case`` is ``with_case`` without its nodule ``nodule``."""

    with_case: str
    without_case: str
    nodule: int
    centre_mm: tuple[float, float, float]
    diameter_mm: float

    @property
    def radius_mm(self) -> float:
        return self.diameter_mm / 2.0


def _pairs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The matched pairs of the records (one entry per pair, in the twins' case order; pairs whose case got
    no nodule are left out: nothing differs)."""
    twins = [r["pair"] for r in records if r.get("pair") and r["pair"]["without_nodule"] == r["case"]]
    return [p for p in twins if p["nodule"] is not None]


def write_answers(
    key_dir: Path, records: list[dict[str, Any]], settings: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``answers.csv`` and ``answers.json`` from the per-case records (in case order)."""
    from .plan import TEXTURE_NAMES

    rows = []
    for rec in records:
        for n in rec["nodules"]:
            x, y, z = n["centre_mm"]
            rows.append({
                "case": rec["case"], "nodule": n["nodule"], "x_mm": f"{x:.2f}", "y_mm": f"{y:.2f}",
                "z_mm": f"{z:.2f}", "slice": n["slice"], "diameter_mm": f"{n['diameter_mm']:.1f}",
                "texture": n["texture"], "texture_name": TEXTURE_NAMES[n["texture"]],
            })  # fmt: skip
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, json_path = key_dir / "answers.csv", key_dir / "answers.json"
    atomic_write_text(csv_path, buf.getvalue())
    pairs = _pairs(records)
    if pairs:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=PAIR_CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for p in pairs:
            x, y, z = p["centre_mm"]
            writer.writerow({**p, "x_mm": f"{x:.2f}", "y_mm": f"{y:.2f}", "z_mm": f"{z:.2f}"})
        atomic_write_text(key_dir / "pairs.csv", buf.getvalue())
    doc = {
        "format": FORMAT,
        "synthetic": True,
        "note": "SYNTHETIC – LAND teaching set: generated images, not patients",
        "coordinates": COORDINATES,
        "slice": "Instance Number (1-based) of the DICOM slice that contains the nodule centre",
        "settings": settings,
        "cases": [{k: rec[k] for k in CASE_FIELDS if k in rec} for rec in records],
        **({"pairs": pairs} if pairs else {}),
    }
    atomic_write_text(json_path, json.dumps(doc, indent=1) + "\n")
    return csv_path, json_path


def answers_file(path: str | os.PathLike) -> Path:
    """``answers.json`` in a teaching set folder, its ``key`` folder, or the file itself."""
    p = Path(path)
    for candidate in (p, p / "answers.json", p / "key" / "answers.json"):
        if candidate.is_file():
            return candidate
    raise InputError(
        f"no answer key found at {p}; fix: give the teaching set folder (with key/answers.json) or the "
        "key folder that land teaching-set wrote"
    )


def _read_key(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    f = answers_file(path)
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
    except ValueError as e:
        raise InputError(
            f"{f} is not a LAND teaching-set answer key ({e}); fix: give the answers.json that land "
            "teaching-set wrote"
        ) from e
    return f, doc


def read_pairs(path: str | os.PathLike) -> list[KeyPair]:
    """The matched pairs of an ``answers.json`` (or its folder); none for a set without pairs."""
    f, doc = _read_key(path)
    try:
        return [
            KeyPair(str(p["with_nodule"]), str(p["without_nodule"]), int(p["nodule"]),
                    tuple(float(v) for v in p["centre_mm"]), float(p["diameter_mm"]))  # type: ignore[arg-type]
            for p in doc.get("pairs", [])
        ]  # fmt: skip
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{f}: its matched pairs are not readable ({e}); fix: give the answers.json that "
                         "land teaching-set wrote") from e  # fmt: skip


def read_answers(path: str | os.PathLike) -> tuple[list[str], list[KeyNodule]]:
    """(case ids in order, nodules) from an ``answers.json`` (or its folder)."""
    f, doc = _read_key(path)
    try:
        cases = [str(c["case"]) for c in doc["cases"]]
        nodules = [
            KeyNodule(
                str(c["case"]),
                int(n["nodule"]),
                tuple(float(v) for v in n["centre_mm"]),  # type: ignore[arg-type]
                int(n["slice"]),
                float(n["diameter_mm"]),
                int(n["texture"]),
            )  # fmt: skip
            for c in doc["cases"]
            for n in c["nodules"]
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"{f} is not a LAND teaching-set answer key ({e}); fix: give the answers.json that land "
            "teaching-set wrote"
        ) from e
    return cases, nodules
