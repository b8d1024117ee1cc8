"""``land evaluate``: FID, MS-SSIM diversity, memory and conditional fidelity of a generated set vs a real
set, written as ``report.json``, ``report.md`` and PNG figures.

Protocol (WDM-3D's eval, which LAND's paper uses): each volume is scaled to [0, 1] by the intensity protocol
``wdm`` (the default of ``--intensity-protocol``): HU clipped to [-1000, that volume's 99.9th percentile],
then min-max to [0, 1] per volume (:func:`land.eval.sets.wdm_unit`). ``fixed-window`` (HU [-1000, 1000] ->
[0, 1], one window for every volume) is kept for comparison with older LAND reports; its FIDs are not
comparable with the paper's. FID and MS-SSIM read the same scaled volumes. FID on MedicalNet ResNet-50
features (2048-d, global average of layer4, batch 1), also x10^3; MS-SSIM over all pairs of generated samples
(or a seeded subset), kernel 7, data range 1. Missing FID weights make FID *unavailable* (with the reason)
and never a made-up number; ``--feature-weights`` that cannot be loaded is an error.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging.atomic import atomic_write_text
from ..interface import __version__
from ..interface.errors import InputError
from .fid import FeatureStats, fid_from_stats, stats_key
from .sets import (
    INTENSITY_PROTOCOLS,
    UnitVolumes,
    VolumeSet,
    check_intensity_protocol,
    describe_intensity_protocol,
    list_volumes,
)

HIST_EDGES = np.arange(-1100.0, 1100.0 + 1e-9, 10.0)


@dataclass
class EvalOptions:
    """What ``land evaluate`` was asked to do."""

    real: Path
    generated: Path
    out: Path
    masks: Path | None = None
    feature_weights: Path | None = None
    no_fid: bool = False
    cache_dir: Path | None = None
    size: int | None = None
    ms_ssim_pairs: int | None = None
    ms_ssim_kernel: int = 7
    seed: int = 0
    device: str = "cpu"
    montage: int = 3
    intensity_protocol: str = INTENSITY_PROTOCOLS[0]  # "wdm"; see land.eval.sets.volume_to_unit
    hu_window: tuple[float, float] = (-1000.0, 1000.0)  # used by intensity_protocol "fixed-window" only
    command: str = ""
    notes: list[str] = field(default_factory=list)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cache_dir(opts: EvalOptions) -> Path:
    from .features import land_cache_dir

    return Path(opts.cache_dir) if opts.cache_dir else land_cache_dir() / "eval"


HISTOGRAM_NOTE = (
    "Every voxel of every volume is counted, padding included: a CT generated with --match-input holds "
    "-1000 HU wherever the input's grid reaches beyond the model's field of view, which adds to the "
    "-1000 HU bin (air) of the generated set."
)


def ms_ssim_text(ms: dict) -> str:
    """``MS-SSIM 0.8123 ± 0.0100 over 6 pairs``; one pair is said to be no diversity figure."""
    pairs = int(ms["pairs"])
    text = f"MS-SSIM {ms['mean']:.4f} ± {ms['std']:.4f} over {pairs} pair{'s' if pairs != 1 else ''}"
    if pairs == 1:
        text += " (one pair: the similarity of two samples, not a diversity figure; generate more samples)"
    return text


def _histogram(vset: VolumeSet, cache: Path, log: Callable[[str], None]) -> np.ndarray:
    """Summed voxel HU histogram of a set (cached by the set's fingerprint)."""
    from ..imaging.io import read_volume

    key = stats_key(
        vset.fingerprint(), "hu-histogram", {"edges": [HIST_EDGES[0], HIST_EDGES[-1], len(HIST_EDGES)]}
    )
    path = cache / f"hist-{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["counts"]
    except (OSError, KeyError, ValueError):
        pass
    counts = np.zeros(len(HIST_EDGES) - 1, np.int64)
    for i, f in enumerate(vset.files):
        a = np.clip(read_volume(f).array, HIST_EDGES[0] + 1, HIST_EDGES[-1] - 1)
        counts += np.histogram(a, bins=HIST_EDGES)[0]
        log(f"histogram {vset.root.name}: {i + 1}/{len(vset)}")
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, counts=counts)
    return counts


