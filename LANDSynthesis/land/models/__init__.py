"""LAND networks: the VAE (MONAI AutoencoderKL) and the additive-skip denoising U-Net."""

from .unet import UNET_CONFIGS, LANDUNet, MaskTokenizer, UNetConfig
from .vae import VAE_CONFIGS, VAEConfig, build_vae

__all__ = ["LANDUNet", "MaskTokenizer", "UNET_CONFIGS", "UNetConfig", "VAE_CONFIGS", "VAEConfig", "build_vae"]


def count_parameters(module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())
