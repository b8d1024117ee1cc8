"""Scoring a trainee's reads against a teaching set's answer key.

A read is a marked point ``case, x, y, z`` (DICOM patient coordinates, LPS mm, as DICOM viewers show them;
a file with columns ``case, r, a, s`` instead is read as RAS, e.g. from 3D Slicer, and converted).
A mark hits a nodule when its distance to the nodule centre is at most ``radius + margin``; a mark that hits
several nodules goes to the one whose surface is nearest. A nodule is detected when at least one mark hits
it; further marks on a detected nodule are duplicates (reported, not false positives). Marks that hit no
nodule are false positives. Sensitivity = detected / nodules; FP per case = false positives / cases in the
key (a case without marks was read as normal).

Matched pairs: the twin's key lacks the nodule that differs, so a mark there is a false positive like any
other. ``matched_pairs`` adds, per pair, whether the nodule was found in the case that has it
(``detected_with``) and whether the twin was marked where it was (``marked_without``: within radius +
margin of its centre), and the counts of both.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..interface.errors import InputError
from .answers import KeyNodule, KeyPair, read_answers, read_pairs
from .plan import TEXTURE_NAMES

DEFAULT_MARGIN_MM = 5.0


@dataclass(frozen=True)
class Mark:
    case: str
    point: tuple[float, float, float]
    line: int


def _case_lookup(cases: list[str]) -> dict[str, str]:
    """Accepted spellings of each case id: ``case_003``, ``003``, ``3``, ``SYNTHETIC^LAND^case_003``."""
    lookup: dict[str, str] = {}
    for c in cases:
        for alias in (c, c.lower(), f"SYNTHETIC^LAND^{c}", c.rsplit("_", 1)[-1]):
            lookup.setdefault(alias, c)
        tail = c.rsplit("_", 1)[-1]
        if tail.isdigit():
            lookup.setdefault(str(int(tail)), c)
    return lookup


def read_reads(path: str | os.PathLike, cases: list[str]) -> list[Mark]:
    """Marks from a CSV with a header containing ``case, x, y, z`` (other columns are ignored)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"reads file {p} not found; fix: give a CSV with columns case,x,y,z")
    lookup = _case_lookup(cases)
    marks: list[Mark] = []
    with p.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
        axes, sign = ("x", "y", "z"), (1.0, 1.0, 1.0)
        if not set(axes) <= set(fields) and {"r", "a", "s"} <= set(fields):
            axes, sign = ("r", "a", "s"), (-1.0, -1.0, 1.0)  # RAS (e.g. from 3D Slicer) -> LPS
        missing = [c for c in ("case", *axes) if c not in fields]
        if missing:
            raise InputError(
                f"reads file {p} lacks the column(s) {', '.join(missing)}; fix: a header line case,x,y,z "
                "with one marked point (patient LPS mm, as DICOM viewers show) per row, or case,r,a,s (RAS)"
            )
        for line, row in enumerate(reader, start=2):
            raw = (row.get(fields["case"]) or "").strip()
            if not raw and not any((v or "").strip() for v in row.values()):
                continue  # blank line
            case = lookup.get(raw, lookup.get(raw.lower()))
            if case is None:
                raise InputError(
                    f"{p} line {line}: case {raw!r} is not in the answer key "
                    f"(cases {cases[0]} .. {cases[-1]}); fix: use the case ids of the key"
                )
            try:
                point = tuple(g * float(row[fields[a]]) for g, a in zip(sign, axes, strict=True))
            except (TypeError, ValueError):
                raise InputError(f"{p} line {line}: x, y, z must be numbers (mm); fix that row") from None
            marks.append(Mark(case, point, line))  # type: ignore[arg-type]
    return marks


