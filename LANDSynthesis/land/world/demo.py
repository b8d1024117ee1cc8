"""The bundled demo: its default mask set, its conditional-fidelity check and the one command that trains it.

* ``land demo-masks --out DIR`` writes the default mask set (lungs of a held-out phantom plus three nodules
  of textures 1, 3 and 5) used by ``land generate`` when no ``--mask`` is given.
* ``land demo-fidelity [--model DIR]`` generates CTs from held-out phantom masks (seeds never used in
  training) and measures lung Dice, nodule HU against texture (Spearman) and nodule visibility.
* ``land train-demo --out DIR`` reproduces the bundled model: phantoms, ``train-vae``, ``train-ldm``,
  the fidelity check and the model card, each stage as its own ``land`` child process (resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..imaging.atomic import preflight_outputs
from ..imaging.maskset import MaskSet
from ..imaging.volume import Volume
from ..interface.contract import (
    DEFAULT_SAMPLER,
    FIT_HELP,
    FITS,
    GUIDANCE_DEFAULTS,
    MAX_FIDELITY_CASES,
    MAX_GRID_SIDE,
    SAMPLERS,
    count_argument,
    guidance_text,
    sampler_help,
    steps_help,
)
from ..interface.errors import InputError
from ..resources import demo_model_dir

if TYPE_CHECKING:
    from .phantom import PhantomCase

DEMO_MASK_FILE = "demo_masks.seg.nrrd"
DEMO_MASK_SEED = 4242  # phantom anatomy of the demo masks: outside training (1000-1159) and fidelity seeds
TRAIN_SEED = 1000
TRAIN_CASES = 160
FIDELITY_SEED = 9000
FIDELITY_CASES = 20


@dataclass(frozen=True)
class DemoNodule:
    texture: int
    diameter_mm: float
    side: str  # "right" or "left" (patient side)
    level: float  # 0 = lung base .. 1 = apex


DEMO_NODULES = (
    DemoNodule(texture=1, diameter_mm=22.0, side="right", level=0.7),
    DemoNodule(texture=3, diameter_mm=18.0, side="left", level=0.55),
    DemoNodule(texture=5, diameter_mm=14.0, side="right", level=0.3),
)


def _nodule_centre(lung: Volume, dist: np.ndarray, nodule: DemoNodule, taken: list[tuple[np.ndarray, float]]
                   ) -> np.ndarray:  # fmt: skip
    """The physical centre, deep enough in the lung for the nodule, nearest its side/level target."""
    radius = nodule.diameter_mm / 2
    zz, yy, xx = np.nonzero(dist >= radius + 4.0)
    if len(zz) == 0:
        raise InputError(f"the demo lung mask has no room for a {nodule.diameter_mm} mm nodule")
    idx = np.stack([xx, yy, zz], 1).astype(np.float64)
    direction = np.asarray(lung.direction).reshape(3, 3)
    pts = np.asarray(lung.origin) + (idx * np.asarray(lung.spacing)) @ direction.T
    # LPS: +x is the patient's left; the sides split at the lungs' mid-plane (any placement of the scan)
    x_mid = _lung_mid_x(lung)
    side = pts[:, 0] > x_mid if nodule.side == "left" else pts[:, 0] < x_mid
    z_lo, z_hi = np.percentile(pts[:, 2], [5, 95])
    target_z = z_lo + nodule.level * (z_hi - z_lo)
    ok = side.copy()
    for centre, r in taken:
        ok &= np.linalg.norm(pts - centre, axis=1) > radius + r + 15.0
    if not ok.any():
        raise InputError("could not place the demo nodules apart from each other")
    depth = dist[zz, yy, xx]
    score = np.abs(pts[:, 2] - target_z) - 0.5 * depth  # near the level, and deep inside the lung
    score[~ok] = np.inf
    return pts[int(np.argmin(score))]


def _lung_mid_x(lung: Volume) -> float:
    """Physical x (LPS: right to left) of the centre of the lung mask's bounding box."""
    from ..imaging.grid import bounding_box

    box = bounding_box(lung.array > 0)
    if box is None:
        return 0.0
    centre = 0.5 * (box[0] + box[1]) * np.asarray(lung.spacing)
    return float(np.asarray(lung.origin)[0] + (np.asarray(lung.direction).reshape(3, 3) @ centre)[0])


def make_demo_masks(size: int = 128, spacing: float = 2.0) -> MaskSet:
    """The default mask set: phantom lungs (seed ``DEMO_MASK_SEED``) and nodules of textures 1, 3 and 5."""
    from .phantom import lung_mask_phantom

    return paint_demo_nodules(lung_mask_phantom(DEMO_MASK_SEED, size, spacing))


