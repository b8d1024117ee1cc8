"""A VAE decoder that sees the mask: MONAI's ``Decoder`` with the condition entering every level.

The condition is given at full image resolution, either as LAND's scalar encoding (1 channel, see
:mod:`land.conditioning`) or as its three decoder channels (:func:`decoder_condition`): lung occupancy
(0/1), nodule occupancy (0/1) and texture / 5 inside nodules (0 elsewhere). At a level ``f`` times coarser
than the image it is resized by :func:`pool_condition`: the two occupancies by average pooling (the share
of each voxel covered, which places an edge inside a coarse voxel and keeps a nodule smaller than the voxel
as a fraction instead of dropping or inflating it) and the texture by max pooling (the texture value itself,
not diluted by the nodule's share, which the occupancy channel already carries).

Per level a shared embedding ``SiLU(conv3x3(condition))`` feeds small 3x3 heads whose convolution is
zero-initialised, so at initialisation the decoder computes exactly the plain decoder:

* ``"spade"`` (spatially-adaptive normalisation, Park et al. 2019): after every GroupNorm of the residual
  blocks and the final GroupNorm, ``x * (1 + gamma) + beta`` with ``(gamma, beta)`` from the head.
* ``"additive"``: the head's features are added to the input of every residual block and of the final
  GroupNorm (they then also pass through the residual connections).

Only the decoder changes: the encoder, the latent space and the plain weights' names stay those of MONAI's
``AutoencoderKL``, so a plain VAE's state dict loads into :class:`MaskAutoencoderKL` (``strict=False``,
missing only the ``decoder.mask_*`` keys).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Upsample
from monai.networks.nets import AutoencoderKL
from monai.networks.nets.autoencoderkl import AEKLResBlock, Decoder

MASK_DECODERS = ("none", "spade", "additive")
CONDITION_CHANNELS = 3
EMBED_CHANNELS = 16  # hidden channels of each level's shared condition embedding

__all__ = [
    "CONDITION_CHANNELS",
    "MASK_DECODERS",
    "MaskAutoencoderKL",
    "MaskDecoder",
    "check_mask_decoder",
    "decoder_condition",
    "has_mask_decoder",
    "pool_condition",
]


def check_mask_decoder(value: object) -> str:
    """``value`` if it names a decoder variant (:data:`MASK_DECODERS`), else ValueError."""
    if value not in MASK_DECODERS:
        raise ValueError(f"vae.mask_decoder {value!r} is not one of {', '.join(MASK_DECODERS)}")
    return str(value)


def decoder_condition(cond: torch.Tensor) -> torch.Tensor:
    """The decoder's 3 condition channels (N, 3, *spatial), float32, from LAND's scalar conditioning mask
    (N, 1, *spatial; :func:`land.conditioning.encode.encode_conditioning`) or returned as is when already 3
    channels.

    Channels: lung occupancy (lung outside nodules), nodule occupancy, texture / 5 inside nodules; the same
    features as the U-Net's ``occupancy+texture`` injection, so every conditioning mode maps consistently
    (mode ``none``: all zeros).
    """
    if cond.dim() != 5 or cond.shape[1] not in (1, CONDITION_CHANNELS):
        raise ValueError(
            "decoder condition must be (N, 1, D, H, W) (scalar mask) or (N, 3, D, H, W), "
            f"got {tuple(cond.shape)}"
        )
    cond = cond.float()
    if cond.shape[1] == CONDITION_CHANNELS:
        return cond
    from ..conditioning.encode import nodule_region

    nodule = nodule_region(cond)
    lung = (cond > 0) & ~nodule
    texture = torch.where(nodule, cond, torch.zeros_like(cond))
    return torch.cat([lung.float(), nodule.float(), texture], dim=1)


def pool_condition(features: torch.Tensor, factor: int) -> torch.Tensor:
    """Resize 3-channel condition features (N, 3, *spatial) ``factor`` times down: occupancies averaged,
    texture max-pooled (see the module docstring); ``factor`` 1 returns them unchanged."""
    if factor == 1:
        return features
    occupancy = F.avg_pool3d(features[:, :2], factor, factor)
    texture = F.max_pool3d(features[:, 2:], factor, factor)
    return torch.cat([occupancy, texture], dim=1)


def _zero_conv(cin: int, cout: int) -> nn.Conv3d:
    conv = nn.Conv3d(cin, cout, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
    return conv


class MaskDecoder(Decoder):
    """MONAI's ``Decoder`` whose ``forward(x, cond)`` takes the full-resolution condition (see the module
    docstring). ``sites`` maps each head's name to ``(block index, where, level factor, channels)``, where
    ``where`` is ``"norm1"``/``"norm2"``/``"norm"`` (SPADE after that GroupNorm) or ``"in"`` (additive, the
    block's input); the level factor is the block's downsampling relative to the image."""

    def __init__(self, mask_decoder: str, embed_channels: int = EMBED_CHANNELS, **decoder_kwargs: object):
        super().__init__(**decoder_kwargs)  # type: ignore[arg-type]
        if check_mask_decoder(mask_decoder) == "none":
            raise ValueError("MaskDecoder needs mask_decoder 'spade' or 'additive' (use MONAI's Decoder)")
        self.mask_decoder = mask_decoder
        self.sites: dict[str, tuple[int, str, int, int]] = {}
        factor = 2 ** (len(self.channels) - 1)
        for i, block in enumerate(self.blocks):
            if isinstance(block, AEKLResBlock):
                if mask_decoder == "spade":
                    self.sites[f"b{i}_norm1"] = (i, "norm1", factor, block.in_channels)
                    self.sites[f"b{i}_norm2"] = (i, "norm2", factor, block.out_channels)
                else:
                    self.sites[f"b{i}_in"] = (i, "in", factor, block.in_channels)
            elif type(block) is nn.GroupNorm:
                where = "norm" if mask_decoder == "spade" else "in"
                self.sites[f"b{i}_{where}"] = (i, where, factor, block.num_channels)
            elif isinstance(block, Upsample):
                factor //= 2
        self.by_block: dict[tuple[int, str], str] = {(i, w): n for n, (i, w, _, _) in self.sites.items()}
        self.mask_embed = nn.ModuleDict(
            {str(f): nn.Conv3d(CONDITION_CHANNELS, embed_channels, 3, padding=1) for f in self.factors}
        )
        out = 2 if mask_decoder == "spade" else 1
        self.mask_heads = nn.ModuleDict(
            {name: _zero_conv(embed_channels, out * ch) for name, (_, _, _, ch) in self.sites.items()}
        )

    @property
    def factors(self) -> list[int]:
        """Level factors (image / level resolution) that have heads, coarsest first."""
        return sorted({f for _, _, f, _ in self.sites.values()}, reverse=True)

    def embedding(self, level: torch.Tensor, factor: int) -> torch.Tensor:
        """The shared embedding of condition features already pooled to level ``factor``."""
        return F.silu(self.mask_embed[str(factor)](level))

    def modulate(self, name: str, x: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """``x`` with head ``name``'s output: SPADE ``x * (1 + gamma) + beta``, or additive ``x + head``."""
        if self.mask_decoder == "spade":
            gamma, beta = head.chunk(2, dim=1)
            return torch.addcmul(beta, x, 1.0 + gamma)
        return x + head

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """Decode ``x`` (after ``post_quant_conv``) under ``cond`` (N, 1 or 3, *image spatial); None: no mask
        (all-zero condition features)."""
        full = None if cond is None else decoder_condition(cond).to(x.dtype)
        embeddings: dict[int, torch.Tensor] = {}

        def head(name: str, like: torch.Tensor) -> torch.Tensor:
            f = self.sites[name][2]
            if f not in embeddings:
                if full is None:
                    level = like.new_zeros(like.shape[0], CONDITION_CHANNELS, *like.shape[2:])
                else:
                    level = pool_condition(full, f)
                embeddings.clear()  # one level at a time: the previous level's embedding is not used again
                embeddings[f] = self.embedding(level, f)
            return self.mask_heads[name](embeddings[f])

        for i, block in enumerate(self.blocks):
            name = self.by_block.get((i, "in"))
            if name is not None:
                x = self.modulate(name, x, head(name, x))
            if isinstance(block, AEKLResBlock) and self.mask_decoder == "spade":
                x = self._res_block(i, block, x, head)
            elif type(block) is nn.GroupNorm and (i, "norm") in self.by_block:
                name = self.by_block[(i, "norm")]
                y = block(x)
                x = self.modulate(name, y, head(name, y))
            else:
                x = block(x)
        return x

    def _res_block(
        self, i: int, block: AEKLResBlock, x: torch.Tensor, head: Callable[[str, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """MONAI's ``AEKLResBlock.forward`` with SPADE after both GroupNorms."""
        n1, n2 = self.by_block[(i, "norm1")], self.by_block[(i, "norm2")]
        h = block.norm1(x)
        h = block.conv1(F.silu(self.modulate(n1, h, head(n1, h))))
        h = block.norm2(h)
        h = self.modulate(n2, h, head(n2, h))
        h = block.conv2(F.silu(h))
        return block.nin_shortcut(x) + h


class MaskAutoencoderKL(AutoencoderKL):
    """MONAI ``AutoencoderKL`` with a :class:`MaskDecoder`: ``decode(z, cond)`` and ``forward(x, cond)``."""

    def __init__(self, mask_decoder: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        levels = len(kwargs["channels"])  # type: ignore[arg-type]
        self.decoder = MaskDecoder(
            mask_decoder,
            spatial_dims=kwargs["spatial_dims"],
            channels=kwargs["channels"],
            in_channels=kwargs["latent_channels"],
            out_channels=kwargs["out_channels"],
            num_res_blocks=kwargs["num_res_blocks"],
            norm_num_groups=kwargs["norm_num_groups"],
            norm_eps=kwargs.get("norm_eps", 1e-6),
            attention_levels=kwargs.get("attention_levels", (False,) * levels),
            with_nonlocal_attn=kwargs.get("with_decoder_nonlocal_attn", True),
        )

    @property
    def mask_decoder(self) -> str:
        return self.decoder.mask_decoder

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """Image of latent ``z`` under the full-resolution condition ``cond`` (None: no mask)."""
        return self.decoder(self.post_quant_conv(z), cond)

    def reconstruct(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return self.decode(self.encode(x)[0], cond)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_mu, z_sigma = self.encode(x)
        return self.decode(self.sampling(z_mu, z_sigma), cond), z_mu, z_sigma


def has_mask_decoder(vae: nn.Module) -> bool:
    """Whether ``vae`` decodes with a mask (:class:`MaskAutoencoderKL`)."""
    return isinstance(vae, MaskAutoencoderKL)
