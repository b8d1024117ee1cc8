"""Report figures (matplotlib, no pyplot state): sample montages, HU histograms, nodule HU by texture.

Slices are shown in radiological convention for LPS-ordered arrays ([z, y, x], x to the patient's left,
y posterior, z superior; direction matrices are not applied): axial with the patient's right on the left
and anterior up, coronal and sagittal with superior up; pixel aspect from the voxel spacing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..imaging.volume import Volume

LUNG_WINDOW = (-1350.0, 150.0)  # level -600, width 1500
NOT_DRAWN = (
    "figures not drawn: matplotlib is not installed (it is optional; the numbers are complete); fix: pip "
    "install matplotlib (or the engine with its [eval] extra) and rerun the same command"
)


def can_draw() -> bool:
    """Whether matplotlib, which draws the figures, is importable (it is not a core dependency)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, facecolor=fig.get_facecolor())
    return p


def _as_volume(v: Volume | np.ndarray) -> Volume:
    return v if isinstance(v, Volume) else Volume(np.asarray(v))


def montage_png(
    volumes: Sequence[Volume | np.ndarray],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    window: tuple[float, float] = LUNG_WINDOW,
    cell_inches: float = 2.2,
    title: str | None = None,
) -> Path:
    """One row per volume, columns axial / coronal / sagittal through the centre; returns the PNG's path.

    ``volumes`` are HU volumes (:class:`Volume`, or [z, y, x] arrays taken as 1 mm isotropic); ``window`` is
    the display range in HU (default lung window). Black background, no axes.
    """
    if not volumes:
        raise ValueError("montage_png needs at least one volume")
    vols = [_as_volume(v) for v in volumes]
    fig = _figure(3 * cell_inches, len(vols) * cell_inches + (0.4 if title else 0.0))
    fig.set_facecolor("black")
    axes = fig.subplots(len(vols), 3, squeeze=False)
    for row, vol in enumerate(vols):
        a = np.asarray(vol.array, dtype=np.float32)
        sx, sy, sz = (float(s) for s in vol.spacing)
        z, y, x = (n // 2 for n in a.shape)
        views = (
            (a[z], sy / sx, "axial"),
            (a[:, y, :][::-1], sz / sx, "coronal"),
            (a[:, :, x][::-1], sz / sy, "sagittal"),
        )
        for col, (image, aspect, name) in enumerate(views):
            ax = axes[row][col]
            ax.imshow(
                image, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if row == 0:
                ax.set_title(name, color="white", fontsize=8)
            if col == 0 and titles is not None:
                ax.set_ylabel(str(titles[row]), color="white", fontsize=7)
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    return _save(fig, path)


def hu_histogram_png(
    histograms: Mapping[str, np.ndarray], edges: np.ndarray, path: str | os.PathLike, title: str = ""
) -> Path:
    """Voxel HU distributions (densities from bin counts, log scale), one line per named set."""
    fig = _figure(6.5, 3.6)
    ax = fig.subplots()
    centres = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    for name, counts in histograms.items():
        counts = np.asarray(counts, dtype=np.float64)
        if counts.sum() > 0:
            ax.step(centres, counts / counts.sum() / width, where="mid", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("HU")
    ax.set_ylabel("density (1/HU)")
    ax.set_title(title or "voxel intensities")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def nodule_hu_boxplot_png(
    groups: Mapping[str, Mapping[int, Sequence[float]]], path: str | os.PathLike, title: str = ""
) -> Path:
    """Box plots of nodule mean HU per texture score (1 ground-glass .. 5 solid), one box per named group
    (e.g. ``{"generated": {1: [...], 5: [...]}, "real": {...}}``) side by side, with the points."""
    fig = _figure(6.0, 3.8)
    ax = fig.subplots()
    names = [name for name, by_t in groups.items() if any(len(v) for v in by_t.values())]
    width = 0.7 / max(len(names), 1)
    rng = np.random.default_rng(0)
    for g, name in enumerate(names):
        by_t = {int(t): np.asarray(v, dtype=np.float64) for t, v in groups[name].items() if len(v)}
        textures = sorted(by_t)
        offset = (g - (len(names) - 1) / 2) * width
        positions = [t + offset for t in textures]
        colour = f"C{g}"
        ax.boxplot(
            [by_t[t] for t in textures],
            positions=positions,
            widths=width * 0.8,
            manage_ticks=False,
            boxprops={"color": colour},
            medianprops={"color": colour},
        )
        for pos, t in zip(positions, textures, strict=True):
            ax.plot(
                pos + rng.uniform(-width / 5, width / 5, by_t[t].size), by_t[t], ".", color=colour, alpha=0.6
            )
        ax.plot([], [], "s", color=colour, label=name)
    if names:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no nodules with a texture", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0.4, 5.6)
    ax.set_xticks([1, 2, 3, 4, 5])
    ax.set_xlabel("texture (1 non-solid .. 5 solid)")
    ax.set_ylabel("nodule mean HU")
    ax.set_title(title or "nodule HU by texture")
    ax.grid(alpha=0.3)
    return _save(fig, path)