def paint_demo_nodules(
    lung: Volume, nodules: tuple[DemoNodule, ...] = DEMO_NODULES, seed: int = DEMO_MASK_SEED
) -> MaskSet:
    """Any lung mask with the demo's nodules (textures 1, 3, 5 at set sides and heights) painted into it."""
    from scipy.ndimage import distance_transform_edt

    from .phantom import place_nodule

    lung = lung.with_array((lung.array > 0).astype(np.uint8))
    dist = distance_transform_edt(lung.array > 0, sampling=tuple(reversed(lung.spacing)))
    image = lung.with_array(np.zeros(lung.array.shape, np.float32))
    labels = lung.with_array(np.zeros(lung.array.shape, np.uint8))
    taken: list[tuple[np.ndarray, float]] = []
    textures: dict[int, int] = {}
    names: dict[int, str] = {}
    for label, nodule in enumerate(nodules, start=1):
        centre = _nodule_centre(lung, dist, nodule, taken)
        n = place_nodule(image, labels, centre, nodule.diameter_mm, nodule.texture, label,
                         rng=seed + label, lung=lung.array)  # fmt: skip
        if n == 0:
            raise InputError(f"demo nodule {label} could not be placed")
        taken.append((centre, nodule.diameter_mm / 2))
        textures[label] = nodule.texture
        names[label] = f"Nodule {label}"
    return MaskSet(lung=lung, nodules=labels, textures=textures, names=names)


def write_demo_masks(out: Path, size: int = 128, spacing: float = 2.0) -> Path:
    """Write the default mask set as a Slicer segmentation ``out/demo_masks.seg.nrrd``."""
    from ..imaging.io import write_seg_nrrd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / DEMO_MASK_FILE
    write_seg_nrrd(path, make_demo_masks(size, spacing))
    return path


# ------------------------------------------------------------------------------------------ fidelity
def heldout_phantom(
    seed: int, size: tuple[int, int, int], spacing: tuple[float, float, float], deform: bool = False
) -> PhantomCase:
    """The held-out phantom ``seed`` on the given grid (1-3 nodules, textures 1..5; ``deform``: warped as
    the wide-field training phantoms are, :mod:`land.world.phantom_deform`)."""
    from .phantom import make_phantom

    return make_phantom(seed, size, spacing, n_nodules=(1, 3), deform=deform)


def phantom_masks(case: PhantomCase) -> MaskSet:
    """A phantom's lung mask, nodule labels and textures as a :class:`MaskSet`."""
    return MaskSet(lung=case.lung, nodules=case.nodules, textures=dict(case.textures))


def measure_fidelity(
    model_dir: Path,
    n: int = FIDELITY_CASES,
    seed: int = FIDELITY_SEED,
    steps: int | None = None,
    sampler: str = DEFAULT_SAMPLER,
    device: str = "auto",
    save_dir: Path | None = None,
    log=print,
    references: bool = True,
    guidance: float | None = None,
    guidance_mode: str | None = None,
    deform: bool = False,
) -> dict[str, Any]:
    """Generate from ``n`` held-out phantom mask sets and measure conditional fidelity (see module doc).

    With ``references`` the same figures are measured on the held-out phantoms themselves and on their
    reconstructions by the model's VAE (``result["reference"]``): what a perfect generator could score on
    this grid, and what one limited by this VAE could. ``guidance`` / ``guidance_mode``: as
    :meth:`LANDPipeline.generate` (default: the model's recommended guidance).
    """
    import torch

    from ..data.folder import hu_to_unit
    from ..eval.fidelity import fidelity_summary
    from ..eval.mask_cases import measure_case
    from ..imaging.io import write_volume
    from ..pipeline import LANDPipeline, resolve_device
    from ..train.vae_trainer import reconstruct

    if seed < TRAIN_SEED + TRAIN_CASES and seed + n > TRAIN_SEED:
        raise InputError(
            f"fidelity seeds {seed}..{seed + n - 1} overlap the demo training seeds "
            f"{TRAIN_SEED}..{TRAIN_SEED + TRAIN_CASES - 1}; choose --seed {FIDELITY_SEED}"
        )
    pipe = LANDPipeline.from_pretrained(model_dir)
    cfg = pipe.config
    scale, gmode = pipe.resolve_guidance(guidance, guidance_mode)
    size = tuple(int(s) for s in cfg.grid_size)
    spacing = tuple(float(s) for s in cfg.spacing)
    lo, hi = cfg.intensity["hu_min"], cfg.intensity["hu_max"]
    cases: list[dict[str, Any]] = []
    refs: dict[str, list[dict[str, Any]]] = {"phantom": [], "vae_reconstruction": []}
    t0 = time.monotonic()

    def measure(hu: np.ndarray, masks: MaskSet, case_seed: int) -> dict[str, Any]:
        return {"seed": case_seed, **measure_case(hu, masks, spacing, f"phantom_{case_seed}")}

    for i in range(n):
        phantom = heldout_phantom(seed + i, size, spacing, deform)  # type: ignore[arg-type]
        masks = phantom_masks(phantom)
        ct = pipe.generate(masks, steps=steps, sampler=sampler, seed=seed + i, device=device,
                           match_input=True, guidance=scale, guidance_mode=gmode)  # fmt: skip
        cases.append(measure(ct.array.astype(np.float32), masks, seed + i))
        dice, stats = cases[-1]["lung_dice"], cases[-1]["nodules"]
        if references:
            image = phantom.image.array.astype(np.float32)
            refs["phantom"].append(measure(image, masks, seed + i))
            x = torch.from_numpy(hu_to_unit(image, lo, hi))[None, None]
            mask = pipe.decoder_condition(pipe.model_grid_conditioning(masks, cfg.mode)[0])  # mask decoders
            with torch.no_grad():
                y = reconstruct(pipe.vae.eval(), x, resolve_device(device), mask)[0, 0].clamp(0, 1).numpy()
            refs["vae_reconstruction"].append(measure(y * (hi - lo) + lo, masks, seed + i))
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            write_volume(Path(save_dir) / f"phantom_{seed + i}.nii.gz", ct, ct.metadata)
        log(f"case {i + 1}/{n} (seed {seed + i}): lung Dice {dice:.3f}, "
            f"{sum(bool(s['visible']) for s in stats)}/{len(stats)} nodules visible")  # fmt: skip
    summary = fidelity_summary(cases)
    result = {
        "model": str(model_dir),
        "model_name": cfg.name,
        "held_out_seeds": [seed, seed + n - 1],
        "deformed_phantoms": deform,
        "steps": steps,
        "sampler": sampler,
        "guidance": {"scale": scale, "mode": gmode},
        "wall_time_s": round(time.monotonic() - t0, 1),
        "summary": _plain(summary),
        "cases": _plain(cases),
    }
    if references:
        result["reference"] = {k: {"summary": _plain(fidelity_summary(v)), "cases": _plain(v)}
                               for k, v in refs.items()}  # fmt: skip
    return result


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays to JSON-ready Python values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


