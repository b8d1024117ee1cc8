"""MS-SSIM diversity of generated samples (MONAI ``MultiScaleSSIMMetric``, 3D, data range 1, kernel 7).

Lower mean MS-SSIM between samples = more diverse. MS-SSIM is symmetric, so unordered pairs give the mean
of all ordered pairs. The volumes must already be in [0, 1]: ``land evaluate`` passes them scaled by the same
intensity protocol as the FID features (:class:`land.eval.sets.UnitVolumes`, default ``wdm``: HU clipped to
[-1000, the volume's 99.9th percentile], min-max per volume).

Memory is bounded: each scale's SSIM and contrast maps (MONAI's ``compute_ssim_and_cs``, valid convolution)
are computed slab by slab along the first axis, the slabs overlapping by ``kernel_size - 1`` voxels so their
valid maps partition the whole volume's map exactly, and averaged over all of it as MONAI's
``MultiScaleSSIMMetric`` does (equal to it within float rounding; tested). Two 512 x 512 x 141 volumes took
4.0 GB in one piece.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..interface.errors import InputError

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, MONAI's default, 5 scales
SIGMA, K1, K2 = 1.5, 0.01, 0.03  # MONAI's defaults
SLAB_VOXELS = 2**22  # input voxels per slab (about a dozen float32 maps of this size live at once)


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


def _ssim_cs_means(
    x: torch.Tensor, y: torch.Tensor, kernel_size: int, slab_voxels: int
) -> tuple[float, float]:
    """Means of MONAI's SSIM and contrast-sensitivity maps of [1, 1, z, y, x] tensors over the whole valid
    region, computed slab by slab along z."""
    from monai.metrics.regression import compute_ssim_and_cs

    k = kernel_size
    rows = x.shape[2] - k + 1  # valid output planes
    plane = x.shape[3] * x.shape[4]
    step = max(1, slab_voxels // plane - (k - 1))
    ssim_sum = cs_sum = 0.0
    count = 0
    for z0 in range(0, rows, step):
        z1 = min(rows, z0 + step)
        ssim, cs = compute_ssim_and_cs(
            x[:, :, z0 : z1 + k - 1], y[:, :, z0 : z1 + k - 1], spatial_dims=3, kernel_size=(k,) * 3,
            kernel_sigma=(SIGMA,) * 3, data_range=1.0, k1=K1, k2=K2,
        )  # fmt: skip
        ssim_sum += float(ssim.double().sum())
        cs_sum += float(cs.double().sum())
        count += ssim.numel()
        del ssim, cs
    return ssim_sum / count, cs_sum / count


@torch.inference_mode()
def ms_ssim_pair(
    a: np.ndarray,
    b: np.ndarray,
    kernel_size: int = 7,
    device: str | torch.device = "cpu",
    slab_voxels: int = SLAB_VOXELS,
) -> float:
    """MS-SSIM of two [z, y, x] volumes in [0, 1] (MONAI's definition, 5 scales, bounded memory)."""
    if a.shape != b.shape:
        raise InputError(f"MS-SSIM needs volumes of one shape, got {a.shape} and {b.shape}; fix: resize them")
    check_size(a.shape, kernel_size)
    x = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)[None, None]
    y = torch.as_tensor(np.ascontiguousarray(b), dtype=torch.float32, device=device)[None, None]
    factors = []
    for scale in range(len(WEIGHTS)):
        ssim, cs = _ssim_cs_means(x, y, kernel_size, slab_voxels)
        factors.append(max(ssim if scale == len(WEIGHTS) - 1 else cs, 0.0))  # MONAI: relu, SSIM last
        if scale < len(WEIGHTS) - 1:
            x = torch.nn.functional.avg_pool3d(x, kernel_size=2)
            y = torch.nn.functional.avg_pool3d(y, kernel_size=2)
    return float(np.prod([f**w for f, w in zip(factors, WEIGHTS, strict=True)]))


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
