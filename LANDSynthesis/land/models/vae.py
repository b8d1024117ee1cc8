"""LAND's image autoencoder: MONAI ``AutoencoderKL`` configured like LAND's MAISI-style VAE."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from monai.networks.nets import AutoencoderKL

from .mask_decoder import MaskAutoencoderKL, check_mask_decoder


@dataclass
class VAEConfig:
    """Architecture of the VAE (stored in ``model.json``). Compression is 2**(levels-1) per axis.

    ``mask_decoder``: ``"none"`` (MONAI's plain decoder, the paper's), ``"spade"`` or ``"additive"``
    (:mod:`land.models.mask_decoder`: the full-resolution mask enters every decoder level). Written to
    ``model.json`` only when not ``"none"``, so plain models keep their earlier ``model.json``.
    """

    channels: Sequence[int] = (32, 64, 128)
    num_res_blocks: Sequence[int] = (1, 1, 1)
    latent_channels: int = 4
    norm_num_groups: int = 32
    mask_decoder: str = "none"

    @property
    def compression(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["num_res_blocks"] = list(self.num_res_blocks)
        if d["mask_decoder"] == "none":
            del d["mask_decoder"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown VAE config keys: {unknown}")
        cfg = cls(**d)
        cfg.channels = tuple(cfg.channels)
        cfg.num_res_blocks = tuple(cfg.num_res_blocks)
        check_mask_decoder(cfg.mask_decoder)
        return cfg


VAE_CONFIGS: dict[str, VAEConfig] = {
    # LAND (MAISI-derived): channels (32, 64, 128), one residual block per level, no attention.
    "paper": VAEConfig(),
    "small": VAEConfig(channels=(16, 32, 32), norm_num_groups=16),
}


def build_vae(cfg: VAEConfig | None = None) -> AutoencoderKL:
    """The 3D VAE: 1 CT channel in [0, 1] -> ``latent_channels`` at 1/compression resolution; a
    :class:`~land.models.mask_decoder.MaskAutoencoderKL` when ``cfg.mask_decoder`` is not ``"none"``."""
    cfg = cfg or VAEConfig()
    levels = len(cfg.channels)
    mode = check_mask_decoder(cfg.mask_decoder)
    kwargs = dict(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=tuple(cfg.channels),
        latent_channels=cfg.latent_channels,
        num_res_blocks=tuple(cfg.num_res_blocks),
        attention_levels=(False,) * levels,
        norm_num_groups=cfg.norm_num_groups,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )
    if mode == "none":
        return AutoencoderKL(**kwargs)
    return MaskAutoencoderKL(mode, **kwargs)
