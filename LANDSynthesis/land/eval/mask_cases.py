"""Conditional fidelity on a user's own masks: ``land demo-fidelity --masks DIR``.

``DIR`` holds one case per entry, in formats this project already owns:

* ``NAME.seg.nrrd``: a Slicer segmentation (``Lung*`` segments are the lungs, the others nodules with their
  ``LAND.Texture`` tags; :func:`land.imaging.io.read_masks`), or
* ``NAME/``: a dataset case folder with ``lung.nii.gz`` and optionally ``nodules.nii.gz`` and
  ``textures.json`` (:mod:`land.data.folder`), e.g. a lung mask from ``land lungs`` or "Lungs from CT".

Each case is generated with the model's defaults (or the options given) and measured on the model grid
against the masks as the model saw them: lung Dice, each nodule's HU, contrast and visibility
(:mod:`land.eval.fidelity`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging.maskset import MaskSet
from ..interface.errors import InputError

__all__ = ["find_mask_cases", "measure_mask_cases", "read_mask_case"]


def find_mask_cases(folder: str | Path) -> list[Path]:
    """The cases of a mask folder, sorted by name; :class:`InputError` when there are none."""
    from ..data.folder import LUNG_FILE

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--masks {root} is not a folder; fix: give a folder of .seg.nrrd files or cases")
    cases = sorted(p for p in root.iterdir() if p.name.endswith(".seg.nrrd") and p.is_file())
    cases += sorted(p for p in root.iterdir() if p.is_dir() and (p / LUNG_FILE).is_file())
    if not cases:
        raise InputError(
            f"--masks {root} holds no cases; fix: put NAME.seg.nrrd files or case folders (lung.nii.gz, "
            "optional nodules.nii.gz and textures.json) in it"
        )
    return sorted(cases, key=lambda p: p.name)


def case_name(path: Path) -> str:
    return path.name[: -len(".seg.nrrd")] if path.name.endswith(".seg.nrrd") else path.name


def read_mask_case(path: Path) -> MaskSet:
    """One case of a mask folder as a :class:`MaskSet`."""
    from ..data.folder import LUNG_FILE, NODULES_FILE, TEXTURES_FILE, read_textures
    from ..imaging.io import read_masks

    if path.is_file():
        return read_masks(path)
    nodules = path / NODULES_FILE
    masks = read_masks(path / LUNG_FILE, nodules if nodules.is_file() else None)
    if (path / TEXTURES_FILE).is_file():
        textures, problems = read_textures(path / TEXTURES_FILE)
        if problems:
            raise InputError(f"{path}: " + "; ".join(problems))
        masks.textures.update({k: v for k, v in textures.items() if k in masks.names})
    return masks


def measure_case(hu: np.ndarray, masks: MaskSet, spacing: tuple[float, ...], name: str) -> dict[str, Any]:
    """Lung Dice, parenchyma and per-nodule figures of a CT on the masks' grid."""
    from .fidelity import false_nodules, lung_dice, lung_parenchyma, nodule_stats

    lung = masks.lung.array > 0 if masks.lung is not None else np.zeros(hu.shape, bool)
    labels = masks.nodules.array if masks.nodules is not None else np.zeros(hu.shape, np.uint8)
    stats = nodule_stats(hu, lung, labels, masks.textures, spacing)
    mean, std = lung_parenchyma(hu, lung, labels)
    return {"case": name, "lung_dice": lung_dice(hu, lung, spacing), "lung_mean_hu": mean, "lung_std_hu": std,
            "nodules": [s.to_json() for s in stats],
            "false_nodules": false_nodules(hu, lung, labels, spacing)}  # fmt: skip


