"""land.models.upconv: nearest x2 upsampling + 3x3x3 convolution without the upsampled tensor."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution

from land.models.unet import LANDUNet, UNetConfig
from land.models.upconv import NearestUpsampleConv, fusable, phase_weights, upsample_conv3d


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, pads) -> torch.Tensor:
    return F.conv3d(F.pad(F.interpolate(x, scale_factor=2.0, mode="nearest"), tuple(pads)), w, b)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 2, 2), (2, 7, 3)])
def test_equals_upsampling_then_convolution_for_every_padding(shape):
    """float64: the same numbers to rounding (the algebra is exact); every combination of padded sides,
    which is how the streaming decoder asks for slabs with halos."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(2, 5, *shape, generator=g, dtype=torch.float64)
    w = torch.randn(6, 5, 3, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    for pads in itertools.product((0, 1), repeat=6):
        ref = reference(x, w, b, pads)
        out = upsample_conv3d(x, w, b, pads)
        assert out.shape == ref.shape, pads
        assert float((out - ref).abs().max()) < 1e-11, pads
    assert upsample_conv3d(x, w, None).shape == (2, 6, *(2 * s for s in shape))


def test_float32_is_within_rounding_and_phase_weights_sum_the_taps():
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(1, 16, 6, 5, 4, generator=g), torch.randn(8, 16, 3, 3, 3, generator=g) * 0.1, None
    ref = reference(x, w, b, (1,) * 6)
    assert float((upsample_conv3d(x, w, b) - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    k = phase_weights(w).view(2, 2, 2, 8, 16, 2, 2, 2)
    # every phase's kernel holds all 27 weights once: the sums over the 2x2x2 taps are the 3x3x3 sum
    assert torch.allclose(k.sum(dim=(-3, -2, -1)), w.sum(dim=(-3, -2, -1)).expand(2, 2, 2, 8, 16), atol=1e-5)
    with pytest.raises(ValueError, match="3x3x3"):
        phase_weights(torch.zeros(2, 2, 1, 1, 1))
    with pytest.raises(ValueError, match="0/1"):
        upsample_conv3d(x, w, b, (2, 1, 1, 1, 1, 1))


def test_module_keeps_the_sequential_parameters_and_gradients():
    torch.manual_seed(0)
    conv = Convolution(3, 6, 4, kernel_size=3, conv_only=True)
    plain = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), copy.deepcopy(conv))
    fused = NearestUpsampleConv(conv)
    assert list(fused.state_dict()) == list(plain.state_dict()) == ["1.conv.weight", "1.conv.bias"]
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6, 3, 4, 5)
    a, b = plain(x), fused(x)
    assert float((a - b).detach().abs().max()) <= 1e-5
    a.square().sum().backward()
    b.square().sum().backward()
    ga, gb = plain[1].conv.weight.grad, fused[1].conv.weight.grad
    assert float((ga - gb).abs().max()) <= 1e-4 * float(ga.abs().max())
    with torch.no_grad():  # inference: the phase kernels are cached, and follow a weight update
        first = fused(x)
        fused[1].conv.weight.mul_(2.0)
        assert not torch.allclose(fused(x), first)
    assert fusable(nn.Upsample(scale_factor=2, mode="trilinear"), conv) is None
    with pytest.raises(ValueError, match="3x3x3"):
        NearestUpsampleConv(Convolution(3, 6, 4, kernel_size=1, conv_only=True))


def test_unet_with_fused_upsamplers_matches_the_plain_layout():
    """The U-Net's decoder upsamplers are fused; with plain nn.Sequential upsamplers holding the same
    weights the output is the same to float rounding (checkpoints load unchanged)."""
    torch.manual_seed(0)
    cfg = UNetConfig(channels=(32, 32, 64, 64, 64), num_head_channels=32, cross_attention_dim=32)
    unet = LANDUNet(cfg).eval()
    for p in unet.parameters():  # the output conv is zero-initialised: give every layer a say
        p.data.normal_(0, 0.05)
    plain = copy.deepcopy(unet)
    plain.upsamplers = nn.ModuleList(nn.Sequential(*u.children()) for u in unet.upsamplers)
    assert all(isinstance(u, NearestUpsampleConv) for u in unet.upsamplers)
    assert list(unet.state_dict()) == list(plain.state_dict())
    x, cond = torch.randn(1, 4, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    t = torch.tensor([500])
    with torch.no_grad():
        a, b = plain(x, t, cond), unet(x, t, cond)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