def feature_stats(
    vset: VolumeSet, extractor, opts: EvalOptions, log: Callable[[str], None] = _log
) -> tuple[FeatureStats, bool]:
    """(feature mean/covariance of a set, whether it came from the cache)."""
    from .features import extract_features, extractor_id

    if opts.intensity_protocol == "fixed-window":  # the key of statistics cached before the option existed
        pre: dict[str, Any] = {"hu_window": list(opts.hu_window), "size": opts.size, "batch": 1}
    else:
        pre = {"intensity_protocol": opts.intensity_protocol, "size": opts.size, "batch": 1}
    key = stats_key(vset.fingerprint(), extractor_id(extractor), pre)
    path = _cache_dir(opts) / f"fid-{key}.npz"
    cached = FeatureStats.load(path, key)
    if cached is not None:
        return cached, True
    units = _units(vset, opts, keep=1)
    feats = []
    for i, f in enumerate(extract_features(extractor, units, opts.device)):
        feats.append(f)
        log(f"features {vset.root.name}: {i + 1}/{len(vset)}")
    stats = FeatureStats.from_features(np.stack(feats))
    stats.save(path, key)
    return stats, False


def _units(vset: VolumeSet, opts: EvalOptions, keep: int) -> UnitVolumes:
    """The set's volumes as the FID features and MS-SSIM see them (``opts.intensity_protocol``, ``size``)."""
    return UnitVolumes(
        vset, protocol=opts.intensity_protocol, hu_window=opts.hu_window, size=opts.size, keep=keep
    )


def _resolve_extractor(opts: EvalOptions, extractor) -> tuple[Any, str | None]:
    """(extractor or None, reason FID is unavailable)."""
    if opts.no_fid:
        return None, "disabled with --no-fid"
    if extractor is not None:
        return extractor, None
    from .features import load_medicalnet_resnet50

    try:
        return load_medicalnet_resnet50(opts.feature_weights), None
    except InputError as e:
        if opts.feature_weights is not None:
            raise
        return None, str(e)


def _fidelity_cases(vset: VolumeSet, masks_root: Path, by_provenance: bool, log) -> list[dict]:
    """Per-file fidelity against the masks of its case (generated: the provenance's case; real: same name)."""
    from ..data.folder import load_case, read_manifest
    from ..imaging.io import read_volume
    from .fidelity import lung_dice, nodule_stats
    from .sets import resample_like, source_case

    cases = {c.name: c for c in read_manifest(masks_root)}
    out = []
    for i, (f, name) in enumerate(zip(vset.files, vset.names, strict=True)):
        case = source_case(f) if by_provenance else name
        if case not in cases:
            continue
        ct = read_volume(f)
        masks = load_case(cases[case], image=False).masks
        lung = resample_like(masks.lung, ct).array
        nodules = resample_like(masks.nodules, ct).array
        stats = nodule_stats(ct.array, lung, nodules, masks.textures, ct.spacing)
        out.append(
            {
                "file": f.name,
                "case": case,
                "lung_dice": lung_dice(ct.array, lung, ct.spacing),
                "nodules": [s.to_json() for s in stats],
            }
        )
        log(f"fidelity {vset.root.name}: {i + 1}/{len(vset)}")
    return out


def _memory(vset: VolumeSet) -> dict[str, Any]:
    from ..imaging.io import read_provenance

    peaks, seconds, devices, kinds = [], [], set(), set()
    for f in vset.files:
        try:
            prov = read_provenance(f)
        except InputError:
            continue
        if prov.get("peak_memory_gb") not in (None, ""):
            peaks.append(float(prov["peak_memory_gb"]))
            kinds.add(str(prov.get("peak_memory_kind", "")))
            devices.add(str(prov.get("device_name", prov.get("device", ""))))
        if prov.get("generation_s") not in (None, ""):
            seconds.append(float(prov["generation_s"]))
    if not peaks:
        return {
            "available": False,
            "reason": "the generated files carry no peak_memory_gb (made by land sample-set)",
        }
    return {
        "available": True,
        "peak_gb": max(peaks),
        "kind": sorted(kinds),
        "devices": sorted(devices),
        "mean_generation_s": float(np.mean(seconds)) if seconds else None,
    }


