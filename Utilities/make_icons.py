"""Draw the extension icon (Resources/Icons/LANDExtension.png) and the LANDTraining module icon, 128x128 RGBA.

Pure numpy (anti-aliased by 4x supersampling) written with matplotlib's PNG writer:
``python Utilities/make_icons.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZE, SUPER = 128, 4


def _grid() -> tuple[np.ndarray, np.ndarray]:
    n = SIZE * SUPER
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    return (x + 0.5) / n, (y + 0.5) / n  # [0, 1] coordinates, y down


def _paint(canvas: np.ndarray, mask: np.ndarray, rgba: tuple[float, float, float, float]) -> None:
    a = mask[..., None] * rgba[3]
    canvas[..., :3] = canvas[..., :3] * (1 - a) + np.asarray(rgba[:3]) * a
    canvas[..., 3:] = canvas[..., 3:] * (1 - a) + a


def _rounded_square(x: np.ndarray, y: np.ndarray, margin: float, radius: float) -> np.ndarray:
    dx = np.maximum(np.abs(x - 0.5) - (0.5 - margin - radius), 0)
    dy = np.maximum(np.abs(y - 0.5) - (0.5 - margin - radius), 0)
    return (dx**2 + dy**2 <= radius**2).astype(np.float64)


def _lungs(x: np.ndarray, y: np.ndarray, cx: float, cy: float, scale: float) -> np.ndarray:
    """Two lung-like shapes: ellipses with a flattened mediastinal side and a pointed apex."""
    mask = np.zeros_like(x)
    for side in (-1, 1):
        ex, ey = cx + side * 0.17 * scale, cy
        inside = ((x - ex) / (0.14 * scale)) ** 2 + ((y - ey) / (0.3 * scale)) ** 2 <= 1
        inside &= side * (x - cx) > 0.035 * scale  # mediastinum gap
        inside &= y - cy > -0.27 * scale + 0.25 * np.abs(x - ex)
        mask = np.maximum(mask, inside)
    return mask


def _downsample(canvas: np.ndarray) -> np.ndarray:
    return canvas.reshape(SIZE, SUPER, SIZE, SUPER, 4).mean(axis=(1, 3))


def draw(training: bool) -> np.ndarray:
    """The extension icon (lungs, a nodule, a sparkle) or the training icon (lungs above a loss curve)."""
    x, y = _grid()
    canvas = np.zeros(x.shape + (4,))
    _paint(canvas, _rounded_square(x, y, 0.03, 0.16), (0.07, 0.16, 0.30, 1.0))
    cy, scale = (0.44, 0.85) if training else (0.5, 1.0)
    _paint(canvas, _lungs(x, y, 0.5, cy, scale), (0.86, 0.89, 0.93, 1.0))
    nodule = ((x - (0.5 + 0.2 * scale)) ** 2 + (y - (cy + 0.05 * scale)) ** 2) <= (0.045 * scale) ** 2
    _paint(canvas, nodule.astype(np.float64), (0.96, 0.55, 0.13, 1.0))
    if training:  # a falling loss curve along the bottom
        t = np.clip((x - 0.14) / 0.72, 0, 1)
        curve = 0.9 - 0.14 * np.exp(-4.0 * t)
        band = (np.abs(y - curve) < 0.022) & (x > 0.14) & (x < 0.86)
        _paint(canvas, band.astype(np.float64), (0.35, 0.85, 0.45, 1.0))
        axes = ((np.abs(x - 0.12) < 0.012) & (y > 0.7) & (y < 0.93)) | (
            (np.abs(y - 0.93) < 0.012) & (x > 0.12) & (x < 0.88)
        )
        _paint(canvas, axes.astype(np.float64), (0.86, 0.89, 0.93, 1.0))
    else:  # a four-pointed star: synthetic
        sx, sy = x - 0.2, y - 0.2
        star = (np.abs(sx) * np.abs(sy) < 0.0009) & (np.abs(sx) + np.abs(sy) < 0.11)
        _paint(canvas, star.astype(np.float64), (1.0, 0.85, 0.3, 1.0))
    return np.clip(_downsample(canvas), 0, 1)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outputs = {
        REPO / "Resources" / "Icons" / "LANDExtension.png": draw(training=False),
        REPO / "LANDTraining" / "Resources" / "Icons" / "LANDTraining.png": draw(training=True),
    }
    for path, image in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        plt.imsave(path, image)
        print(f"wrote {path.relative_to(REPO)} {image.shape[1]}x{image.shape[0]}")


if __name__ == "__main__":
    main()