TARGETS = {"lung_dice": 0.93, "spearman_rho": 0.85, "visible_share": 0.90}  # issue 25's targets
SUMMARY_KEYS = {"lung_dice": "lung_dice_mean", "spearman_rho": "texture_hu_spearman_rho",
                "visible_share": "share_visible"}  # fmt: skip
TEXTURE_HU_TOLERANCE = 100.0  # generated mean nodule HU per texture vs the phantoms' own
RING_HU_TOLERANCE = 100.0  # mean HU 1-5 mm around nodules >= 6 mm vs the phantoms' own (no halo)
PARENCHYMA_HU_TOLERANCE = 50.0  # generated lung parenchyma mean and std vs the phantoms'
ORDERED_TEXTURES = ("1", "3", "5")


def _target_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets judge: lung Dice over all cases; rho and share visible over the nodules of
    at least the size split (6 mm: smaller ones are a handful of voxels at 2 mm, see the module doc)."""
    large = (summary.get("by_size") or {}).get("at_or_above") or {}
    return {"lung_dice": summary.get("lung_dice_mean"), "spearman_rho": large.get("texture_hu_spearman_rho"),
            "visible_share": large.get("share_visible")}  # fmt: skip


def unmet_targets(result: dict[str, Any]) -> list[str]:
    """Names of the fidelity targets ``result`` (from :func:`measure_fidelity`) misses: lung Dice >= 0.93,
    nodules >= 6 mm visible >= 90 % with Spearman rho >= 0.85 and, with the phantom reference: mean HU per
    texture rising 1 < 3 < 5, each within 100 HU of the phantoms' own, the ring 1-5 mm around nodules
    within 100 HU of the phantoms', lung parenchyma mean and std within 50 HU of the phantoms'."""
    s = result["summary"]
    figures = _target_figures(s)
    missed = []
    for name, target in TARGETS.items():
        value = figures[name]
        if value is None or not value >= target:
            missed.append(f"{name} {'n/a' if value is None else f'{value:.3f}'} < {target}")
    gen = s.get("by_texture") or {}
    means = [gen[t]["mean_hu"] for t in ORDERED_TEXTURES if t in gen]
    if len(means) == len(ORDERED_TEXTURES) and not all(a < b for a, b in zip(means, means[1:], strict=False)):
        missed.append("texture order: mean HU of textures 1, 3, 5 is " + ", ".join(f"{m:.0f}" for m in means))
    phantom = ((result.get("reference") or {}).get("phantom") or {}).get("summary")
    if phantom:
        ref = phantom.get("by_texture") or {}
        for t in sorted(set(gen) & set(ref)):
            diff = gen[t]["mean_hu"] - ref[t]["mean_hu"]
            if abs(diff) > TEXTURE_HU_TOLERANCE:
                missed.append(
                    f"texture {t} mean HU {gen[t]['mean_hu']:.0f} is {diff:+.0f} from the phantoms'"
                )
        g, r = s.get("ring_mean_hu"), phantom.get("ring_mean_hu")
        if g is not None and r is not None and abs(g - r) > RING_HU_TOLERANCE:
            missed.append(f"ring around nodules {g:.0f} HU vs the phantoms' {r:.0f} (a halo)")
        for key in ("lung_mean_hu", "lung_std_hu"):
            g, r = s.get(key), phantom.get(key)
            if g is not None and r is not None and abs(g - r) > PARENCHYMA_HU_TOLERANCE:
                missed.append(f"lung parenchyma {key[5:9]} {g:.0f} HU vs the phantoms' {r:.0f}")
    return missed


def _shown(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _hu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def fidelity_table(result: dict[str, Any]) -> str:
    """Markdown tables of the fidelity figures against the demo model's targets, with the references
    (the phantoms themselves, their VAE reconstructions) and the split by nodule size when present."""
    s = result["summary"]
    refs = {k: v["summary"] for k, v in (result.get("reference") or {}).items()}
    names = {"phantom": "Phantom itself", "vae_reconstruction": "VAE reconstruction"}
    rows = [
        ("Lung Dice (mean)", "lung_dice"),
        ("Spearman rho, texture vs nodule HU (>= 6 mm)", "spearman_rho"),
        ("Nodules visible (>= 6 mm)", "visible_share"),
    ]
    head = "| Measure | Generated | Target | Met |" + "".join(f" {names.get(k, k)} |" for k in refs)
    lines = [head, "|---|---|---|---|" + "---|" * len(refs)]
    figures = _target_figures(s)
    ref_figures = [_target_figures(r) for r in refs.values()]
    for label, name in rows:
        value, target = figures[name], TARGETS[name]
        met = value is not None and not (isinstance(value, float) and np.isnan(value)) and value >= target
        extra = "".join(f" {_shown(r[name])} |" for r in ref_figures)
        lines.append(f"| {label} | {_shown(value)} | >= {target} | {'yes' if met else 'NO'} |{extra}")
    phantom = refs.get("phantom", {})
    for label, key in (
        ("Lung parenchyma mean HU", "lung_mean_hu"),
        ("Lung parenchyma std HU", "lung_std_hu"),
    ):
        value, ref = s.get(key), phantom.get(key)
        met = (
            "n/a"
            if value is None or ref is None
            else "yes"
            if abs(value - ref) <= PARENCHYMA_HU_TOLERANCE
            else "NO"
        )
        extra = "".join(f" {_hu(r.get(key))} |" for r in refs.values())
        lines.append(f"| {label} | {_hu(value)} | phantom +- {PARENCHYMA_HU_TOLERANCE:g} | {met} |{extra}")
    value, ref = s.get("ring_mean_hu"), phantom.get("ring_mean_hu")
    met = "n/a" if value is None or ref is None else "yes" if abs(value - ref) <= RING_HU_TOLERANCE else "NO"
    extra = "".join(f" {_hu(r.get('ring_mean_hu'))} |" for r in refs.values())
    lines.append(f"| Ring 1-5 mm around nodules >= 6 mm, mean HU | {_hu(value)} | phantom +- "
                 f"{RING_HU_TOLERANCE:g} | {met} |{extra}")  # fmt: skip
    value = s.get("false_nodules_per_case")
    extra = "".join(f" {_shown(r.get('false_nodules_per_case'))} |" for r in refs.values())
    lines.append(f"| False nodules per case (compact, > -300 HU, >= 5 mm, unpainted) | {_shown(value)} | "
                 f"<= the plain decoder's | see card |{extra}")  # fmt: skip
    by_size = s.get("by_size")
    if by_size:
        split = by_size["split_mm"]
        lines += [
            "",
            f"By nodule size (equivalent diameter; split at {split:g} mm):",
            "",
            "| Nodules | Source | Count | Spearman rho | Visible |",
            "|---|---|---|---|---|",
        ]
        sources = {"Generated": s, **{names.get(k, k): r for k, r in refs.items()}}
        for part, label in (("below", f"< {split:g} mm"), ("at_or_above", f">= {split:g} mm")):
            for source, summ in sources.items():
                f = (summ.get("by_size") or {}).get(part) or {}
                rho, visible = _shown(f.get("texture_hu_spearman_rho")), _shown(f.get("share_visible"))
                lines.append(f"| {label} | {source} | {f.get('nodules', 0)} | {rho} | {visible} |")
    by_tex = s.get("by_texture") or {}
    if by_tex:
        ref_tex = {k: r.get("by_texture") or {} for k, r in refs.items()}
        lines += ["", "Mean nodule HU (std) by texture:", "",
                  "| Texture | Nodules | Generated |" + "".join(f" {names.get(k, k)} |" for k in refs),
                  "|---|---|---|" + "---|" * len(refs)]  # fmt: skip
        for t, v in sorted(by_tex.items()):
            extra = "".join(
                f" {r[t]['mean_hu']:.0f} ({r[t]['std_hu']:.0f}) |" if t in r else " n/a |"
                for r in ref_tex.values()
            )
            lines.append(f"| {t} | {v['n']} | {v['mean_hu']:.0f} ({v['std_hu']:.0f}) |{extra}")
    guidance = guidance_text(**(result.get("guidance") or GUIDANCE_DEFAULTS))
    lines += ["", f"{s.get('nodules', 0)} nodules in {s.get('cases', 0)} cases; median contrast-to-noise "
              f"{s.get('cnr_median') or float('nan'):.2f}; guidance {guidance}."]  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- train-demo
def _run(stage: str, argv: list[str], log) -> float:
    log(f"[train-demo] {stage}: land {' '.join(argv)}")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "land", *argv], check=False)
    if res.returncode != 0:
        raise InputError(f"stage {stage} failed with exit code {res.returncode}; fix the cause and rerun "
                         "land train-demo with the same --out to resume")  # fmt: skip
    return time.monotonic() - t0


def portable_provenance(value: Any) -> Any:
    """Provenance without the build machine's paths: every absolute path (in any string, nested) becomes its
    last component (``/work/runs/ldm`` -> ``ldm``), so a shipped model names its sources, not a machine."""
    import re

    if isinstance(value, dict):
        return {k: portable_provenance(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_provenance(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"(?<![\w.])/(?:[^\s/'\"(),;]+/)+([^\s/'\"(),;]+)", r"\1", value)
    return value


def package_demo_model(src: Path, dest: Path) -> Path:
    """Copy the trained model ``src`` to ``dest`` as ``land-demo-phantom`` with float16 weights on disk.

    Float16 halves the files (the small U-Net is 62 MB in float32; the bundle must stay under 50 MB). The
    networks still compute in float32: loading casts the weights back. Hashes are recomputed and verified.
    """
    import torch

    from ..models.model_dir import ModelConfig, load_weights, read_model_json, save_model_dir

    meta = read_model_json(src)
    cfg = ModelConfig.from_json(meta)
    weights = load_weights(src, meta)  # sha256-verified
    half = {
        key: {n: t.to(torch.float16) if t.is_floating_point() else t for n, t in sd.items()}
        for key, sd in weights.items()
    }
    cfg.name = "land-demo-phantom"
    cfg.provenance = portable_provenance(dict(cfg.provenance))
    cfg.provenance["weights_dtype"] = "float16 on disk (cast from float32 EMA weights; computed in float32)"
    cfg.provenance["float32_weights_sha256"] = dict(meta.get("weights", {}))
    return save_model_dir(dest, cfg, half)


FINETUNE_CONFIG = "demo-finetune"
WIDE_CONFIG, WIDE_DECODER_CONFIG = "demo-wide", "demo-wide-decoder"  # the 320 mm wide-field fine-tunes
WIDE_CASES = 200


def train_demo(
    out: Path,
    config: str,
    vae_steps: int | None,
    ldm_steps: int | None,
    log=print,
    finetune: str | None = FINETUNE_CONFIG,
    wide: bool = True,
) -> Path:
    """Phantoms -> train-vae -> train-ldm -> (fine-tune, ``finetune`` config: mask injection and condition
    dropout for guidance, from the U-Net just trained) -> (``wide``: deformed phantoms at 128^3 x 2.5 mm,
    the U-Net fine-tuned on them (``demo-wide``) beside a decoder-only fine-tune with the mask decoder
    (``demo-wide-decoder``), joined by :func:`land.train.snapshot.snapshot_model`) -> float16 package ->
    fidelity -> model card."""
    from ..train.pipeline_run import resume_arguments, training_finished

    out = Path(out)
    data, vae, ldm = out / "data", out / "vae", out / "ldm"
    timings: dict[str, float] = {}
    phantoms = ["phantoms", "--n", str(TRAIN_CASES), "--size", "128", "--spacing", "2",
                "--seed", str(TRAIN_SEED), "--out", str(data)]  # fmt: skip
    timings["phantoms"] = _run("phantoms", phantoms, log)
    stages = [("vae", config, vae, [], vae_steps, data),
              ("ldm", config, ldm, ["--vae", str(vae)], ldm_steps, data)]  # fmt: skip
    if finetune:
        tuned = ["--vae", str(ldm), "--init-from", str(ldm)]
        stages.append(("ldm", finetune, out / "ldm-finetune", tuned, None, data))
    base = out / "ldm-finetune" if finetune else ldm
    wide_data = out / "wide-data"
    if wide:
        phantoms = ["phantoms", "--n", str(WIDE_CASES), "--size", "128", "--spacing", "2.5", "--seed",
                    str(TRAIN_SEED), "--nodules", "2-4", "--deform", "--without-nodules", "--lung-from-ct",
                    "0.5", "--out", str(wide_data)]  # fmt: skip
        timings["wide phantoms"] = _run("phantoms (wide)", phantoms, log)
        stages.append(("ldm", WIDE_CONFIG, out / "ldm-wide", ["--vae", str(base), "--init-from", str(base)],
                       None, wide_data))  # fmt: skip
        stages.append(("vae", WIDE_DECODER_CONFIG, out / "decoder-wide", ["--init-from", str(base)], None,
                       wide_data))  # fmt: skip
    for name, cfg, folder, extra, steps, stage_data in stages:
        if training_finished(folder):  # the training pipeline's rules: finished stages are skipped...
            log(f"[train-demo] train-{name} ({folder.name}): already trained")
            continue
        argv = [f"train-{name}", "--data", str(stage_data), "--config", cfg, "--out", str(folder), *extra,
                "--progress", "none"]  # fmt: skip
        if steps is not None:
            argv += ["--max-steps", str(steps)]
        argv += resume_arguments(folder)  # ...and interrupted ones resume from their checkpoint
        timings[folder.name] = _run(f"train-{name} ({folder.name})", argv, log)
    final = base
    if wide:
        from ..train.snapshot import snapshot_model

        final = snapshot_model(out / "ldm-wide", out / "decoder-wide", out / "wide", latents_from=base)
    model = package_demo_model(final, out / "land-demo-phantom")
    result = measure_fidelity(model, log=log)
    (out / "fidelity.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    write_model_card(model, out, result, config)
    log(f"[train-demo] model directory: {model} (copy it to {demo_model_dir()} to bundle it)")
    return model


def write_model_card(
    model_dir: Path, run_dir: Path, fidelity: dict[str, Any], config: str, notes: str = ""
) -> Path:
    """Write MODEL_CARD.md into ``model_dir`` and put the card's summary into model.json."""
    from ..models.model_dir import read_model_json, write_model_json
    from ..train.progress import last_progress_event

    meta = read_model_json(model_dir)
    vae_done = last_progress_event(run_dir / "vae" / "progress.jsonl", "done")
    vae_step = last_progress_event(run_dir / "vae" / "progress.jsonl", "step")
    vae_val = last_progress_event(run_dir / "vae" / "progress.jsonl", "validation")
    ldm_done = last_progress_event(run_dir / "ldm" / "progress.jsonl", "done")
    ldm_step = last_progress_event(run_dir / "ldm" / "progress.jsonl", "step")
    ft_log = run_dir / "ldm-finetune" / "progress.jsonl"
    ft_done = last_progress_event(ft_log, "done") if ft_log.is_file() else {}
    ft_step = last_progress_event(ft_log, "step") if ft_log.is_file() else {}
    summary = (
        "LAND demo model trained on PROCEDURAL CHEST PHANTOMS (not patients) with the project's own "
        "trainers. For trying the tool and for tests. Not for research results: its CTs show phantom "
        "anatomy; train on LIDC-IDRI (land prepare-lidc, train-vae, train-ldm) for that."
    )
    seeds = f"{TRAIN_SEED}-{TRAIN_SEED + TRAIN_CASES - 1}"
    vae_losses = (
        f"L1 {vae_step.get('losses', {}).get('l1', '?')}; validation MAE "
        f"{vae_val.get('mae_hu', float('nan')):.1f} HU, PSNR {vae_val.get('psnr', float('nan')):.2f} dB"
    )
    ldm_losses = ", ".join(f"{k} {v}" for k, v in ldm_step.get("losses", {}).items())
    ft_losses = ", ".join(f"{k} {v}" for k, v in ft_step.get("losses", {}).items()) or "-"
    lo, hi = fidelity["held_out_seeds"]
    n_fid = hi - lo + 1
    unet = meta.get("unet", {})
    injection = (
        f"the mask also injected at every level as {unet.get('cond_features', 'scalar').replace('+', ' + ')}"
        if unet.get("cond_injection") == "every_level"
        else "the mask at the input and as cross-attention tokens"
    )
    if ft_done:
        recipe_tail = (
            f"land train-ldm --data runs/demo/data --config {FINETUNE_CONFIG} --vae runs/demo/ldm \\\n"
            "               --init-from runs/demo/ldm --out runs/demo/ldm-finetune\n"
            "# then a float16 copy of runs/demo/ldm-finetune as runs/demo/land-demo-phantom "
            "(land.world.demo.package_demo_model)"
        )
        ft_time = ft_done.get("wall_time_s", "-")
        ft_row = f"| LDM fine-tune | {ft_done.get('step', '-')} | {ft_time} s | {ft_losses} |\n"
    else:
        recipe_tail = (
            "# then a float16 copy of runs/demo/ldm as runs/demo/land-demo-phantom "
            "(land.world.demo.package_demo_model)"
        )
        ft_row = ""
    missed = unmet_targets(fidelity)
    limitations = ""
    if missed:
        limitations = "\n## Known limitations\nTargets NOT met: " + ", ".join(missed) + "."
        refs = {k: v["summary"] for k, v in (fidelity.get("reference") or {}).items()}
        if refs:
            ph, va = refs.get("phantom", {}), refs.get("vae_reconstruction", {})
            limitations += (
                " For scale, the same measure on the held-out phantoms themselves gives rho "
                f"{_shown(ph.get('texture_hu_spearman_rho'))} and {_shown(ph.get('share_visible'))} visible "
                "(their 3-5 mm nodules are a few voxels at 2 mm and partial volume hides some), and on their "
                f"reconstructions by this model's VAE rho {_shown(va.get('texture_hu_spearman_rho'))} and "
                f"{_shown(va.get('share_visible'))} visible: a generator can do no better than its VAE."
            )
        limitations += (
            " The model puts lungs, body wall and mediastinum where the masks say, but it does not render "
            "nodules reliably: at 2 mm and 4x latent compression a 10 mm nodule spans 1-2 latent voxels, and "
            "this CPU run trained the networks for only the steps above. A finer grid, a larger VAE and "
            "longer training (a GPU) are the expected fixes; they were not verified here. Do not use this "
            "model to judge how LAND renders nodule textures.\n"
        )
        summary += " Its nodules are not yet reliably visible (see the model card's fidelity table)."
    card = f"""# LAND demo model: `land-demo-phantom`

{summary}

## What it was trained on
{TRAIN_CASES} procedural chest CT phantoms from `land phantoms` (seeds {seeds}, 128^3 voxels at 2 mm:
the paper's 256 mm field of view at half resolution), with their lung masks, nodule labels and
textures (1-3 nodules of 3-30 mm per case). No patient data. HU window [-1000, 1000].

## What it is for, and what not
- For: installing and trying LAND at once (`land generate`, the Slicer module's Generate button), tests,
  benchmarks, and as a worked example of the training commands.
- Not for: research results, training data for real tasks, or teaching real anatomy. Its CTs show the
  phantom's simplified anatomy. Train on LIDC-IDRI for real use.

## Architecture
U-Net `small` (channels 32-64-64-128-128, 2 residual blocks per level, additive skips, cross-attention at
the two deepest levels, {injection}),
VAE `small` (channels 16-32-32, 4 latent channels, 4x compression), mode
`nodule+lung+texture`, v-prediction, linear beta 1e-4..0.02, T = 1000, Min-SNR-5.

## How it was made (one command)
```
land train-demo --out runs/demo --config {config}
```
which runs, each resumable:
```
land phantoms --n {TRAIN_CASES} --size 128 --spacing 2 --seed {TRAIN_SEED} --out runs/demo/data
land train-vae --data runs/demo/data --config {config} --out runs/demo/vae
land train-ldm --data runs/demo/data --config {config} --vae runs/demo/vae --out runs/demo/ldm
{recipe_tail}
land demo-fidelity --model runs/demo/land-demo-phantom
```
on a 2-core CPU (no GPU), trained in float32; the weights are stored in float16 (computed in float32).
{notes}
| Stage | Steps | Wall time | Final losses |
|---|---|---|---|
| VAE | {vae_done.get("step", "?")} | {vae_done.get("wall_time_s", "?")} s | {vae_losses} |
| LDM | {ldm_done.get("step", "?")} | {ldm_done.get("wall_time_s", "?")} s | {ldm_losses} |
{ft_row}
## Conditional fidelity (held-out phantom masks)
`land demo-fidelity` on {n_fid} phantom mask sets with seeds {lo}-{hi} (never used in training),
{fidelity["steps"]} {fidelity["sampler"]} steps, {fidelity["wall_time_s"]} s in all:

{fidelity_table(fidelity)}

Lung Dice: lungs found in the generated CT by thresholding vs the input lung mask. Visible: nodule mean
HU is above the surrounding lung's by more than the lung's noise (standard deviation; signed: every texture
is denser than lung).
{limitations}"""
    path = Path(model_dir) / "MODEL_CARD.md"
    path.write_text(card, encoding="utf-8")
    meta["card"] = summary
    meta["name"] = "land-demo-phantom"
    meta.setdefault("provenance", {})["fidelity"] = fidelity["summary"]
    write_model_json(model_dir, meta)
    return path


