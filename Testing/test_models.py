"""The networks: VAE compression and channels, U-Net configs, additive skips, shapes."""

from __future__ import annotations

import pytest
import torch

from land.models import UNET_CONFIGS, VAE_CONFIGS, LANDUNet, UNetConfig, build_vae, count_parameters


def test_paper_vae_compresses_4x_to_4_channels():
    vae = build_vae(VAE_CONFIGS["paper"]).eval()
    with torch.inference_mode():
        z_mu, _ = vae.encode(torch.rand(1, 1, 32, 32, 32))
        assert z_mu.shape == (1, 4, 8, 8, 8)
        assert vae.decode(z_mu).shape == (1, 1, 32, 32, 32)
    convs = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Conv3d)]
    assert {c.out_channels for c in convs} == {32, 64, 128, 4}  # 4 = latent channels
    assert all(isinstance(b, torch.nn.Module) for b in vae.decoder.blocks)


def test_unet_configs_build_with_expected_sizes():
    paper = LANDUNet(UNET_CONFIGS["paper"])
    small = LANDUNet(UNET_CONFIGS["small"])
    assert tuple(paper.cfg.channels) == (128, 384, 512, 512, 512)
    assert 250e6 < count_parameters(paper) < 350e6
    assert count_parameters(small) < 30e6
    assert paper.downsampling_factor == 16 and len(paper.down_levels) == 5
    assert all(len(level.resnets) == 2 for level in paper.down_levels)


def test_decoder_adds_skips_instead_of_concatenating():
    torch.manual_seed(0)
    unet = LANDUNet(UNET_CONFIGS["small"]).eval()
    ch = list(unet.cfg.channels)
    # a concatenating decoder would see 2x channels at its first block of each level
    for level, c in zip(unet.up_levels, reversed(ch), strict=True):
        assert level.resnets[0].channels == c
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, index: int | None = None):
        def hook(_module, *args):
            seen[name] = (args[0][index] if index is not None else args[-1]).clone()

        return hook

    unet.down_levels[-1].resnets[-1].register_forward_hook(keep("skip"))
    unet.mid_res2.register_forward_hook(keep("h"))
    unet.up_levels[0].resnets[0].register_forward_pre_hook(keep("in", 0))
    with torch.inference_mode():
        unet(torch.randn(1, 4, 16, 16, 16), torch.tensor([500]), torch.rand(1, 1, 16, 16, 16))
    torch.testing.assert_close(seen["in"], seen["h"] + seen["skip"])


def test_unet_forward_shapes_and_conditioning_effect():
    torch.manual_seed(0)
    unet = LANDUNet(UNET_CONFIGS["small"]).eval()
    # zero-initialised output convs make the untrained output 0: perturb so the test can see the mask
    for p in unet.parameters():
        if torch.count_nonzero(p) == 0 and p.ndim > 1:
            torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(2, 4, 16, 16, 32)
    cond = torch.zeros(2, 1, 16, 16, 32)
    with torch.inference_mode():
        y0 = unet(x, torch.tensor(10), cond)
        cond[:, :, 4:8, 4:8, 4:8] = 1.0
        y1 = unet(x, torch.tensor(10), cond)
        y_none = unet(x, torch.tensor([10, 10]))
    assert y0.shape == (2, 4, 16, 16, 32)
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y0, y_none)


def test_unet_rejects_indivisible_grid_and_bad_config():
    unet = LANDUNet(UNET_CONFIGS["small"])
    with pytest.raises(ValueError, match="divisible by 16"):
        unet(torch.randn(1, 4, 12, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="multiple of norm_num_groups"):
        LANDUNet(UNetConfig(channels=(30, 60, 60, 120, 120)))
    with pytest.raises(ValueError, match="unknown U-Net config keys"):
        UNetConfig.from_dict({"channels": [32], "bogus": 1})