def score_reads(
    cases: list[str],
    nodules: list[KeyNodule],
    marks: list[Mark],
    margin_mm: float = DEFAULT_MARGIN_MM,
    pairs: list[KeyPair] | None = None,
) -> dict[str, Any]:
    """Sensitivity, false positives per case, a per-texture breakdown and the matched pairs (see the module
    docstring)."""
    if margin_mm < 0:
        raise InputError(f"--margin-mm must be >= 0, got {margin_mm}")
    by_case: dict[str, list[KeyNodule]] = defaultdict(list)
    for n in nodules:
        by_case[n.case].append(n)
    hits: dict[tuple[str, int], int] = defaultdict(int)
    false_pos: dict[str, int] = defaultdict(int)
    duplicates = 0
    for m in marks:
        best, best_gap = None, np.inf
        for n in by_case.get(m.case, []):
            d = float(np.linalg.norm(np.subtract(m.point, n.centre_mm)))
            if d <= n.radius_mm + margin_mm and d - n.radius_mm < best_gap:
                best, best_gap = n, d - n.radius_mm
        if best is None:
            false_pos[m.case] += 1
            continue
        key = (best.case, best.nodule)
        duplicates += hits[key] > 0
        hits[key] += 1
    detected = [n for n in nodules if hits[(n.case, n.nodule)]]
    per_texture = {}
    for t in sorted({n.texture for n in nodules}):
        total = sum(n.texture == t for n in nodules)
        found = sum(n.texture == t for n in detected)
        per_texture[str(t)] = {"name": TEXTURE_NAMES[t], "nodules": total, "detected": found,
                               "sensitivity": found / total}  # fmt: skip
    n_fp = sum(false_pos.values())
    matched = []
    for p in pairs or []:
        marked = any(
            m.case == p.without_case
            and float(np.linalg.norm(np.subtract(m.point, p.centre_mm))) <= p.radius_mm + margin_mm
            for m in marks
        )
        found = hits.get((p.with_case, p.nodule), 0) > 0
        matched.append({"with_nodule": p.with_case, "without_nodule": p.without_case, "nodule": p.nodule,
                        "detected_with": found, "marked_without": marked})  # fmt: skip
    return {
        "cases": len(cases),
        "nodules": len(nodules),
        "detected": len(detected),
        "sensitivity": len(detected) / len(nodules) if nodules else None,
        "marks": len(marks),
        "false_positives": n_fp,
        "fp_per_case": n_fp / len(cases) if cases else 0.0,
        "duplicates": duplicates,
        "margin_mm": margin_mm,
        "per_texture": per_texture,
        "missed": [
            {"case": n.case, "nodule": n.nodule, "slice": n.slice} for n in nodules if n not in detected
        ],
        "false_positives_per_case": {c: false_pos[c] for c in cases if false_pos[c]},
        "matched_pairs": matched,
        "pairs_detected_with": sum(p["detected_with"] for p in matched),
        "pairs_marked_without": sum(p["marked_without"] for p in matched),
    }


def score_files(answers: str | os.PathLike, reads: str | os.PathLike, margin_mm: float = DEFAULT_MARGIN_MM):
    """Score a reads CSV against an answer key folder or ``answers.json``."""
    cases, nodules = read_answers(answers)
    return score_reads(cases, nodules, read_reads(reads, cases), margin_mm, read_pairs(answers))


def format_report(result: dict[str, Any]) -> str:
    """A plain-text report of :func:`score_reads`' result."""
    sens = result["sensitivity"]
    lines = [
        f"cases            {result['cases']}",
        f"nodules          {result['nodules']}",
        f"detected         {result['detected']}"
        + (f"  sensitivity {sens:.1%}" if sens is not None else "  (the key has no nodules)"),
        f"false positives  {result['false_positives']}  ({result['fp_per_case']:.2f} per case)",
        f"duplicate marks  {result['duplicates']}",
        f"hit rule         within nodule radius + {result['margin_mm']:g} mm",
    ]
    if result["per_texture"]:
        lines.append("per texture:")
        for t, row in result["per_texture"].items():
            lines.append(
                f"  {t} {row['name']:<26} {row['detected']}/{row['nodules']}  {row['sensitivity']:.1%}"
            )
    if result.get("matched_pairs"):
        n = len(result["matched_pairs"])
        lines.append(
            f"matched pairs    {n}: nodule found in the case with it {result['pairs_detected_with']}/{n}, "
            f"twin without it marked there (false positive) {result['pairs_marked_without']}/{n}"
        )
    if result["missed"]:
        lines.append("missed: " + ", ".join(f"{m['case']} nodule {m['nodule']} (slice {m['slice']})"
                                            for m in result["missed"]))  # fmt: skip
    return "\n".join(lines)
