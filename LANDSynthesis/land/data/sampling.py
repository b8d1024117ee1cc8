"""Data order as a pure function of (seed, step, rank): resuming at any step reproduces it exactly.

Case order is a fresh permutation per epoch (like ``DistributedSampler`` with shuffling): global item
``p = (step * world + rank) * batch + i`` is ``permutation(seed, p // n)[p % n]``. Patch positions and every
other per-step random choice come from :func:`step_seed`, so no sampler state needs saving.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed derived from (seed, step, rank, stream) with numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed), int(step), int(rank), int(stream)]).generate_state(
        2, np.uint64
    )
    return int(state[0] >> np.uint64(1))


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(epoch), 0x5A3]).permutation(n)


def case_indices(n: int, seed: int, step: int, batch: int, rank: int = 0, world: int = 1) -> list[int]:
    """Case indices of ``rank``'s batch at (0-based) ``step``: each rank sees a disjoint share per epoch."""
    if n < 1:
        raise ValueError("no cases to sample from")
    out = []
    first = (int(step) * world + rank) * batch
    cache: dict[int, np.ndarray] = {}
    for p in range(first, first + batch):
        epoch = p // n
        if epoch not in cache:
            cache[epoch] = _permutation(n, seed, epoch)
        out.append(int(cache[epoch][p % n]))
    return out


def patch_origin(shape: Sequence[int], patch: Sequence[int], seed: int) -> tuple[int, ...]:
    """Uniformly random corner of a ``patch`` inside ``shape`` (both z, y, x), from ``seed``."""
    if any(p > s for p, s in zip(patch, shape, strict=True)):
        raise ValueError(f"patch {tuple(patch)} is larger than the volume {tuple(shape)}")
    rng = np.random.default_rng(int(seed))
    return tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True))
