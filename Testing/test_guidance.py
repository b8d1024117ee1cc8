"""Classifier-free guidance: sampling, condition dropout in training, mask injection, model.json default."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_masks, perturb_zero_weights, tiny_config

from land.conditioning.encode import LUNG_VALUE, SCALE, encode_conditioning, nodule_region, pool_to_latent
from land.interface.errors import InputError, ModelError
from land.models import LANDUNet
from land.pipeline import LANDPipeline
from land.sampling.guidance import check_guidance, drop_condition, guided_denoiser


def _unet(**changes) -> LANDUNet:
    torch.manual_seed(0)
    net = LANDUNet(replace(tiny_config().unet, **changes)).eval()
    perturb_zero_weights(net)
    return net


def _cond() -> torch.Tensor:
    masks = make_masks(shape_zyx=(64, 64, 64), spacing=(4.0, 4.0, 4.0), origin=(0, 0, 0),
                       direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))  # fmt: skip
    return pool_to_latent(encode_conditioning(masks, "nodule+lung+texture"), 4)


def test_drop_nodules_keeps_the_lungs_and_fills_nodules_with_lung():
    cond = _cond()
    nod = nodule_region(cond)
    assert nod.any() and (cond == LUNG_VALUE / SCALE).any()
    dropped = drop_condition(cond, "nodules", "nodule+lung+texture")
    assert torch.equal(dropped[~nod], cond[~nod])  # lungs and background untouched
    assert torch.all(dropped[nod] == LUNG_VALUE / SCALE)
    assert not nodule_region(dropped).any()
    assert torch.all(drop_condition(cond, "nodules", "nodule")[nod] == 0)  # no lungs in that mode
    assert torch.count_nonzero(drop_condition(cond, "full", "nodule+lung+texture")) == 0


def test_guidance_one_is_plain_conditional_sampling_bit_for_bit():
    from land.sampling.diffusion import sample

    net, cond = _unet(), _cond()
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    plain = net(x, t, cond)
    for mode in ("none", "full", "nodules"):
        assert torch.equal(guided_denoiser(net, cond, 1.0, mode, "nodule+lung+texture")(x, t), plain)
    a = sample(lambda x, t: net(x, t, cond), x.shape, steps=3, generator=torch.Generator().manual_seed(2))
    b = sample(guided_denoiser(net, cond, 1.0, "nodules", "nodule+lung+texture"), x.shape, steps=3,
               generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["full", "nodules"])
def test_guided_step_is_the_cfg_formula_in_one_batched_call(mode):
    net, cond = _unet(), _cond()
    calls = []
    net.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([300])
    null = drop_condition(cond, mode, "nodule+lung+texture")
    expected = net(x, t, null) + 4.0 * (net(x, t, cond) - net(x, t, null))
    calls.clear()
    got = guided_denoiser(net, cond, 4.0, mode, "nodule+lung+texture")(x, t)
    assert calls == [2]  # conditional and dropped condition in one batch
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, net(x, t, cond), atol=1e-4)


def test_guidance_is_skipped_when_dropping_changes_nothing():
    net = _unet()
    cond = torch.where(nodule_region(_cond()), torch.full_like(_cond(), LUNG_VALUE / SCALE), _cond())
    calls = []
    net.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    guided_denoiser(net, cond, 5.0, "nodules", "nodule+lung+texture")(torch.zeros(1, 4, 16, 16, 16),
                                                                        torch.tensor([10]))  # fmt: skip
    assert calls == [1]


@pytest.mark.parametrize(
    "scale, mode, message",
    [(-1.0, "full", "out of range"), (21.0, "full", "out of range"), (float("nan"), "full", "not a number"),
     ("3", "full", "not a number"), (True, "full", "not a number"), (2.0, "lungs", "unknown guidance mode")],
)  # fmt: skip
def test_check_guidance_rejects_bad_values(scale, mode, message):
    with pytest.raises(InputError, match=message):
        check_guidance(scale, mode)


def test_pipeline_guidance_default_from_model_json(tiny_model_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    masks = make_masks()
    pipe = LANDPipeline.from_pretrained(model)
    assert pipe.config.guidance == {"scale": 1.0, "mode": "none"}
    plain = pipe.generate(masks, steps=2, seed=5, device="cpu")
    one = pipe.generate(masks, steps=2, seed=5, device="cpu", guidance=1.0, guidance_mode="full")
    assert np.array_equal(plain.array, one.array) and plain.metadata["guidance"] == "none"
    guided = pipe.generate(masks, steps=2, seed=5, device="cpu", guidance=4.0, guidance_mode="full")
    assert not np.array_equal(plain.array, guided.array) and guided.metadata["guidance"] == "4 (full)"

    meta = json.loads((model / "model.json").read_text(encoding="utf-8"))
    meta["guidance"] = {"scale": 4.0, "mode": "full"}
    (model / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    recommended = LANDPipeline.from_pretrained(model)
    assert recommended.config.guidance == {"scale": 4.0, "mode": "full"}
    by_default = recommended.generate(masks, steps=2, seed=5, device="cpu")
    assert np.array_equal(by_default.array, guided.array)
    off = recommended.generate(masks, steps=2, seed=5, device="cpu", guidance_mode="none")
    assert np.array_equal(off.array, plain.array)
    with pytest.raises(InputError, match="out of range"):
        recommended.generate(masks, steps=2, device="cpu", guidance=-2.0)

    meta["guidance"] = {"scale": 4.0, "mode": "everything"}
    (model / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelError, match="guidance"):
        LANDPipeline.from_pretrained(model)


def test_every_level_injection_starts_as_the_plain_unet_and_learns_from_the_mask():
    cond = _cond()
    base = _unet()
    for features in ("scalar", "occupancy+texture"):
        torch.manual_seed(0)
        inj = LANDUNet(replace(tiny_config().unet, cond_injection="every_level", cond_features=features))
        missing = inj.load_state_dict(base.state_dict(), strict=False).missing_keys
        assert missing and all(k.startswith("cond_inject.") for k in missing)
        x, t = torch.randn(1, 4, 16, 16, 16), torch.tensor([100])
        assert torch.equal(inj.eval()(x, t, cond), base(x, t, cond))  # zero-initialised projections
        for p in inj.cond_inject.parameters():
            torch.nn.init.normal_(p, std=0.05)
        other = torch.where(nodule_region(cond), torch.full_like(cond, 0.2), cond)  # texture 5 -> 1
        assert not torch.allclose(inj(x, t, cond), inj(x, t, other))


def test_training_nodule_dropout_equals_training_on_the_dropped_mask():
    from land.sampling.diffusion import NoiseSchedule
    from land.train.ldm_trainer import LDMParts, ldm_train_step

    def parts(nodule_dropout: float) -> LDMParts:
        net = _unet().train()
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        from land.train.ema import EMA

        return LDMParts(unet=net, unet_run=net, ema=EMA(net, 0.9), opt=opt,
                        sched=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                        scaler=torch.amp.GradScaler("cpu", enabled=False),
                        autocast=lambda: torch.autocast("cpu", enabled=False),
                        amp_text="off", schedule=NoiseSchedule(), min_snr_gamma=5.0, cond_dropout=0.0,
                        grad_clip=0.0, nodule_dropout=nodule_dropout)  # fmt: skip

    cond = _cond().expand(2, -1, -1, -1, -1).clone()
    z0 = torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    with_dropout = ldm_train_step(parts(1.0), z0, cond, torch.Generator().manual_seed(9))
    by_hand = ldm_train_step(
        parts(0.0),
        z0,
        drop_condition(cond, "nodules", "nodule+lung+texture"),
        torch.Generator().manual_seed(9),
    )
    plain = ldm_train_step(parts(0.0), z0, cond, torch.Generator().manual_seed(9))
    assert with_dropout["loss"] == by_hand["loss"]
    assert with_dropout["loss"] != plain["loss"]


def test_nodule_fraction_channel_is_each_latent_voxels_nodule_share():
    """pool_to_latent(nodule_fraction=True): channel 0 is the paper's max-pooled scalar, channel 1 the share
    of each 4^3 block covered by nodule; dropping nodules clears the share; nodule_region reads channel 0."""
    full = np.zeros((16, 16, 16), np.float32)
    full[:8, :8, :8] = LUNG_VALUE / SCALE
    full[0:2, 0:4, 0:4] = 1.0  # half of latent voxel (0, 0, 0) is a texture-5 nodule
    full[4, 4, 4] = 0.6  # one voxel of 64 in latent voxel (1, 1, 1)
    plain = pool_to_latent(full, 4)
    both = pool_to_latent(full, 4, nodule_fraction=True)
    assert both.shape == (1, 2, 4, 4, 4) and torch.equal(both[:, :1], plain)
    share = both[0, 1]
    assert share[0, 0, 0] == 0.5 and share[1, 1, 1] == 1 / 64 and share.sum() == 0.5 + 1 / 64
    assert torch.equal(nodule_region(both), nodule_region(plain))
    dropped = drop_condition(both, "nodules", "nodule+lung+texture")
    assert torch.equal(dropped[:, :1], drop_condition(plain, "nodules", "nodule+lung+texture"))
    assert torch.count_nonzero(dropped[:, 1]) == 0


def test_fraction_features_unet_reads_the_nodule_share():
    from land.models import UNetConfig

    cfg = replace(tiny_config().unet, cond_injection="every_level",
                  cond_features="occupancy+texture+fraction", cond_channels=2)  # fmt: skip
    torch.manual_seed(0)
    net = LANDUNet(cfg).eval()
    perturb_zero_weights(net)
    for p in net.cond_inject.parameters():
        torch.nn.init.normal_(p, std=0.05)
    cond = _cond()
    assert cond.shape[1] == 1
    share = torch.where(nodule_region(cond), torch.full_like(cond, 0.5), torch.zeros_like(cond))
    x, t = torch.randn(1, 4, 16, 16, 16), torch.tensor([100])
    with torch.no_grad():
        a = net(x, t, torch.cat([cond, share], dim=1))
        b = net(x, t, torch.cat([cond, share * 2], dim=1))
    assert not torch.allclose(a, b)  # same max-pooled mask, a different nodule share
    bad = {**cfg.__dict__, "cond_channels": 1}
    bad.pop("extra")
    with pytest.raises(ValueError, match="cond_channels 1 does not match"):
        UNetConfig.from_dict(bad)
