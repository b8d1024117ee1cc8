"""Building a teaching set: plan, generate, export DICOM, write the key and the instructor sheet.

Output folder::

    teaching.json                  settings (a rerun with other settings into the same folder is refused)
    dicom/case_001/IM0001.dcm ...  one DICOM CT series per case: give this folder to trainees
    key/answers.csv, answers.json  the answer key (instructor only)
    key/index.html                 instructor sheet with thumbnails/case_001.png ...
    key/segmentations/case_001.seg.nrrd   lungs and nodules (labels = nodule ids) on the CT's grid
    key/cases/case_001.json        per-case record, written last: a case with a valid record is skipped

Resumable (finished cases are skipped) and shardable under ``torchrun`` (case ``i`` goes to rank
``i mod world``); the key and sheet are written by whichever rank finds every case finished.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging.atomic import atomic_write_text
from ..imaging.io import write_seg_nrrd
from ..imaging.volume import Volume
from ..interface.contract import DEFAULT_PRECISION, DEFAULT_SAMPLER
from ..interface.errors import InputError
from ..interface.sharding import rank_and_world, rank_share
from ..pipeline import LANDPipeline, resolve_device, resolve_precision
from ..sampling.guidance import is_guided
from .answers import write_answers
from .dicom_export import LABEL, write_ct_series
from .plan import (
    CasePlan,
    TeachingSettings,
    case_ids,
    lung_mask_files,
    nodule_case_indices,
    plan_case,
    settings_hash,
)
from .sheet import thumbnail_slice, write_index, write_thumbnail

SAMPLER = DEFAULT_SAMPLER
Progress = Callable[[dict[str, Any]], None]


@dataclass
class BuildResult:
    out: Path
    generated: list[str]
    skipped: list[str]
    complete: bool
    answers: Path | None = None
    index: Path | None = None


def full_settings(
    settings: TeachingSettings,
    pipe: LANDPipeline,
    steps: int | None,
    burn_in: bool,
    guidance: tuple[float, str] = (1.0, "none"),
    precision: str = "fp32",
) -> dict:
    """Everything that determines the set's content (hashed into its id; guidance only when it is on and
    precision only when not fp32, so the ids of earlier sets stay what they were)."""
    extra: dict = {"guidance": {"scale": guidance[0], "mode": guidance[1]}} if is_guided(*guidance) else {}
    if precision != "fp32":
        extra["precision"] = precision
    return {
        **extra,
        **settings.to_json(),
        "textures": list(settings.textures),
        "diameters": list(settings.diameters),
        "steps": steps,
        "sampler": SAMPLER,
        "burn_in": burn_in,
        "model": pipe.model_id,
        "grid_size": list(pipe.config.grid_size),
        "spacing": list(pipe.config.spacing),
    }


SET_ENTRIES = frozenset({"teaching.json", "dicom", "key"})


def refuse_foreign_folder(out: str | os.PathLike) -> None:
    """InputError (exit 2) when ``out`` is a folder holding something other than a teaching set (a dataset,
    a home folder): a set is written into a new or empty folder, or resumed in its own."""
    p = Path(out)
    if not p.is_dir() or (p / "teaching.json").is_file():
        return
    foreign = sorted(e.name for e in p.iterdir() if e.name not in SET_ENTRIES and not e.name.startswith("."))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(
            f"--out {p} is a folder that holds other things ({shown}), not a teaching set; fix: choose a new "
            "or empty folder (a set is resumed only in the folder it was started in); nothing was written"
        )


def _check_folder(out: Path, settings: dict) -> str:
    refuse_foreign_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("dicom", "key/cases", "key/segmentations", "key/thumbnails"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    marker = out / "teaching.json"
    set_id = settings_hash(settings)
    if marker.is_file():
        try:
            old = json.loads(marker.read_text(encoding="utf-8")).get("settings")
        except ValueError:
            old = None
        if old != settings:
            raise InputError(
                f"{out} holds a teaching set made with other settings ({marker}); fix: choose another --out, "
                "or delete that folder to start again (same settings resume it)"
            )
    else:
        atomic_write_text(marker, json.dumps({"format": "land-teaching-set/1", "set_id": set_id,
                                              "settings": settings}, indent=1) + "\n")  # fmt: skip
    return set_id


def _finished(out: Path, case: str, set_id: str) -> dict | None:
    """The case's record when the case is complete and belongs to this set."""
    path = out / "key" / "cases" / f"{case}.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if rec.get("set_id") != set_id:
        return None
    dicom = out / rec["dicom"]
    if not dicom.is_dir() or len(list(dicom.glob("*.dcm"))) != rec["slices"]:
        return None
    if not (out / "key" / rec["segmentation"]).is_file() or not (out / "key" / rec["thumbnail"]).is_file():
        return None
    return rec


def _device(device: str) -> str:
    """Under torchrun with several GPUs, ``auto`` means this rank's GPU."""
    import torch

    if device == "auto" and torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return device