def measure_mask_cases(
    model_dir: Path,
    folder: str | Path,
    *,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    device: str = "auto",
    fit: str = "crop",
    guidance: float | None = None,
    guidance_mode: str | None = None,
    save_dir: Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Generate one CT per case of ``folder`` (seed ``seed``) and measure it (see the module doc)."""
    from ..imaging.io import write_volume
    from ..interface.contract import DEFAULT_SAMPLER
    from ..pipeline import LANDPipeline
    from .fidelity import fidelity_summary

    sampler = sampler or DEFAULT_SAMPLER
    pipe = LANDPipeline.from_pretrained(model_dir)
    scale, gmode = pipe.resolve_guidance(guidance, guidance_mode)
    cases: list[dict[str, Any]] = []
    t0 = time.monotonic()
    paths = find_mask_cases(folder)
    for i, path in enumerate(paths):
        name = case_name(path)
        grid_masks, ref = pipe.model_grid_masks(read_mask_case(path), fit)
        if grid_masks is None:
            raise InputError(f"{path} holds no masks; fix: paint the lungs (and nodules) in it")
        ct = pipe.generate(grid_masks, steps=steps, sampler=sampler, seed=seed, device=device,
                           guidance=scale, guidance_mode=gmode, fit=fit)  # fmt: skip
        figures = measure_case(ct.array.astype(np.float32), grid_masks, tuple(ref.spacing), name)
        figures["voxel_mm"] = [round(float(s), 3) for s in ref.spacing]
        cases.append(figures)
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            write_volume(Path(save_dir) / f"{name}.nii.gz", ct, ct.metadata)
        shown = sum(bool(s["visible"]) for s in figures["nodules"])
        log(f"case {i + 1}/{len(paths)} ({name}): lung Dice {figures['lung_dice']:.3f}, "
            f"{shown}/{len(figures['nodules'])} nodules visible")  # fmt: skip
    return {
        "model": str(model_dir),
        "model_name": pipe.config.name,
        "masks": str(folder),
        "seed": seed,
        "steps": steps,
        "sampler": sampler,
        "fit": fit,
        "guidance": {"scale": scale, "mode": gmode},
        "wall_time_s": round(time.monotonic() - t0, 1),
        "summary": fidelity_summary(cases),
        "cases": cases,
    }


def _hu(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.0f}"


def mask_case_table(result: dict[str, Any]) -> str:
    """Markdown: one row per case (lung Dice, parenchyma) and one per nodule (texture, size, HU, contrast)."""
    lines = [f"Conditional fidelity of {result['model_name']} on {result['masks']} ({result['sampler']}, "
             f"seed {result['seed']}, fit {result['fit']}, guidance {result['guidance']['scale']:g} "
             f"{result['guidance']['mode']})", "",
             "| case | voxel mm | lung Dice | parenchyma HU (mean / std) | nodule | texture | diameter mm | "
             "mean HU | contrast HU | visible |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for case in result["cases"]:
        head = (f"| {case['case']} | {case['voxel_mm'][0]:.2f} | {case['lung_dice']:.3f} | "
                f"{_hu(case['lung_mean_hu'])} / {_hu(case['lung_std_hu'])} |")  # fmt: skip
        if not case["nodules"]:
            lines.append(head + " – | | | | | |")
        for i, s in enumerate(case["nodules"]):
            lead = head if i == 0 else "| | | | |"
            shown = "yes" if s["visible"] else "no"
            lines.append(f"{lead} {s['label']} | {s['texture']} | {s['diameter_mm']:.1f} | "
                         f"{_hu(s['mean_hu'])} | {_hu(s['contrast_hu'])} | {shown} |")  # fmt: skip
    big = [s for c in result["cases"] for s in c["nodules"] if (s["diameter_mm"] or 0) >= 6.0]
    by_texture: dict[int, list[float]] = {}
    for s in big:
        if s["texture"] is not None and s["mean_hu"] is not None:
            by_texture.setdefault(int(s["texture"]), []).append(float(s["mean_hu"]))
    means = {t: float(np.mean(v)) for t, v in sorted(by_texture.items())}
    order = list(means)
    ordered = all(means[a] < means[b] for a, b in zip(order, order[1:], strict=False))
    shown = sum(bool(s["visible"]) for s in big)
    per_texture = ", ".join(f"{t}: {m:.0f}" for t, m in means.items()) or "–"
    order_note = f" ({'ordered' if ordered else 'not ordered'} by texture)" if len(means) > 1 else ""
    lines += [
        "",
        f"Nodules >= 6 mm visible: {shown} of {len(big)}; mean HU by texture: {per_texture}" + order_note,
    ]
    return "\n".join(lines)
