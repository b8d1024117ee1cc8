"""Shared fixtures: a tiny LAND model directory and synthetic masks on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from land.imaging.maskset import MaskSet
from land.imaging.volume import Volume
from land.models import UNetConfig, VAEConfig
from land.models.model_dir import ModelConfig
from land.pipeline import LANDPipeline

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_config(name: str = "tiny-test") -> ModelConfig:
    """A model small enough for CPU tests: 64^3 grid at 4 mm (256 mm field of view), 16^3 latent."""
    return ModelConfig(
        name=name,
        vae=VAEConfig(channels=(8, 16, 16), num_res_blocks=(1, 1, 1), latent_channels=4, norm_num_groups=8),
        unet=UNetConfig(
            channels=(16, 16, 32, 32, 32),
            attention_levels=(False, False, False, True, True),
            num_head_channels=16,
            cross_attention_dim=16,
            norm_num_groups=8,
        ),
        grid_size=(64, 64, 64),
        spacing=(4.0, 4.0, 4.0),
    )


def perturb_zero_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Untrained LAND U-Nets output exactly 0 (zero-initialised output convs); give them a signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim > 1 and torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a shared
    2-core machine two spinning OpenMP threads are ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    pipe = LANDPipeline.from_config(tiny_config())
    perturb_zero_weights(pipe.unet)
    return pipe.save_pretrained(tmp_path_factory.mktemp("models") / "tiny")


def ellipsoid(shape_zyx, centre_zyx, radii_zyx) -> np.ndarray:
    zz, yy, xx = np.indices(shape_zyx, dtype=np.float32)
    c, r = centre_zyx, radii_zyx
    return ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1.0


def make_masks(
    shape_zyx=(40, 48, 56),
    spacing=(5.0, 4.5, 6.0),
    origin=(-120.3, -95.7, -110.2),
    direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    textures: dict[int, int] | None = None,
) -> MaskSet:
    """Two lungs and two nodules (labels 1, 2) in an anisotropic, rotated, off-grid geometry."""
    z, y, x = shape_zyx
    lung = ellipsoid(shape_zyx, (z / 2, y / 2, x * 0.3), (z * 0.35, y * 0.3, x * 0.15))
    lung |= ellipsoid(shape_zyx, (z / 2, y / 2, x * 0.7), (z * 0.35, y * 0.3, x * 0.15))
    nodules = np.zeros(shape_zyx, np.uint8)
    nodules[ellipsoid(shape_zyx, (z / 2, y / 2, x * 0.3), (2.5, 3, 2))] = 1
    nodules[ellipsoid(shape_zyx, (z / 2 + 3, y / 2, x * 0.7), (2, 2.5, 2))] = 2
    geo = dict(spacing=spacing, origin=origin, direction=direction)
    return MaskSet(
        lung=Volume(lung.astype(np.uint8), **geo),
        nodules=Volume(nodules, **geo),
        textures=dict(textures or {1: 5, 2: 1}),
        names={1: "Nodule 1", 2: "Nodule 2"},
    )


def train_tiny_vae(data: Path, out: Path, steps: int) -> Path:
    """A VAE model directory from a few single-threaded steps of the ``tiny`` training config."""
    from land.train.config import load_config
    from land.train.vae_trainer import train_vae

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_vae(load_config("tiny"), data, out, max_steps=steps, device="cpu", progress="none")
    finally:
        torch.set_num_threads(threads)