def evaluate(opts: EvalOptions, extractor=None, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Compute every metric and write the report; returns the report dict (also ``report.json``)."""
    from ..imaging.io import read_volume
    from .fidelity import fidelity_summary
    from .figures import NOT_DRAWN, can_draw, hu_histogram_png, montage_png, nodule_hu_boxplot_png
    from .msssim import ms_ssim_diversity

    try:
        check_intensity_protocol(opts.intensity_protocol)
    except ValueError as e:
        raise InputError(f"{e}; fix: pass --intensity-protocol {' or '.join(INTENSITY_PROTOCOLS)}") from None
    real, gen = list_volumes(opts.real, "--real"), list_volumes(opts.generated, "--generated")
    if opts.masks is not None:
        from ..data.folder import read_manifest

        read_manifest(opts.masks)  # a clear InputError when --masks is not a folder dataset
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = _cache_dir(opts)
    report: dict[str, Any] = {
        "command": opts.command,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "land_version": __version__,
        "real": {"folder": str(real.root), "n": len(real)},
        "generated": {"folder": str(gen.root), "n": len(gen)},
        "protocol": {
            "intensity_protocol": opts.intensity_protocol,
            "intensity_scaling": describe_intensity_protocol(opts.intensity_protocol, opts.hu_window),
            "intensity_scaling_applies_to": ["fid", "ms_ssim"],
            "hu_window": list(opts.hu_window) if opts.intensity_protocol == "fixed-window" else None,
            "size": opts.size,
            "ms_ssim_kernel": opts.ms_ssim_kernel,
            "ms_ssim_data_range": 1.0,
            "fid_features": "MedicalNet ResNet-50 layer4 global average (2048)",
        },
    }

    net, reason = _resolve_extractor(opts, extractor)
    if net is None:
        log(f"warning: FID not computed: {reason}")
        report["fid"] = {"available": False, "reason": reason}
    elif min(len(real), len(gen)) < 2:
        report["fid"] = {"available": False, "reason": "FID needs at least 2 volumes in each set"}
    else:
        from .features import extractor_id

        real_stats, real_cached = feature_stats(real, net, opts, log)
        gen_stats, _ = feature_stats(gen, net, opts, log)
        report["fid"] = {
            "available": True,
            **fid_from_stats(real_stats, gen_stats),
            "extractor": extractor_id(net),
            "real_stats_cached": real_cached,
        }
        if gen_stats.n < gen_stats.mu.size:
            report["fid"]["note"] = (
                f"{gen_stats.n} samples for {gen_stats.mu.size} features: the covariance is "
                "singular; FID is biased upwards for small sets"
            )

    units = _units(gen, opts, keep=2)
    try:
        report["ms_ssim"] = {
            "available": True,
            **ms_ssim_diversity(
                units,
                opts.ms_ssim_pairs,
                opts.seed,
                opts.ms_ssim_kernel,
                opts.device,
                progress=lambda k, n: log(f"ms-ssim: pair {k}/{n}"),
            ),
        }
    except InputError as e:
        log(f"warning: MS-SSIM not computed: {e}")
        report["ms_ssim"] = {"available": False, "reason": str(e)}
    report["memory"] = _memory(gen)

    if opts.masks is not None:
        per_case = _fidelity_cases(gen, Path(opts.masks), True, log)
        if not per_case:
            report["fidelity"] = {
                "available": False,
                "reason": (
                    f"no generated file records a case of {opts.masks} in its provenance "
                    "(made by land sample-set "
                    "--masks with that dataset?)"
                ),
            }
        else:
            report["fidelity"] = {"available": True, **fidelity_summary(per_case), "per_case": per_case}
        if (Path(opts.real) / "manifest.csv").is_file():
            per_real = _fidelity_cases(real, Path(opts.real), False, log)
            if per_real:
                report["fidelity_real"] = {
                    "available": True,
                    **fidelity_summary(per_real),
                    "per_case": per_real,
                }

    hist = {"real": _histogram(real, cache, log), "generated": _histogram(gen, cache, log)}
    report["figures"] = {}
    if not can_draw():
        report["figures_not_drawn"] = NOT_DRAWN
        log(f"note: {NOT_DRAWN}")
        return _write_report(out, report)
    figures = {
        "montage": montage_png(
            [read_volume(real.files[0])] + [read_volume(f) for f in gen.files[: opts.montage]],
            out / "montage.png",
            titles=[f"real {real.names[0]}"] + [f"generated {n}" for n in gen.names[: opts.montage]],
        ).name,
        "hu_histograms": hu_histogram_png(
            hist,
            HIST_EDGES,
            out / "hu_histograms.png",
            title=f"voxel HU: real ({len(real)}) vs generated ({len(gen)})",
        ).name,
    }
    if report.get("fidelity", {}).get("available"):
        groups = {"generated": _hu_by_texture(report["fidelity"]["per_case"])}
        if "fidelity_real" in report:
            groups["real"] = _hu_by_texture(report["fidelity_real"]["per_case"])
        figures["nodule_hu_by_texture"] = nodule_hu_boxplot_png(groups, out / "nodule_hu_by_texture.png").name
    report["figures"] = figures
    return _write_report(out, report)


def _write_report(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md``; returns ``report``."""
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=_json_default) + "\n")
    atomic_write_text(out / "report.md", markdown(report))
    return report


