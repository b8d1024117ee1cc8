"""LAND's 3D denoising U-Net: additive skips, timestep embedding, cross-attention to mask tokens.

Assembled from MONAI's diffusion blocks (``DiffusionUNetResnetBlock``, ``SpatialTransformer``,
``get_timestep_embedding``). MONAI's ``DiffusionModelUNet`` concatenates skip connections; LAND adds
them, which keeps every decoder block at the encoder's width (fewer parameters, less compute).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUNetResnetBlock,
    SpatialTransformer,
    get_timestep_embedding,
    zero_module,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from .upconv import NearestUpsampleConv

COND_INJECTIONS = ("input", "every_level")
COND_FEATURES = ("scalar", "occupancy+texture", "occupancy+texture+fraction")
FRACTION_FEATURES = "occupancy+texture+fraction"


def cond_channels_for(cond_features: str) -> int:
    """Channels of the latent-grid condition a U-Net with these features takes: the paper's scalar, plus
    the nodule fraction (:func:`land.conditioning.encode.pool_to_latent` ``nodule_fraction``) for
    ``+fraction``."""
    return 2 if cond_features == FRACTION_FEATURES else 1


def mask_features(cond: torch.Tensor, how: str) -> torch.Tensor:
    """The latent-grid mask as injection features: itself (``scalar``); for ``occupancy+texture`` three
    channels: lung occupancy, nodule occupancy and the texture value inside nodules; ``+fraction`` adds the
    condition's second channel, the share of each latent voxel covered by nodules."""
    if how == "scalar":
        return cond
    from ..conditioning.encode import nodule_region

    scalar = cond[:, :1]
    nodule = nodule_region(scalar)
    lung = (scalar > 0) & ~nodule
    texture = torch.where(nodule, scalar, torch.zeros_like(scalar))
    feats = [lung.to(cond.dtype), nodule.to(cond.dtype), texture]
    if how == FRACTION_FEATURES:
        feats.append(cond[:, 1:2])
    return torch.cat(feats, dim=1)


@dataclass
class UNetConfig:
    """Architecture of :class:`LANDUNet` (stored in ``model.json``)."""

    channels: Sequence[int] = (128, 384, 512, 512, 512)
    num_res_blocks: int = 2
    attention_levels: Sequence[bool] = (False, False, False, True, True)
    latent_channels: int = 4
    cond_channels: int = 1
    num_head_channels: int = 64
    cross_attention_dim: int = 64
    mask_patch: int = 4
    norm_num_groups: int = 32
    # "input": the mask enters at the input and as cross-attention tokens (the paper); "every_level": it is
    # also max-pooled to every resolution and added (zero-initialised 3x3 convolution) at each level's start
    cond_injection: str = "input"
    # features the injected mask is given as: "scalar" (the paper's value) or "occupancy+texture"
    # (lung occupancy, nodule occupancy, texture/5 inside nodules), derived from the scalar encoding;
    # "occupancy+texture+fraction" also takes each latent voxel's nodule share (cond_channels 2)
    cond_features: str = "scalar"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["attention_levels"] = list(self.attention_levels)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "extra"}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown U-Net config keys: {unknown}")
        cfg = cls(**known)
        cfg.channels = tuple(cfg.channels)
        cfg.attention_levels = tuple(bool(a) for a in cfg.attention_levels)
        if cfg.cond_injection not in COND_INJECTIONS:
            raise ValueError(f"cond_injection {cfg.cond_injection!r} is not one of {COND_INJECTIONS}")
        if cfg.cond_features not in COND_FEATURES:
            raise ValueError(f"cond_features {cfg.cond_features!r} is not one of {COND_FEATURES}")
        if cfg.cond_channels != cond_channels_for(cfg.cond_features):
            raise ValueError(
                f"cond_channels {cfg.cond_channels} does not match cond_features {cfg.cond_features!r} "
                f"(needs {cond_channels_for(cfg.cond_features)})"
            )
        return cfg

    @property
    def nodule_fraction(self) -> bool:
        """Whether the latent condition carries the nodule-fraction channel."""
        return self.cond_features == FRACTION_FEATURES


UNET_CONFIGS: dict[str, UNetConfig] = {
    # LAND's released training script: base 128 channels, multipliers (1, 3, 4, 4, 4).
    "paper": UNetConfig(),
    # CPU demo and tests: base 32, multipliers (1, 2, 2, 4, 4).
    "small": UNetConfig(
        channels=(32, 64, 64, 128, 128),
        num_head_channels=32,
        cross_attention_dim=32,
    ),
}