def make_teaching_set(
    out: str | os.PathLike,
    settings: TeachingSettings,
    pipe: LANDPipeline,
    *,
    steps: int | None = None,
    burn_in: bool = True,
    device: str = "auto",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    rank: int | None = None,
    world: int | None = None,
    guidance: float | None = None,
    guidance_mode: str | None = None,
    precision: str = DEFAULT_PRECISION,
) -> BuildResult:
    """Generate (this rank's share of) a teaching set into ``out``; see the module docstring.

    ``progress`` receives the pipeline's ``{"stage": "denoise"|"decode", ...}`` events and, before each
    case, ``{"stage": "case", "step": i, "total": n, "eta_s": s, "case": id}`` (i cases of this rank done).
    ``guidance`` / ``guidance_mode``: classifier-free guidance (default: the model's recommended);
    ``precision``: as :meth:`LANDPipeline.generate`.
    """
    settings.validate()
    lung_files = lung_mask_files(settings.lung_masks) if settings.lung_masks else None
    out = Path(out)
    scale, gmode = pipe.resolve_guidance(guidance, guidance_mode)
    precision = resolve_precision(precision, resolve_device(device))  # the set's id names what ran
    full = full_settings(settings, pipe, steps, burn_in, (scale, gmode), precision)
    set_id = _check_folder(out, full)
    if rank is None or world is None:
        rank, world = rank_and_world()
    ids = case_ids(settings.cases)
    with_nodules = nodule_case_indices(settings)
    mine = rank_share(list(range(settings.cases)), rank, world)
    dev = _device(device)
    generated: list[str] = []
    skipped: list[str] = []
    times: list[float] = []
    for done, i in enumerate(mine):
        if progress is not None:
            eta = float(np.mean(times)) * (len(mine) - done) if times else None
            progress({"stage": "case", "step": done, "total": len(mine), "eta_s": eta, "case": ids[i]})
        if _finished(out, ids[i], set_id) is not None:
            skipped.append(ids[i])
            continue
        t0 = time.monotonic()
        plan = plan_case(
            settings, i, pipe.config.grid_size, pipe.config.spacing, lung_files, i in with_nodules
        )
        ct = pipe.generate(plan.masks(), steps=steps, sampler=SAMPLER, seed=plan.seed, device=dev,
                           progress=progress, cancel=cancel, guidance=scale, guidance_mode=gmode,
                           precision=precision)  # fmt: skip
        if not ct.same_geometry(plan.lung):
            raise RuntimeError(f"{ids[i]}: the CT is not on the planned grid")  # pipeline contract broken
        _write_case(out, plan, ct, set_id, pipe, burn_in)
        times.append(time.monotonic() - t0)
        generated.append(ids[i])
    if progress is not None and mine:
        progress(
            {"stage": "case", "step": len(mine), "total": len(mine), "eta_s": 0.0, "case": ids[mine[-1]]}
        )
    return _finish(out, ids, set_id, full, generated, skipped)


def _write_case(
    out: Path,
    plan: CasePlan,
    ct: Volume,
    set_id: str,
    pipe: LANDPipeline,
    burn_in: bool,
) -> dict:
    """Write one case's DICOM series, segmentation, thumbnail and (last) its record."""
    case = plan.case
    meta = ct.metadata
    series = write_ct_series(
        out / "dicom" / case,
        ct,
        case=case,
        patient_id=f"SYNTH-{set_id[:8]}-{case}",
        study_description=f"{LABEL} teaching set {set_id[:8]}",
        series_description=f"{LABEL} CT {case}",
        burn_in=burn_in,
        model_id=pipe.model_id,
        comments=(f"{LABEL}: generated image, not a patient. Model {pipe.model_id}"
                  f"{'' if pipe.config.trained else ' (UNTRAINED)'}, seed {plan.seed}, {meta.get('steps')} "
                  f"{SAMPLER} steps, teaching set {set_id}."),
    )  # fmt: skip
    seg_rel, thumb_rel = f"segmentations/{case}.seg.nrrd", f"thumbnails/{case}.png"
    write_seg_nrrd(out / "key" / seg_rel, plan.masks())
    nodules = [
        {"nodule": n.nodule, "centre_mm": list(n.centre_mm), "index_xyz": list(n.index_xyz),
         "slice": n.index_xyz[2] + 1, "diameter_mm": n.diameter_mm, "texture": n.texture,
         "sop_instance_uid": series.sop_uids[n.index_xyz[2]]}
        for n in plan.nodule_plans
    ]  # fmt: skip
    k = thumbnail_slice(plan.nodules.array, nodules)
    write_thumbnail(out / "key" / thumb_rel, ct.array[k], plan.nodules.array[k])
    record = {
        "set_id": set_id,
        "case": case,
        "dicom": f"dicom/{case}",
        "segmentation": seg_rel,
        "thumbnail": thumb_rel,
        "thumbnail_slice": k + 1,
        "slices": len(series.files),
        "study_uid": series.study_uid,
        "series_uid": series.series_uid,
        "frame_of_reference_uid": series.frame_uid,
        "nodules": nodules,
        "plan": plan.to_json(),
        "provenance": meta,
    }
    atomic_write_text(out / "key" / "cases" / f"{case}.json", json.dumps(record, indent=1) + "\n")
    return record


def _finish(
    out: Path, ids: list[str], set_id: str, full: dict, generated: list[str], skipped: list[str]
) -> BuildResult:
    records = [_finished(out, c, set_id) for c in ids]
    if any(r is None for r in records):
        return BuildResult(out, generated, skipped, complete=False)
    recs: list[dict] = [r for r in records if r is not None]
    _, answers = write_answers(out / "key", recs, {"set_id": set_id, **full})
    index = write_index(out / "key", recs, {"set_id": set_id, **full})
    return BuildResult(out, generated, skipped, complete=True, answers=answers, index=index)
