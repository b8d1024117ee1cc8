"""Nearest ×2 upsampling followed by a 3×3×3 convolution, computed without the upsampled tensor.

After nearest upsampling along an axis, output voxel ``2i + p`` of a 3-tap convolution reads input voxels
``i - 1, i, i`` (``p = 0``) or ``i, i, i + 1`` (``p = 1``): two distinct inputs, with two of the three
weights summed. In 3D each of the 8 output phases is a 2×2×2 convolution of the *low-resolution* input, so
the layer costs 8·8 instead of 27·8 multiply-adds per low-resolution voxel (3.375× fewer) and never builds
the 8× larger upsampled tensor. All 8 phases run as one convolution with ``8·out_channels`` outputs; the
phases are then interleaved. The result equals ``conv3d(interpolate(x, 2, "nearest"), w, b, padding=1)``
up to float rounding (the summed weights round once more).

Public API: :func:`upsample_conv3d`, :func:`phase_weights`, :class:`NearestUpsampleConv`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NearestUpsampleConv", "fusable", "fusable_conv", "phase_weights", "upsample_conv3d"]

# [phase p][tap of the 2-tap kernel][tap of the 3-tap kernel]: which original taps each phase tap sums
_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3, 3) -> (8·O, C, 2, 2, 2): each output phase's 2×2×2 kernel, phase (pz, py, px) major."""
    if weight.ndim != 5 or tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(f"expected a 3x3x3 convolution weight, got shape {tuple(weight.shape)}")
    a = torch.tensor(_TAPS, dtype=torch.float64, device=weight.device)
    k = torch.einsum("zai,ybj,xdk,ocijk->zyxocabd", a, a, a, weight.double())
    return k.reshape(8 * weight.shape[0], weight.shape[1], 2, 2, 2).to(weight.dtype)


def upsample_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pads: Sequence[int] = (1, 1, 1, 1, 1, 1),
    phased: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv3d(interpolate(x, 2, "nearest"), weight, bias)`` with a 3×3×3 ``weight``.

    ``pads`` (in ``F.pad`` order: W low, W high, H low, H high, D low, D high; each 0 or 1) says which sides
    of the *upsampled* tensor are zero-padded by one voxel; an unpadded side loses one output voxel (the
    halo a tiled caller supplies). All ones: ``padding=1``, the output is exactly twice the input's size.
    ``phased``: :func:`phase_weights` of ``weight`` when the caller keeps it.
    """
    if any(p not in (0, 1) for p in pads) or len(pads) != 6:
        raise ValueError(f"pads must be six 0/1 values, got {tuple(pads)}")
    o = weight.shape[0]
    k = phase_weights(weight) if phased is None else phased
    b = None if bias is None else bias.repeat(8).to(x.dtype)
    y = F.conv3d(F.pad(x, tuple(pads)) if any(pads) else x, k.to(x.dtype), b)
    n, _, *pairs = y.shape  # pair s of an axis gives the upsampled voxels 2s + 0 and 2s + 1 (raw numbering)
    lows = (pads[4], pads[2], pads[0])  # raw voxel 0 exists only where that side was padded...
    highs = (pads[5], pads[3], pads[1])
    sizes = [2 * s - lo - hi for s, lo, hi in zip(pairs, lows, highs, strict=True)]  # ...and is cropped
    out = y.new_empty((n, o, *sizes))
    for p in range(8):
        phase = ((p >> 2) & 1, (p >> 1) & 1, p & 1)  # (pz, py, px)
        src, dst = [slice(None), slice(p * o, (p + 1) * o)], [slice(None), slice(None)]
        for q_phase, lo, size in zip(phase, lows, sizes, strict=True):
            q = 1 - q_phase  # phase 0 reads (i - 1, i): it is the second voxel of pair s = i - 1
            s0 = 1 if q < lo else 0
            first = 2 * s0 + q - lo
            count = len(range(first, size, 2))
            src.append(slice(s0, s0 + count))
            dst.append(slice(first, size, 2))
        out[tuple(dst)] = y[tuple(src)]
    return out


def fusable(upsample: nn.Module, conv: nn.Module) -> nn.Conv3d | None:
    """The Conv3d of ``conv`` when ``upsample`` + ``conv`` is nearest ×2 then a 3×3×3 'same' convolution."""
    if not isinstance(upsample, nn.Upsample) or upsample.mode != "nearest" or upsample.size is not None:
        return None
    sf = upsample.scale_factor
    if set(sf if isinstance(sf, tuple) else (sf,)) != {2.0}:
        return None
    return fusable_conv(conv)


def fusable_conv(conv: nn.Module) -> nn.Conv3d | None:
    """The Conv3d of ``conv`` (a Conv3d or MONAI's conv-only ``Convolution``) when it is a 3×3×3 stride-1
    convolution with zero padding 1, the one that can follow nearest ×2 upsampling fused."""
    if isinstance(conv, nn.Conv3d):
        inner = conv
    else:  # MONAI's Convolution(conv_only=True): a Sequential holding one Conv3d
        kids = list(conv.children())
        if len(kids) != 1 or type(kids[0]) is not nn.Conv3d:
            return None
        inner = kids[0]
    if (
        inner.kernel_size != (3, 3, 3)
        or inner.padding != (1, 1, 1)
        or inner.stride != (1, 1, 1)
        or inner.dilation != (1, 1, 1)
        or inner.groups != 1
        or inner.padding_mode != "zeros"
    ):
        return None
    return inner


class NearestUpsampleConv(nn.Sequential):
    """``nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv)`` (same parameter names) that
    runs as :func:`upsample_conv3d` — 3.375× fewer multiply-adds, no upsampled tensor."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), conv)
        inner = fusable(self[0], conv)
        if inner is None:
            raise ValueError(f"{conv} is not a 3x3x3 stride-1 convolution with padding 1")
        self._inner = [inner]  # a list: not registered twice as a submodule
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def _phased(self, weight: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and weight.requires_grad:
            return phase_weights(weight)  # training: gradients flow through the weight sums
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, phase_weights(weight.detach()))
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self._inner[0]
        return upsample_conv3d(x, conv.weight, conv.bias, phased=self._phased(conv.weight))