class MaskTokenizer(nn.Module):
    """Turns the latent-grid conditioning mask into tokens for cross-attention.

    Non-overlapping ``patch``-sized cubes of the mask (plus normalised coordinates, so every token
    knows where it is) are projected to ``dim``-d tokens: a 64^3 latent mask with patch 4 gives 4096 tokens.
    """

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(in_channels + 3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        n, _, d, h, w = mask.shape
        axes = [torch.linspace(-1.0, 1.0, s, device=mask.device, dtype=mask.dtype) for s in (d, h, w)]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).expand(n, 3, d, h, w)
        tokens = self.proj(torch.cat([mask, coords], dim=1))
        return self.norm(tokens.flatten(2).transpose(1, 2))


class _AttentionBlock(nn.Module):
    """MONAI ``SpatialTransformer``: self-attention over voxels, then cross-attention to mask tokens."""

    def __init__(self, channels: int, cfg: UNetConfig) -> None:
        super().__init__()
        heads = max(1, channels // cfg.num_head_channels)
        self.block = SpatialTransformer(
            spatial_dims=3,
            in_channels=channels,
            num_attention_heads=heads,
            num_head_channels=channels // heads,
            norm_num_groups=cfg.norm_num_groups,
            cross_attention_dim=cfg.cross_attention_dim,
            use_flash_attention=True,
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.block(x, context=context)


class _Level(nn.Module):
    """Residual blocks of one resolution level, each optionally followed by attention."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, temb: int, attn: bool, cfg: UNetConfig):
        super().__init__()
        self.resnets = nn.ModuleList(
            DiffusionUNetResnetBlock(
                spatial_dims=3,
                in_channels=in_ch if i == 0 else out_ch,
                out_channels=out_ch,
                temb_channels=temb,
                norm_num_groups=cfg.norm_num_groups,
            )
            for i in range(n_blocks)
        )
        self.attentions = (
            nn.ModuleList(_AttentionBlock(out_ch, cfg) for _ in range(n_blocks)) if attn else None
        )


class LANDUNet(nn.Module):
    """LAND's denoiser: a 3D U-Net with **additive** skip connections.

    Input: noisy latent (N, 4, D, H, W) and the latent-grid conditioning mask (N, 1, D, H, W), which is
    both concatenated to the latent and tokenised for cross-attention at the attention levels and the
    middle block. Output: the v-prediction (N, 4, D, H, W). D, H, W must be divisible by 2**(levels-1).
    """

    def __init__(self, cfg: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or UNetConfig()
        ch = list(cfg.channels)
        if len(ch) != len(cfg.attention_levels):
            raise ValueError("channels and attention_levels must have the same length")
        if any(c % cfg.norm_num_groups for c in ch):
            raise ValueError(
                f"every channel count must be a multiple of norm_num_groups={cfg.norm_num_groups}"
            )
        self.cfg = cfg
        self.use_checkpoint = False
        temb = ch[0] * 4
        self.time_embed = nn.Sequential(nn.Linear(ch[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.tokenizer = MaskTokenizer(cfg.cond_channels, cfg.cross_attention_dim, cfg.mask_patch)
        self.conv_in = Convolution(
            3, cfg.latent_channels + cfg.cond_channels, ch[0], kernel_size=3, conv_only=True
        )

        n = cfg.num_res_blocks
        self.cond_inject: nn.ModuleList | None = None
        if cfg.cond_injection == "every_level":
            n_feat = {"scalar": cfg.cond_channels, "occupancy+texture": 3, FRACTION_FEATURES: 4}[
                cfg.cond_features
            ]
            # one zero-initialised projection per encoder level, then per decoder level (deepest first),
            # each to the width of that level's input
            widths = [ch[max(i - 1, 0)] for i in range(len(ch))] + list(reversed(ch))
            self.cond_inject = nn.ModuleList(
                zero_module(Convolution(3, n_feat, c, kernel_size=3, conv_only=True)) for c in widths
            )

        self.down_levels = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, c in enumerate(ch):
            prev = ch[i - 1] if i else ch[0]
            self.down_levels.append(_Level(prev, c, n, temb, cfg.attention_levels[i], cfg))
            if i < len(ch) - 1:
                self.downsamplers.append(Convolution(3, c, c, strides=2, kernel_size=3, conv_only=True))

        mid_ch = ch[-1]
        rb = dict(spatial_dims=3, temb_channels=temb, norm_num_groups=cfg.norm_num_groups)
        self.mid_res1 = DiffusionUNetResnetBlock(in_channels=mid_ch, out_channels=mid_ch, **rb)
        self.mid_attn = _AttentionBlock(mid_ch, cfg)
        self.mid_res2 = DiffusionUNetResnetBlock(in_channels=mid_ch, out_channels=mid_ch, **rb)

        self.up_levels = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(len(ch))):
            self.up_levels.append(_Level(ch[i], ch[i], n, temb, cfg.attention_levels[i], cfg))
            if i > 0:
                # nearest x2 + 3x3x3 convolution, run without the upsampled tensor (3.375x fewer
                # multiply-adds; same parameters and result as nn.Sequential(nn.Upsample, conv))
                self.upsamplers.append(
                    NearestUpsampleConv(Convolution(3, ch[i], ch[i - 1], kernel_size=3, conv_only=True))
                )
        self.out = nn.Sequential(
            nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=1e-6),
            nn.SiLU(),
            zero_module(Convolution(3, ch[0], cfg.latent_channels, kernel_size=3, conv_only=True)),
        )

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.cfg.channels) - 1)

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training:
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _pooled_features(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """The injection features max-pooled to every level's resolution (empty without injection)."""
        if self.cond_inject is None:
            return []
        feats = mask_features(cond, self.cfg.cond_features)
        pooled = [feats]
        for _ in range(len(self.cfg.channels) - 1):
            down = F.max_pool3d(pooled[-1], kernel_size=2, stride=2)
            if self.cfg.nodule_fraction:  # a share averages, occupancy and texture keep their maximum
                share = F.avg_pool3d(pooled[-1][:, -1:], kernel_size=2, stride=2)
                down = torch.cat([down[:, :-1], share], dim=1)
            pooled.append(down)
        return pooled

    def _inject(self, h: torch.Tensor, pooled: list[torch.Tensor], which: int, level: int) -> torch.Tensor:
        if self.cond_inject is None:
            return h
        return h + self.cond_inject[which](pooled[level].to(h.dtype))

    def _level(
        self, level: _Level, h: torch.Tensor, emb: torch.Tensor, ctx: torch.Tensor, skips: list | None
    ):
        """Run one level; with ``skips`` (decoder) each block first adds the matching encoder feature."""
        outputs = []
        for j, resnet in enumerate(level.resnets):
            if skips is not None:
                h = h + skips.pop()
            h = self._run(resnet, h, emb)
            if level.attentions is not None:
                h = self._run(level.attentions[j], h, ctx)
            outputs.append(h)
        return h, outputs

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        f = self.downsampling_factor
        if x.ndim != 5 or any(s % f for s in x.shape[2:]):
            raise ValueError(
                f"latent must be (N, C, D, H, W) with D, H, W divisible by {f}; got {tuple(x.shape)}"
            )
        if cond is None:
            cond = torch.zeros(
                (x.shape[0], self.cfg.cond_channels, *x.shape[2:]), dtype=x.dtype, device=x.device
            )
        if cond.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"conditioning grid {tuple(cond.shape[2:])} differs from latent {tuple(x.shape[2:])}"
            )
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = get_timestep_embedding(timesteps, self.cfg.channels[0]).to(dtype=x.dtype)
        emb = self.time_embed(emb)
        ctx = self.tokenizer(cond)

        h = self.conv_in(torch.cat([x, cond], dim=1))
        pooled = self._pooled_features(cond)
        skips: list[torch.Tensor] = []
        for i, level in enumerate(self.down_levels):
            h = self._inject(h, pooled, i, i)
            h, outs = self._level(level, h, emb, ctx, None)
            skips.extend(outs)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)

        h = self._run(self.mid_res1, h, emb)
        h = self._run(self.mid_attn, h, ctx)
        h = self._run(self.mid_res2, h, emb)

        n_levels = len(self.up_levels)
        for i, level in enumerate(self.up_levels):
            h = self._inject(h, pooled, n_levels + i, n_levels - 1 - i)
            h, _ = self._level(level, h, emb, ctx, skips)
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h)
        return self.out(h)
