"""Whole-volume cases for the VAE's decoder-only steps: the image, and what a mask-aware decoder and its
losses need (the conditioning mask, the nodule mask, the ring around nodules, the image without nodules)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.folder import CaseFiles, conditioning_array, hu_to_unit, load_case, read_image_without_nodules

__all__ = ["DecoderCase", "DecoderCases", "paired_step"]


@dataclass
class DecoderCase:
    """One case as (1, 1, D, H, W) float32 tensors; the optional parts are None where not asked for or
    absent (``without``: the case has no ``image_without_nodules.nii.gz``)."""

    image: torch.Tensor  # [0, 1]
    without: torch.Tensor | None  # the same anatomy without its nodules, [0, 1]
    cond: torch.Tensor | None  # the encoded conditioning mask (land.conditioning), the decoder's input
    nodules: torch.Tensor | None  # 0/1
    ring: torch.Tensor | None  # 0/1: the 1-5 mm shell around nodules (land.eval.fidelity.nodule_ring)


@dataclass
class _Entry:
    image: np.ndarray  # HU as stored
    without: np.ndarray | None
    cond: np.ndarray | None
    nodules: np.ndarray | None
    ring: np.ndarray | None


class DecoderCases:
    """Reads (caching up to ``cache_volumes``) the cases of the decoder-only steps; index -> DecoderCase."""

    def __init__(
        self,
        cases: Sequence[CaseFiles],
        hu: tuple[float, float],
        mode: str,
        *,
        cond: bool = False,
        nodules: bool = False,
        ring: bool = False,
        without: bool = False,
        cache_volumes: int = 0,
    ) -> None:
        self.cases, self.hu, self.mode = list(cases), hu, mode
        self.want_cond, self.want_nodules, self.want_ring, self.want_without = cond, nodules, ring, without
        self.cache_volumes = int(cache_volumes)
        self._cache: OrderedDict[int, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self.cases)

    def _entry(self, index: int) -> _Entry:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        files = self.cases[index]
        case = load_case(files)
        assert case.image is not None
        assert case.masks.nodules is not None  # load_case reads every mask
        nod = case.masks.nodules.array != 0
        ring = None
        if self.want_ring:
            from ..eval.fidelity import GAP_MM, SHELL_MM, nodule_ring

            # 1-5 mm; on grids coarser than 5 mm at least the face-adjacent voxels (else it would be empty)
            shell = max(SHELL_MM, max(case.image.spacing) - GAP_MM)
            ring = nodule_ring(nod, case.image.spacing, GAP_MM, shell)
        pair = read_image_without_nodules(files, case.image) if self.want_without else None
        entry = _Entry(
            image=case.image.array,
            without=None if pair is None else pair.array,
            cond=conditioning_array(case.masks, self.mode) if self.want_cond else None,
            nodules=nod if self.want_nodules else None,
            ring=ring,
        )
        if self.cache_volumes > 0:
            self._cache[index] = entry
            while len(self._cache) > self.cache_volumes:
                self._cache.popitem(last=False)
        return entry

    def __getitem__(self, index: int) -> DecoderCase:
        e = self._entry(int(index))

        def unit(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(hu_to_unit(a, *self.hu))[None, None]

        def mask(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(a.astype(np.float32))[None, None]

        image = unit(e.image)
        assert image is not None
        return DecoderCase(image, unit(e.without), mask(e.cond), mask(e.nodules), mask(e.ring))


def paired_step(seed: int, step: int, rank: int, fraction: float, has_pair: bool) -> bool:
    """Whether decoder step ``step`` is a paired one (image without nodules in, with nodules out): a
    deterministic draw per (seed, step, rank), so a resumed run makes the same choices."""
    draw = np.random.default_rng([int(seed), int(step), int(rank), 0x9A1]).random()
    return has_pair and draw < fraction