def _json_default(o: object) -> object:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _hu_by_texture(per_case: list[dict]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for case in per_case:
        for n in case["nodules"]:
            if n.get("texture") is not None:
                out.setdefault(int(n["texture"]), []).append(float(n["mean_hu"]))
    return out


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def markdown(report: dict[str, Any]) -> str:
    """``report.md``: the command, a table shaped like the LAND paper's Table 1, fidelity and figures."""
    fid, ms, mem = report["fid"], report["ms_ssim"], report["memory"]
    lines = [
        "# LAND evaluation report",
        "",
        "Regenerate this report and its figures with:",
        "",
        "```bash",
        report.get("command") or "land evaluate ...",
        "```",
        "",
        f"Created {report['created']} by land {report['land_version']}. Real: {report['real']['folder']} "
        f"({report['real']['n']} volumes); generated: {report['generated']['folder']} "
        f"({report['generated']['n']}).",
        "",
        f"Intensity protocol: {report['protocol']['intensity_scaling']}; FID features and MS-SSIM both read "
        "volumes scaled this way"
        + (f", resized to {report['protocol']['size']}^3" if report["protocol"].get("size") else "")
        + ".",
        "",
        "| model | FID | FID (x10^3) | MS-SSIM | memory (GB) |",
        "|---|---|---|---|---|",
        "| {} | {} | {} | {} | {} |".format(
            Path(report["generated"]["folder"]).name,
            _fmt(fid.get("fid"), 4) if fid["available"] else "unavailable",
            _fmt(fid.get("fid_x1e3"), 4) if fid["available"] else "unavailable",
            f"{ms['mean']:.4f} ± {ms['std']:.4f}" if ms["available"] else "unavailable",
            f"{mem['peak_gb']:.2f} ({', '.join(mem['kind'])})" if mem["available"] else "n/a",
        ),
        "",
    ]
    for name, item in (("FID", fid), ("MS-SSIM", ms), ("memory", mem)):
        if not item["available"]:
            lines.append(f"* {name} unavailable: {item['reason']}")
    if fid["available"]:
        lines.append(
            f"* FID: {fid['n_a']} real vs {fid['n_b']} generated volumes, extractor {fid['extractor']}"
            + (f"; {fid['note']}" if fid.get("note") else "")
        )
    if ms["available"]:
        lines.append(
            f"* {ms_ssim_text(ms)} of generated samples, kernel {ms['kernel_size']}, data range 1"
            + (f", random subset (seed {ms['seed']})" if ms.get("seed") is not None else "")
        )
    lines.append("")
    rows = [(k, report[k]) for k in ("fidelity", "fidelity_real") if k in report]
    if rows:
        lines += [
            "## Conditional fidelity",
            "",
            "| set | cases | lung Dice | nodules | Spearman rho (texture vs HU) | visible | outside lung "
            "| median CNR |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, f in rows:
            label = "generated" if key == "fidelity" else "real (reference)"
            if not f["available"]:
                lines.append(f"| {label} | unavailable: {f['reason']} | | | | | | |")
                continue
            dice = (
                "n/a"
                if f["lung_dice_mean"] is None
                else f"{f['lung_dice_mean']:.3f} ± {f['lung_dice_std']:.3f}"
            )
            lines.append(
                f"| {label} | {f['cases']} | {dice} | {f['nodules']} "
                f"| {_fmt(f['texture_hu_spearman_rho'], 3)}"
                + (f" ({f['texture_hu_spearman_note']})" if f.get("texture_hu_spearman_note") else "")
                + " "
                f"| {_pct(f['share_visible'])} | {_pct(f['share_outside_lung'])} "
                f"| {_fmt(f['cnr_median'], 3)} |"
            )
        lines += [
            "",
            "Mean nodule HU by texture (1 non-solid .. 5 solid):",
            "",
            "| set | " + " | ".join(f"texture {t}" for t in range(1, 6)) + " |",
            "|---" * 6 + "|",
        ]
        for key, f in rows:
            if f["available"]:
                by = f["by_texture"]
                cells = [
                    f"{by[str(t)]['mean_hu']:.0f} (n={by[str(t)]['n']})" if str(t) in by else "-"
                    for t in range(1, 6)
                ]
                lines.append(
                    f"| {'generated' if key == 'fidelity' else 'real'} | " + " | ".join(cells) + " |"
                )
        lines += [
            "",
            "Lung Dice: lungs segmented in the CT (land.imaging.lungseg, classical) vs the input lung mask. "
            "A nodule "
            "is visible when |mean HU - surrounding lung mean| exceeds the surrounding lung's std (shell "
            "1-5 mm around it, inside the lung, outside nodules); outside lung: under half its voxels in "
            "the lung mask.",
            "",
        ]
    lines += ["## Figures", ""]
    if "figures_not_drawn" in report:
        lines += [report["figures_not_drawn"][0].upper() + report["figures_not_drawn"][1:] + ".", ""]
    for name, file in report["figures"].items():
        lines += [f"**{name.replace('_', ' ')}**", "", f"![{name}]({file})", ""]
        if name == "hu_histograms":
            lines += [HISTOGRAM_NOTE, ""]
    return "\n".join(lines)
