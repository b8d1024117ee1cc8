"""The trainees of a teaching session on disk: marks, submissions and grades (no Slicer, no trame).

One JSON record per trainee in ``WORK/trainees/<slug>.json`` (``WORK`` = ``--work-dir``, default
``SET/studio``), written atomically on every change, so a restarted server keeps drafts and submissions.
On submit the marks are also written as ``<slug>.reads.csv`` (columns ``case,x,y,z``, DICOM patient LPS mm,
full precision) and graded from that file by :func:`land.teaching.score.score_files`, exactly as
``land teaching-score --answers SET --reads <slug>.reads.csv`` grades it. The answer key is read only
here, on the server, and only for a trainee who has submitted (:meth:`Roster.graded`) or for the instructor.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from pathlib import Path
from typing import Any

from land.imaging.atomic import atomic_write_text
from land.interface.errors import InputError
from land.teaching.answers import answers_file, read_answers
from land.teaching.score import DEFAULT_MARGIN_MM, Mark, score_files, score_reads

FORMAT = "land-studio-trainee/1"
MAX_NAME = 80
INSTRUCTOR_FIELDS = (
    "name",
    "submitted_at",
    "cases",
    "marks",
    "nodules",
    "detected",
    "sensitivity",
    "false_positives",
    "fp_per_case",
    "duplicates",
    "reads_csv",
)


class SubmittedError(InputError):
    """The trainee has submitted: marks can no longer change."""


def clean_name(name: str) -> str:
    name = " ".join(str(name or "").split())
    if not name:
        raise InputError("Enter your name first.")
    if len(name) > MAX_NAME:
        raise InputError(f"A name of at most {MAX_NAME} characters, please.")
    return name


def slug(name: str) -> str:
    """A file name for a trainee: readable part + a hash of the exact name (two names never collide)."""
    name = clean_name(name)
    readable = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "trainee"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def browser_hash(browser_key: str) -> str:
    return hashlib.sha256(("land-studio:" + browser_key).encode()).hexdigest()


def _mark(raw: dict[str, Any], cases: list[str]) -> dict[str, Any]:
    case = str(raw.get("case", ""))
    if case not in cases:
        raise InputError(f"case {case!r} is not in this teaching set")
    try:
        x, y, z = (float(raw[k]) for k in ("x", "y", "z"))
    except (KeyError, TypeError, ValueError):
        raise InputError("a mark needs x, y, z in mm") from None
    return {"case": case, "x": x, "y": y, "z": z}


class Roster:
    """The teaching set ``set_dir`` and its trainees' records under ``work_dir`` (module docstring)."""

    def __init__(
        self, set_dir: str | Path, work_dir: str | Path | None = None, margin_mm: float = DEFAULT_MARGIN_MM
    ) -> None:
        self.setDir = Path(set_dir).resolve()
        answers_file(self.setDir)  # a folder without a key is not a teaching set: say so at start
        dicom = self.setDir / "dicom"
        self.cases = sorted(p.name for p in dicom.iterdir() if p.is_dir()) if dicom.is_dir() else []
        if not self.cases:
            raise InputError(
                f"{self.setDir} has no DICOM cases (dicom/case_001 ...); fix: give the folder "
                "that land teaching-set wrote"
            )
        self.workDir = Path(work_dir).resolve() if work_dir else self.setDir / "studio"
        self.dir = self.workDir / "trainees"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.margin = float(margin_mm)

    def caseFolder(self, case: str) -> Path:
        if case not in self.cases:
            raise InputError(f"case {case!r} is not in this teaching set")
        return self.setDir / "dicom" / case

    # ------------------------------------------------------------------ records
    def _path(self, name: str) -> Path:
        return self.dir / f"{slug(name)}.json"

    def record(self, name: str) -> dict[str, Any] | None:
        p = self._path(name)
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None

    def _write(self, rec: dict[str, Any]) -> None:
        atomic_write_text(self._path(rec["name"]), json.dumps(rec, indent=1) + "\n")

    def claim(self, name: str, browser_key: str) -> dict[str, Any]:
        """The trainee's record, created on first use and bound to the browser that created it (a cookie's
        value); another browser giving the same name is refused, so one trainee cannot open another's work."""
        name = clean_name(name)
        rec = self.record(name)
        if rec is None:
            rec = {
                "format": FORMAT,
                "name": name,
                "browser": browser_hash(browser_key),
                "marks": [],
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "submitted_at": None,
            }
            self._write(rec)
        elif rec.get("browser") != browser_hash(browser_key):
            raise InputError(
                f"The name {name!r} is already taken in this session; add a letter or an initial."
            )
        return rec

    def marks(self, name: str) -> list[dict[str, Any]]:
        rec = self.record(name)
        return list(rec["marks"]) if rec else []

    def saveMarks(self, name: str, marks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The trainee's draft marks (every change is on disk at once); refused after submission."""
        rec = self.record(name)
        if rec is None:
            raise InputError(f"no trainee {name!r} in this session")
        if rec.get("submitted_at"):
            raise SubmittedError("Your reads are submitted; marks can no longer change.")
        rec["marks"] = [_mark(m, self.cases) for m in marks]
        self._write(rec)
        return rec["marks"]

    def readsCsv(self, name: str) -> Path:
        return self.dir / f"{slug(name)}.reads.csv"

    def submit(self, name: str, marks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Write the reads CSV and grade it against the key with ``land teaching-score``'s rule."""
        if marks is not None:
            self.saveMarks(name, marks)
        rec = self.record(name)
        if rec is None:
            raise InputError(f"no trainee {name!r} in this session")
        if rec.get("submitted_at"):
            return rec["result"]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("case", "x", "y", "z"))
        for m in rec["marks"]:
            writer.writerow((m["case"], repr(m["x"]), repr(m["y"]), repr(m["z"])))
        atomic_write_text(self.readsCsv(name), buf.getvalue())
        rec["result"] = score_files(self.setDir, self.readsCsv(name), self.margin)
        rec["submitted_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._write(rec)
        return rec["result"]

    # ------------------------------------------------------------------ after submission
    def graded(self, name: str) -> dict[str, Any]:
        """The grade and, per case, each mark's verdict (hit / duplicate / false) and the key's nodules
        (found or missed): for the trainee's page once submitted, never before."""
        rec = self.record(name)
        if rec is None or not rec.get("submitted_at"):
            raise InputError("Submit your reads first.")
        cases, nodules = read_answers(self.setDir)
        per_case: dict[str, dict[str, Any]] = {c: {"marks": [], "nodules": []} for c in cases}
        hitBy: dict[tuple[str, int], int] = {}
        for i, m in enumerate(rec["marks"]):
            point = (m["x"], m["y"], m["z"])
            # the scoring rule itself, on this one mark: which nodule (if any) it hits
            alone = score_reads(cases, nodules, [Mark(m["case"], point, i + 2)], self.margin)
            missed = {(x["case"], x["nodule"]) for x in alone["missed"]}
            hit = next(((n.case, n.nodule) for n in nodules if (n.case, n.nodule) not in missed), None)
            verdict = "false" if hit is None else "duplicate" if hit in hitBy else "hit"
            if hit is not None:
                hitBy.setdefault(hit, i)
            per_case[m["case"]]["marks"].append(
                {**m, "index": i, "verdict": verdict, "nodule": hit[1] if hit else None}
            )
        for n in nodules:
            x, y, z = n.centre_mm
            per_case[n.case]["nodules"].append(
                {
                    "nodule": n.nodule,
                    "x": x,
                    "y": y,
                    "z": z,
                    "slice": n.slice,
                    "diameter_mm": n.diameter_mm,
                    "texture": n.texture,
                    "found": (n.case, n.nodule) in hitBy,
                }
            )
        return {"result": rec["result"], "submitted_at": rec["submitted_at"], "cases": per_case}

    def segmentation(self, case: str) -> Path | None:
        """The key's segmentation of a case (for the overlay after submission)."""
        p = self.setDir / "key" / "segmentations" / f"{case}.seg.nrrd"
        return p if p.is_file() else None

    # ------------------------------------------------------------------ instructor
    def rows(self) -> list[dict[str, Any]]:
        """One row per trainee (submitted or not), by name."""
        rows = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                rec = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if rec.get("format") != FORMAT:
                continue
            r = rec.get("result") or {}
            rows.append(
                {
                    "name": rec["name"],
                    "submitted_at": rec.get("submitted_at") or "",
                    "cases": len(self.cases),
                    "marks": len(rec.get("marks", [])),
                    "nodules": r.get("nodules", ""),
                    "detected": r.get("detected", ""),
                    "sensitivity": r.get("sensitivity", ""),
                    "false_positives": r.get("false_positives", ""),
                    "fp_per_case": r.get("fp_per_case", ""),
                    "duplicates": r.get("duplicates", ""),
                    "reads_csv": str(self.readsCsv(rec["name"])) if rec.get("submitted_at") else "",
                }
            )
        return sorted(rows, key=lambda r: r["name"].lower())

    def csvText(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=INSTRUCTOR_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return buf.getvalue()
