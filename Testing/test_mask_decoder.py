"""The mask-aware VAE decoder (land.models.mask_decoder): exact at initialisation, streamed = full with the
mask, today's model directories unchanged, config / model.json keys, and paired decoder-only training."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import AutoencoderKL

from land.data.folder import read_image_without_nodules, read_manifest, write_case, write_manifest
from land.decoding.streamed import decode_stream, plan_stream
from land.decoding.tiled import choose_method, decode_full, decode_tiled
from land.imaging.volume import Volume
from land.interface.errors import InputError, ModelError
from land.models import VAEConfig, build_vae
from land.models.mask_decoder import MaskAutoencoderKL, decoder_condition, pool_condition
from land.models.model_dir import ModelConfig, read_model_json
from land.pipeline import LANDPipeline
from land.train.config import load_config, parse_config, with_overrides
from land.train.decoder_data import paired_step

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "LANDSynthesis" / "land" / "resources" / "models" / "land-demo-phantom"
TINY = dict(channels=(8, 16, 16), num_res_blocks=(1, 1, 1), latent_channels=4, norm_num_groups=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def _vaes(mode: str) -> tuple[AutoencoderKL, MaskAutoencoderKL]:
    torch.manual_seed(0)
    plain = build_vae(VAEConfig(**TINY)).eval()
    masked = build_vae(VAEConfig(**TINY, mask_decoder=mode)).eval()
    result = masked.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys and all(k.startswith("decoder.mask_") for k in result.missing_keys)
    return plain, masked


def _condition(shape: tuple[int, int, int]) -> torch.Tensor:
    """A scalar conditioning mask: a lung box (0.1) holding a texture-3 and a texture-5 nodule."""
    d, h, w = shape
    c = torch.zeros(1, 1, d, h, w)
    c[..., 2 : d - 2, 2 : h - 2, 2 : w - 3] = 0.1
    c[..., 4:11, 5:10, 3:9] = 0.6
    c[..., d - 9 : d - 6, h - 8 : h - 6, w - 7 : w - 5] = 1.0
    return c


@pytest.mark.parametrize("mode", ["spade", "additive"])
def test_zero_initialised_mask_decoder_equals_the_plain_decoder_exactly(mode):
    plain, masked = _vaes(mode)
    assert [k for k in masked.state_dict() if not k.startswith("decoder.mask_")] == list(plain.state_dict())
    z = torch.randn(1, 4, 6, 5, 4, generator=torch.Generator().manual_seed(1))
    cond = _condition((24, 20, 16))
    with torch.no_grad():
        ref = plain.decode(z)
        assert torch.equal(masked.decode(z, cond), ref)
        assert torch.equal(masked.decode(z, decoder_condition(cond)), ref)  # 3 channels given directly
        assert torch.equal(masked.decode(z), ref)  # no mask
        x = torch.rand(1, 1, 24, 20, 16)
        assert torch.equal(masked.encode(x)[0], plain.encode(x)[0])  # the latent space is the plain one's
    # the heads get gradients at once (zero-initialised last layer only)
    masked.train()
    masked.decode(z, cond).abs().mean().backward()
    heads = [p.grad for n, p in masked.named_parameters() if n.startswith("decoder.mask_heads")]
    assert heads and all(g is not None for g in heads) and any(float(g.abs().sum()) > 0 for g in heads)


def test_decoder_condition_channels_and_pooling():
    cond = _condition((24, 20, 16))
    f = decoder_condition(cond)
    lung, nodule, texture = f[0, 0], f[0, 1], f[0, 2]
    assert (
        float(nodule[5, 6, 4]) == 1
        and float(lung[5, 6, 4]) == 0
        and float(texture[5, 6, 4]) == pytest.approx(0.6)
    )
    assert (
        float(lung[3, 3, 3]) == 1
        and float(texture[3, 3, 3]) == 0
        and float(f[0, :, 0, 0, 0].abs().sum()) == 0
    )
    pooled = pool_condition(f, 4)
    assert pooled.shape == (1, 3, 6, 5, 4)
    assert torch.allclose(pooled[:, :2], torch.nn.functional.avg_pool3d(f[:, :2], 4))  # occupancy: its share
    assert float(pooled[0, 2].max()) == pytest.approx(1.0)  # texture: its value, not diluted


def _perturbed(mode: str) -> MaskAutoencoderKL:
    _, masked = _vaes(mode)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in masked.decoder.mask_heads.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return masked


@pytest.mark.parametrize("mode", ["spade", "additive"])
def test_streamed_decoding_with_the_mask_equals_full_decoding(mode, tmp_path):
    vae = _perturbed(mode)
    z = torch.randn(2, 4, 6, 5, 4, generator=torch.Generator().manual_seed(2))
    cond = torch.cat([_condition((24, 20, 16)), torch.flip(_condition((24, 20, 16)), dims=(2,))])
    ref = decode_full(vae, z, cond)
    assert float((ref - decode_full(vae, z)).abs().max()) > 1e-3  # the mask matters once trained
    worst = 0.0
    for rows in (1, 2, 5, None):
        worst = max(worst, float((decode_stream(vae, z, slab_rows=rows, cond=cond) - ref).abs().max()))
    spilled = plan_stream(vae, z.shape, max_memory=512 * 2**20 + 300_000)
    assert any(s.on_disk for s in spilled.segments)  # layer outputs in spill files, mask read per slab
    out = decode_stream(vae, z, max_memory=spilled.max_memory, cond=cond, spill_dir=tmp_path)
    worst = max(worst, float((out - ref).abs().max()))
    assert choose_method(vae, z.shape, None, torch.device("cpu")) == "stream"
    worst = max(worst, float((decode_tiled(vae, z, cond=cond) - ref).abs().max()))
    assert worst <= 1e-5, worst
    with pytest.raises(NotImplementedError, match="stream"):
        decode_tiled(vae, z, cond=cond, method="passes")
    with pytest.raises(ValueError, match="does not fit"):
        decode_stream(vae, z, cond=cond[:, :, :-1])


def test_plain_decoders_take_no_mask():
    plain, _ = _vaes("spade")
    z = torch.zeros(1, 4, 6, 5, 4)
    for decode in (decode_stream, decode_full):
        with pytest.raises(ValueError, match="takes no mask"):
            decode(plain, z, cond=_condition((24, 20, 16)))


def test_todays_model_directories_load_as_plain_and_decode_bit_identically():
    meta = read_model_json(BUNDLED)
    assert "mask_decoder" not in meta["vae"]
    cfg = ModelConfig.from_json(meta)
    assert cfg.vae.mask_decoder == "none" and cfg.to_json()["vae"] == meta["vae"]  # model.json unchanged
    pipe = LANDPipeline.from_pretrained(BUNDLED)
    assert type(pipe.vae) is AutoencoderKL and type(pipe.vae.decoder).__name__ == "Decoder"
    assert pipe.decoder_condition(np.zeros((4, 4, 4), np.float32)) is None
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = pipe.vae.encode(x)[0] * pipe.config.latent_scale
        expected = AutoencoderKL.decode(pipe.vae, z / pipe.config.latent_scale)  # MONAI's own decode
    assert torch.equal(pipe.decode(z, method="full"), expected)
    assert torch.equal(pipe.decode(z, method="tiled"), expected)


def test_config_and_model_json_round_trip_and_errors(tmp_path):
    assert load_config("paper").vae.architecture.mask_decoder == "none"
    tiny = load_config("tiny")
    cfg = with_overrides(
        tiny, "vae", mask_decoder="additive", paired_fraction=0.5, **{"loss_weights.ring_l1": 2.0}
    )
    assert cfg.vae.architecture.mask_decoder == "additive" and cfg.vae.paired_fraction == 0.5
    assert cfg.vae.loss_weights["ring_l1"] == 2.0
    mc = cfg.model_config()
    d = json.loads(json.dumps(mc.to_json()))
    assert d["vae"]["mask_decoder"] == "additive"
    assert ModelConfig.from_json(d).vae.mask_decoder == "additive"
    arch = copy.deepcopy(tiny.raw)
    arch["vae"]["architecture"] = {**arch["vae"]["architecture"], "mask_decoder": "spade"}
    assert parse_config(arch).vae.architecture.mask_decoder == "spade"
    with pytest.raises(InputError, match=r"vae\.mask_decoder must be one of none, spade, additive"):
        with_overrides(tiny, "vae", mask_decoder="spades")
    with pytest.raises(InputError, match=r"vae\.paired_fraction"):
        with_overrides(tiny, "vae", paired_fraction=1.5)
    d["vae"]["mask_decoder"] = "film"
    with pytest.raises(ModelError, match=r"vae\.mask_decoder 'film' is not one of none, spade, additive"):
        ModelConfig.from_json(d)


def test_paired_step_is_a_deterministic_draw():
    draws = [paired_step(0, s, 0, 0.5, True) for s in range(200)]
    assert draws == [paired_step(0, s, 0, 0.5, True) for s in range(200)] and 60 < sum(draws) < 140
    assert not any(paired_step(0, s, 0, 1.0, False) for s in range(20))
    assert all(paired_step(0, s, 0, 1.0, True) for s in range(20))


def _paired_dataset(root: Path) -> Path:
    from land.world.phantom import make_phantom

    ph = make_phantom(0, size=32, spacing=8.0, n_nodules=2, diameter_range_mm=(24.0, 40.0))
    nod = ph.nodules.array != 0
    assert nod.any()
    lung_value = float(np.median(ph.image.array[(ph.lung.array != 0) & ~nod]))
    without = ph.image.array.astype(np.float32).copy()
    without[nod] = lung_value
    meta = {"diameters_mm": {str(k): v for k, v in ph.diameters_mm.items()}}
    write_case(root / "case000", ph.image, ph.lung, ph.nodules, ph.textures, meta,
               image_without_nodules=Volume.like(ph.image, without))  # fmt: skip
    write_manifest(root, ["case", "split"], [{"case": "case000", "split": "train"}])
    return root


def test_paired_decoder_only_fine_tune_from_a_plain_model(tmp_path, capsys):
    from safetensors.torch import load_file

    from land.data.check import check_dataset
    from land.models import LANDUNet
    from land.train.vae_trainer import train_vae

    data = _paired_dataset(tmp_path / "ds")
    assert check_dataset(data, deep=True).ok
    files = read_manifest(data)[0]
    pair = read_image_without_nodules(files)
    assert pair is not None and pair.array.dtype == np.int16
    tiny = load_config("tiny")
    torch.manual_seed(0)
    mc = tiny.model_config(name="plain-init")
    mc.trained = True
    init = LANDPipeline(mc, build_vae(mc.vae), LANDUNet(mc.unet)).save_pretrained(tmp_path / "init")
    cfg = with_overrides(
        tiny,
        "vae",
        steps=0,
        decoder_steps=8,
        init_from=str(init),
        mask_decoder="spade",
        paired_fraction=1.0,
        latent_scale_cases=1,
        val_every=0,
        checkpoint_every=100,
        **{"loss_weights.nodule_l1": 1.0, "loss_weights.ring_l1": 1.0},
    )
    out = train_vae(cfg, data, tmp_path / "out", device="cpu", progress="none")
    steps = [json.loads(line) for line in (out / "progress.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [e["losses"] for e in steps if e["event"] == "step"]
    assert len(losses) == 8 and all(
        e["paired"] == 1.0 and e["ring_l1"] > 0 and e["nodule_l1"] > 0 for e in losses
    )
    assert losses[-1]["total"] < losses[0]["total"]
    a, b = load_file(init / "vae.safetensors"), load_file(out / "vae.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith(("decoder.", "post_quant_conv.")))
    assert any(k.startswith("decoder.mask_heads") and float(b[k].abs().sum()) > 0 for k in b)
    u0, u1 = load_file(init / "unet.safetensors"), load_file(out / "unet.safetensors")
    assert all(torch.equal(u0[k], u1[k]) for k in u0)  # decoder-only: the U-Net stays
    meta = read_model_json(out)
    assert meta["vae"]["mask_decoder"] == "spade" and meta["trained"] is True
    assert meta["latent_scale"] == read_model_json(init)["latent_scale"]
    from land.cli import main

    main(["info", "--model", str(out)])
    assert "mask decoder spade (the mask enters every decoder level)" in capsys.readouterr().out
    pipe = LANDPipeline.from_pretrained(out)
    from land.data.folder import load_case

    ct = pipe.generate(load_case(files).masks, steps=2, seed=0, device="cpu")
    full = pipe.generate(load_case(files).masks, steps=2, seed=0, device="cpu", decode="full")
    assert ct.array.shape == (32, 32, 32) and int(np.abs(ct.array.astype(int) - full.array).max()) <= 1


def test_paired_decoder_steps_resume_exactly(tmp_path):
    from safetensors.torch import load_file

    from land.models import LANDUNet
    from land.train.vae_trainer import train_vae

    data = _paired_dataset(tmp_path / "ds")
    tiny = load_config("tiny")
    mc = tiny.model_config(name="plain-init")
    torch.manual_seed(0)
    init = LANDPipeline(mc, build_vae(mc.vae), LANDUNet(mc.unet)).save_pretrained(tmp_path / "init")
    cfg = with_overrides(
        tiny, "vae", steps=0, decoder_steps=4, init_from=str(init), mask_decoder="additive",
        paired_fraction=0.5, latent_scale_cases=1, val_every=0, checkpoint_every=1,
        **{"loss_weights.ring_l1": 1.0},
    )  # fmt: skip
    straight = train_vae(cfg, data, tmp_path / "a", device="cpu", progress="none")
    train_vae(cfg, data, tmp_path / "b", max_steps=2, device="cpu", progress="none")
    resumed = train_vae(cfg, data, tmp_path / "b", resume=True, device="cpu", progress="none")
    a, b = load_file(straight / "vae.safetensors"), load_file(resumed / "vae.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (straight / "progress.jsonl").read_text(encoding="utf-8").splitlines()]
    paired = [e["losses"]["paired"] for e in lines if e["event"] == "step"]
    assert paired == [float(paired_step(tiny.seed, s, 0, 0.5, True)) for s in range(4)]


def test_write_case_refuses_a_pair_on_another_grid(tmp_path):
    from land.world.phantom import make_phantom

    ph = make_phantom(1, size=16, spacing=8.0, n_nodules=1)
    other = Volume(np.zeros((8, 16, 16), np.int16), ph.image.spacing, ph.image.origin)
    with pytest.raises(InputError, match="image_without_nodules"):
        write_case(tmp_path / "c", ph.image, ph.lung, ph.nodules, ph.textures, image_without_nodules=other)