# --------------------------------------------------------------------------------------------- CLI
def register(sub, command) -> None:
    from ..sampling.guidance import add_guidance_arguments

    """Add ``land demo-masks``, ``land demo-fidelity`` and ``land train-demo`` to the CLI."""
    p = sub.add_parser("demo-masks", help="write the default mask set (lungs + nodules of textures 1, 3, 5)")
    p.add_argument("--out", required=True, help="folder for demo_masks.seg.nrrd")
    p.add_argument("--size", type=count_argument("--size", 16, MAX_GRID_SIDE), default=128,
                   help="voxels per side")  # fmt: skip
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm")

    @command("demo-masks")
    def cmd_demo_masks(args: argparse.Namespace) -> int:
        preflight_outputs({}, folders={"--out": args.out})
        path = write_demo_masks(Path(args.out), args.size, args.spacing)
        print(f"wrote {path}")
        return 0

    p = sub.add_parser("demo-fidelity", help="measure conditional fidelity on held-out phantom masks")
    p.add_argument("--model", help="model directory (default: the bundled demo model)")
    p.add_argument("--n", type=count_argument("--n", 1, MAX_FIDELITY_CASES), default=FIDELITY_CASES,
                   help="number of held-out cases")  # fmt: skip
    p.add_argument("--seed", type=int, default=FIDELITY_SEED,
                   help="first held-out phantom seed (with --masks: the seed of every CT)")  # fmt: skip
    p.add_argument("--steps", type=int, help=steps_help())
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER, help=sampler_help())
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", help="folder for fidelity.json, fidelity.md and (with --save-ct) the CTs")
    p.add_argument("--save-ct", action="store_true", help="also write the generated CTs")
    p.add_argument(
        "--deform",
        action="store_true",
        help="held-out phantoms warped as the wide-field training ones (land phantoms --deform)",
    )
    p.add_argument(
        "--masks",
        metavar="DIR",
        help="score your own masks instead of phantoms: a folder of .seg.nrrd files or case "
        "folders (lung.nii.gz, optional nodules.nii.gz, textures.json); one CT per case",
    )
    p.add_argument("--fit", choices=FITS, default="crop", help=FIT_HELP)
    add_guidance_arguments(p)

    @command("demo-fidelity")
    def cmd_demo_fidelity(args: argparse.Namespace) -> int:
        from ..cli import model_dir_or_default

        model = model_dir_or_default(args.model)
        preflight_outputs({"--model": model, "--masks": args.masks}, folders={"--out": args.out})
        out = Path(args.out) if args.out else None
        save = out / "ct" if (out and args.save_ct) else None
        if args.masks:
            return _mask_fidelity(args, model, out, save)
        result = measure_fidelity(model, args.n, args.seed, args.steps, args.sampler, args.device, save,
                                  guidance=args.guidance, guidance_mode=args.guidance_mode,
                                  deform=args.deform)  # fmt: skip
        table = fidelity_table(result)
        print(table)
        if out:
            out.mkdir(parents=True, exist_ok=True)
            (out / "fidelity.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
            (out / "fidelity.md").write_text(table + "\n", encoding="utf-8")
            print(f"wrote {out / 'fidelity.json'}")
        return 0

    p = sub.add_parser("train-demo", help="reproduce the bundled demo model (phantoms, VAE, LDM, card)")
    p.add_argument("--out", required=True, help="run folder (data, vae, ldm); rerun to resume")
    p.add_argument("--config", default="demo", help="training config (default: demo)")
    p.add_argument("--vae-steps", type=int, help="VAE steps (default: the config's)")
    p.add_argument("--ldm-steps", type=int, help="LDM steps (default: the config's)")
    p.add_argument("--finetune-config", default=FINETUNE_CONFIG,
                   help=f"fine-tuning stage's config (default {FINETUNE_CONFIG}; none: skip)")  # fmt: skip
    p.add_argument(
        "--no-wide",
        action="store_true",
        help=f"skip the wide-field stages ({WIDE_CONFIG}, {WIDE_DECODER_CONFIG}: 128^3 at 2.5 mm)",
    )

    @command("train-demo")
    def cmd_train_demo(args: argparse.Namespace) -> int:
        preflight_outputs({}, folders={"--out": args.out})
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        finetune = None if args.finetune_config == "none" else args.finetune_config
        train_demo(Path(args.out), args.config, args.vae_steps, args.ldm_steps, finetune=finetune,
                   wide=not args.no_wide)  # fmt: skip
        return 0


def _mask_fidelity(args: argparse.Namespace, model: Path, out: Path | None, save: Path | None) -> int:
    """``land demo-fidelity --masks DIR``: score the model on a folder of the user's own masks."""
    from ..eval.mask_cases import mask_case_table, measure_mask_cases

    result = measure_mask_cases(model, args.masks, steps=args.steps, sampler=args.sampler, seed=args.seed,
                                device=args.device, fit=args.fit, guidance=args.guidance,
                                guidance_mode=args.guidance_mode, save_dir=save)  # fmt: skip
    table = mask_case_table(result)
    print(table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "fidelity.json").write_text(json.dumps(_plain(result), indent=1), encoding="utf-8")
        (out / "fidelity.md").write_text(table + "\n", encoding="utf-8")
        print(f"wrote {out / 'fidelity.json'}")
    return 0
