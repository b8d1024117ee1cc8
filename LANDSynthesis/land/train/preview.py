"""Preview montages (axial / coronal / sagittal centre slices) written as PNG.

PNGs are written with matplotlib when it is importable, else with :func:`write_png`, a tiny pure-numpy
writer (8-bit greyscale, zlib).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W) greyscale image as PNG without any imaging library."""
    a = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if a.ndim != 2:
        raise ValueError(f"expected a 2D greyscale image, got shape {a.shape}")
    h, w = a.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = np.concatenate([np.zeros((h, 1), np.uint8), a], axis=1).tobytes()  # filter type 0 per row
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 6))
        + chunk(b"IEND", b"")
    )
    Path(path).write_bytes(png)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """uint8 (H, W) -> PNG, via matplotlib if importable, else :func:`write_png`."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        write_png(path, image)
        return
    plt.imsave(str(path), np.asarray(image, np.uint8), cmap="gray", vmin=0, vmax=255)


def to_uint8(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    a = (np.asarray(array, np.float32) - lo) / (hi - lo)
    return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pad(image: np.ndarray, height: int) -> np.ndarray:
    out = np.zeros((height, image.shape[1]), image.dtype)
    top = (height - image.shape[0]) // 2
    out[top : top + image.shape[0]] = image
    return out


def orthogonal_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal centre slices of a [z, y, x] volume (superior up in the last two)."""
    z, y, x = volume.shape
    return [volume[z // 2], volume[::-1, y // 2, :], volume[::-1, :, x // 2]]


def montage(volumes: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """One row of orthogonal centre slices per uint8 [z, y, x] volume."""
    rows = []
    for vol in volumes:
        slices = orthogonal_slices(vol)
        h = max(s.shape[0] for s in slices)
        parts = []
        for s in slices:
            parts += [_pad(s, h), np.zeros((h, gap), np.uint8)]
        rows.append(np.concatenate(parts[:-1], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, gap), (0, width - r.shape[1]))) for r in rows]
    return np.concatenate(rows, axis=0)[:-gap]
