"""Latents and latent-grid conditioning per case, encoded once and cached on disk.

Each case gives ``z`` = posterior mean x latent scale (C, d, h, w) and ``cond`` = the conditioning mask for
the mode, max-pooled to the latent grid (1, d, h, w; a second channel with the nodule fraction for U-Nets
that take it), stored as ``CACHE/<case>.safetensors``. ``index.json``
records what the cache was made with (VAE sha256, latent scale, mode, HU window); any difference empties
the cache. Without a cache, cases are encoded on the fly at every use.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..conditioning.encode import pool_to_latent
from ..data.folder import CaseFiles, conditioning_array, hu_to_unit, load_case
from ..imaging.atomic import atomic_path
from ..interface.errors import InputError
from .distributed import DistContext, barrier

INDEX_FILE = "index.json"


def _file_name(case: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", case) + ".safetensors"


class LatentStore:
    def __init__(
        self,
        cases: list[CaseFiles],
        vae: torch.nn.Module,
        compression: int,
        latent_scale: float,
        mode: str,
        hu: tuple[float, float],
        latent_grid: tuple[int, int, int],
        device: torch.device,
        cache_dir: Path | None,
        key: dict[str, Any],
        nodule_fraction: bool = False,
    ) -> None:
        self.cases, self.vae, self.compression = cases, vae, compression
        self.latent_scale, self.mode, self.hu, self.device = latent_scale, mode, hu, device
        self.latent_grid_zyx = tuple(reversed(latent_grid))
        self.cache_dir = cache_dir
        self.nodule_fraction = nodule_fraction
        self.key = {**key, "latent_scale": latent_scale, "mode": mode, "hu": list(hu)}
        if nodule_fraction:  # absent otherwise, so caches made before this option stay valid
            self.key["nodule_fraction"] = True

    @torch.no_grad()
    def encode(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        files = self.cases[index]
        case = load_case(files)
        image = torch.from_numpy(hu_to_unit(case.image.array, *self.hu))[None, None]
        mu, _ = self.vae.encode(image.to(self.device))
        z = (mu[0].float() * self.latent_scale).cpu().contiguous()
        cond = pool_to_latent(
            np.ascontiguousarray(conditioning_array(case.masks, self.mode)),
            self.compression,
            nodule_fraction=self.nodule_fraction,
        )
        cond = cond[0].contiguous()
        if tuple(z.shape[1:]) != self.latent_grid_zyx or tuple(cond.shape[1:]) != self.latent_grid_zyx:
            raise InputError(
                f"case {files.name}: latent grid {tuple(z.shape[1:])} differs from the config's "
                f"{self.latent_grid_zyx} (z, y, x); resample the case onto data.grid_size"
            )
        return z, cond

    def path(self, index: int) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / _file_name(self.cases[index].name)

    def prepare(self, ctx: DistContext, notice) -> int:
        """Encode the cases missing from the cache (split over the ranks); returns this rank's count."""
        if self.cache_dir is None:
            return 0
        index_path = self.cache_dir / INDEX_FILE
        if ctx.is_main:
            current = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else None
            if current != self.key:
                if self.cache_dir.exists():
                    shutil.rmtree(self.cache_dir)
                self.cache_dir.mkdir(parents=True)
                index_path.write_text(json.dumps(self.key, indent=2), encoding="utf-8")
        barrier(ctx)
        todo = [
            i for i in range(len(self.cases)) if i % ctx.world_size == ctx.rank and not self.path(i).is_file()
        ]
        if todo and ctx.is_main:
            notice(f"encoding {len(todo) * ctx.world_size} case(s) into the latent cache {self.cache_dir}")
        self.vae.eval()
        for i in todo:
            z, cond = self.encode(i)
            with atomic_path(self.path(i)) as tmp:
                save_file({"z": z, "cond": cond}, str(tmp))
        barrier(ctx)
        return len(todo)

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache_dir is None:
            return self.encode(index)
        d = load_file(str(self.path(index)))
        return d["z"], d["cond"]

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.get(i) for i in indices]
        return torch.stack([z for z, _ in items]), torch.stack([c for _, c in items])
