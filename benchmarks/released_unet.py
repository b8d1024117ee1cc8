"""A reference U-Net laid out like the released LAND code's, for speed comparisons only (not used by LAND).

Built from the published configuration (facts, not its code; see ``../shared/NOTES.md``): base 128
channels × (1, 3, 4, 4, 4), 2 res blocks per level, plain strided-conv down- and nearest+conv upsampling,
**additive** skips averaged with the decoder state (``(h + skip) / 2``), 2 res blocks and an upsampler per
decoder level, each outputting the width of the skip it meets next (so a level narrows inside its last res
block and upsamples at the narrower width, 128→128 at 64³), and a one-head transformer (self-attention,
cross-attention, feed-forward) at the 4³ level in the input, middle and output blocks whose context is the
mask itself: one 1-d token per latent voxel (262,144 at 64³).
Blocks are MONAI's, as in LAND's own U-Net, so the comparison measures layout, not kernels.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUNetResnetBlock,
    SpatialTransformer,
    get_timestep_embedding,
    zero_module,
)
from torch import nn

BASE = 128
MULTIPLIERS = (1, 3, 4, 4, 4)
ATTENTION_DOWNSAMPLING = 16  # the 4³ level of a 64³ latent


class _Block(nn.Module):
    """One res block, optionally followed by self+cross attention to the mask tokens."""

    def __init__(self, cin: int, cout: int, temb: int, attention: bool) -> None:
        super().__init__()
        self.res = DiffusionUNetResnetBlock(3, cin, temb, cout, norm_num_groups=32)
        self.attn = (
            SpatialTransformer(3, cout, 1, cout, cross_attention_dim=1, use_flash_attention=True)
            if attention
            else None
        )

    def forward(self, h: torch.Tensor, emb: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        h = self.res(h, emb)
        return h if self.attn is None else self.attn(h, context=ctx)


class ReleasedLayoutUNet(nn.Module):
    """Denoiser with the released LAND U-Net's layout: input (N, 4 + 1, D, H, W) → (N, 4, D, H, W)."""

    def __init__(self, latent_channels: int = 4, cond_channels: int = 1, num_res_blocks: int = 2) -> None:
        super().__init__()
        temb = BASE * 4
        self.time_embed = nn.Sequential(nn.Linear(BASE, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = Convolution(3, latent_channels + cond_channels, BASE, kernel_size=3, conv_only=True)
        widths = [BASE * m for m in MULTIPLIERS]
        skips, ch, ds = [BASE], BASE, 1
        self.down = nn.ModuleList()
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(_Block(ch, width, temb, ds == ATTENTION_DOWNSAMPLING))
                ch = width
                skips.append(ch)
            if level < len(widths) - 1:
                self.down.append(Convolution(3, ch, ch, strides=2, kernel_size=3, conv_only=True))
                skips.append(ch)
                ds *= 2
        self.mid = nn.ModuleList([_Block(ch, ch, temb, True), _Block(ch, ch, temb, False)])
        # decoder: each module first averages in one skip; res blocks and the upsampler output the width of
        # the skip they meet next; the first skip (conv_in's output) is never used
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                skips.pop()
                self.up.append(_Block(ch, skips[-1], temb, ds == ATTENTION_DOWNSAMPLING))
                ch = skips[-1]
            if level:
                skips.pop()
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"),
                        Convolution(3, ch, skips[-1], kernel_size=3, conv_only=True),
                    )
                )
                ch = skips[-1]
                ds //= 2
        self.out = nn.Sequential(
            nn.GroupNorm(32, ch, eps=1e-6),
            nn.SiLU(),
            zero_module(Convolution(3, ch, latent_channels, kernel_size=3, conv_only=True)),
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(get_timestep_embedding(timesteps, BASE).to(x.dtype))
        ctx = cond.flatten(2).transpose(1, 2)  # one 1-d token per latent voxel
        h = self.conv_in(torch.cat([x, cond], 1))
        hs = [h]
        for module in self.down:
            h = module(h, emb, ctx) if isinstance(module, _Block) else module(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb, ctx)
        for module in self.up:
            h = (h + hs.pop()) / 2
            h = module(h, emb, ctx) if isinstance(module, _Block) else module(h)
        return self.out(h)
