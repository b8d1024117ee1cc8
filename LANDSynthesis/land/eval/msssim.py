"""MS-SSIM diversity of generated samples (MONAI ``MultiScaleSSIMMetric``, 3D, data range 1, kernel 7).

Lower mean MS-SSIM between samples = more diverse. MS-SSIM is symmetric, so unordered pairs give the mean
of all ordered pairs. The volumes must already be in [0, 1]: ``land evaluate`` passes them scaled by the same
intensity protocol as the FID features (:class:`land.eval.sets.UnitVolumes`, default ``wdm``: HU clipped to
[-1000, the volume's 99.9th percentile], min-max per volume).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..interface.errors import InputError

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, MONAI's default, 5 scales


def min_size(kernel_size: int = 7, scales: int = len(WEIGHTS)) -> int:
    """The smallest side MONAI accepts: ``side // (scales - 1)**2 > kernel_size - 1`` (112 for kernel 7)."""
    div = max(1, scales - 1) ** 2
    return kernel_size * div if div > 1 else kernel_size


def check_size(shape: Sequence[int], kernel_size: int = 7) -> None:
    """InputError when a volume is too small for 5 scales with ``kernel_size``."""
    need = min_size(kernel_size)
    if min(shape) < need:
        raise InputError(
            f"volumes of shape {tuple(shape)} are too small for MS-SSIM with 5 scales and kernel "
            f"{kernel_size}: "
            f"every side needs at least {need} voxels; fix: evaluate volumes of at least {need}^3 "
            f"(or resize them), or use a smaller kernel (kernel 3 needs {min_size(3)}; "
            "not the paper's protocol)"
        )


def select_pairs(n: int, max_pairs: int | None = None, seed: int = 0) -> list[tuple[int, int]]:
    """All unordered pairs (i < j) of ``n`` items, or a seeded random subset of ``max_pairs`` of them."""
    total = n * (n - 1) // 2
    if max_pairs is None or max_pairs >= total:
        return list(itertools.combinations(range(n), 2))
    rng = np.random.default_rng(seed)
    flat = np.sort(rng.choice(total, size=max_pairs, replace=False))
    pairs = []
    for k in flat:  # index k -> (i, j) in row-major order of the upper triangle
        i = int(n - 2 - math.floor(math.sqrt(-8 * k + 4 * n * (n - 1) - 7) / 2.0 - 0.5))
        j = int(k + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2)
        pairs.append((i, j))
    return pairs


@torch.inference_mode()
def ms_ssim_pair(
    a: np.ndarray, b: np.ndarray, kernel_size: int = 7, device: str | torch.device = "cpu"
) -> float:
    """MS-SSIM of two [z, y, x] volumes in [0, 1]."""
    from monai.metrics import MultiScaleSSIMMetric

    if a.shape != b.shape:
        raise InputError(f"MS-SSIM needs volumes of one shape, got {a.shape} and {b.shape}; fix: resize them")
    check_size(a.shape, kernel_size)
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=kernel_size, weights=WEIGHTS)
    ta = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)[None, None]
    tb = torch.as_tensor(np.ascontiguousarray(b), dtype=torch.float32, device=device)[None, None]
    return float(metric(ta, tb).reshape(-1)[0])


def ms_ssim_diversity(
    volumes: Sequence[np.ndarray],
    max_pairs: int | None = None,
    seed: int = 0,
    kernel_size: int = 7,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float | int | None]:
    """Mean and std (population) of MS-SSIM over all pairs of ``volumes`` (or ``max_pairs`` random ones).

    ``volumes`` may be a lazy sequence (read on indexing). Returns ``{"mean", "std", "pairs", "kernel_size",
    "seed"}``.
    """
    n = len(volumes)
    if n < 2:
        raise InputError(f"MS-SSIM diversity needs at least 2 samples, got {n}")
    check_size(volumes[0].shape, kernel_size)
    pairs = select_pairs(n, max_pairs, seed)
    values = []
    for k, (i, j) in enumerate(pairs):
        values.append(ms_ssim_pair(volumes[i], volumes[j], kernel_size, device))
        if progress is not None:
            progress(k + 1, len(pairs))
    v = np.asarray(values)
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "pairs": len(pairs),
        "kernel_size": kernel_size,
        "seed": seed if max_pairs is not None and len(pairs) < n * (n - 1) // 2 else None,
    }
