"""Training (in process, tiny config): configs, both trainers' losses and outputs, perceptual loss, PNGs.

Resume-after-SIGKILL and DDP run the CLI in child processes: test_train_resume.py, test_train_ddp.py.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_dataset import write_dataset

from land.imaging.io import read_volume
from land.imaging.maskset import MaskSet
from land.interface.errors import InputError
from land.pipeline import LANDPipeline
from land.resources import demo_model_dir
from land.train.config import PerceptualConfig, load_config, parse_config, with_overrides
from land.train.ldm_trainer import nodule_weighted_mse, train_ldm
from land.train.perceptual import build_perceptual
from land.train.preview import montage, write_png
from land.train.vae_trainer import train_vae


def progress_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "progress.jsonl").read_text(encoding="utf-8").splitlines()]


def step_losses(out: Path, key: str) -> list[float]:
    return [e["losses"][key] for e in progress_lines(out) if e["event"] == "step"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("train") / "ds", n=3)


@pytest.fixture(scope="module")
def vae_dir(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae") / "vae"
    return train_vae(load_config("tiny"), data, out, max_steps=16, device="cpu", progress="none")


def test_bundled_configs_and_errors_name_the_key():
    for name in ("paper", "small", "tiny", "demo", "demo-finetune", "demo-wide"):
        cfg = load_config(name)
        cfg.model_config().validate()
    with pytest.raises(InputError, match="needs vae.init_from or --init-from"):  # a decoder-only fine-tune
        load_config("demo-wide-decoder")
    model = demo_model_dir()
    load_config("demo-wide-decoder", {"vae": {"init_from": str(model)}}).model_config().validate()
    paper = load_config("paper")
    assert paper.vae.loss_weights == {
        "l1": 1.0,
        "perceptual": 0.3,
        "kl": 1e-7,
        "adversarial": 0.1,
        "nodule_l1": 0,
        "ring_l1": 0,
    }
    assert (
        paper.vae.nodule_patch_fraction == 0 and paper.ldm.nodule_loss_weight == 0
    )  # the paper's plain losses
    assert paper.ldm.lr == 1e-5 and paper.ldm.min_snr_gamma == 5.0 and paper.vae.patch_size == (128, 128, 128)
    assert paper.ldm.mode == "nodule+lung+texture" and paper.model_config().latent_size == (64, 64, 64)
    raw = load_config("tiny").raw
    cases = [
        (
            {"vae": {**raw["vae"], "loss_weights": {**raw["vae"]["loss_weights"], "kl": "x"}}},
            "vae.loss_weights.kl",
        ),
        ({"ldm": {**raw["ldm"], "bogus": 1}}, "ldm.bogus"),
        ({"ldm": {**raw["ldm"], "mode": "lung"}}, "ldm.mode"),
        ({"ldm": {**raw["ldm"], "cond_dropout": 1.5}}, "ldm.cond_dropout"),
        ({"ldm": {**raw["ldm"], "cond_dropout": 0.6, "nodule_dropout": 0.6}}, "ldm.nodule_dropout"),
        ({"ldm": {**raw["ldm"], "cond_injection": "everywhere"}}, "ldm.cond_injection"),
        ({"ldm": {**raw["ldm"], "cond_features": "rgb"}}, "ldm.cond_features"),
        ({"ldm": {**raw["ldm"], "guidance": {"scale": 50, "mode": "full"}}}, "ldm.guidance"),
        ({"ldm": {**raw["ldm"], "guidance": {"scale": 2, "mode": "lungs"}}}, "ldm.guidance"),
        ({"ldm": {**raw["ldm"], "init_from": 3}}, "ldm.init_from"),
        ({"ldm": {**raw["ldm"], "nodule_loss_weight": -1}}, "ldm.nodule_loss_weight"),
        ({"vae": {**raw["vae"], "nodule_patch_fraction": 1.5}}, "vae.nodule_patch_fraction"),
        ({"vae": {**raw["vae"], "decoder_steps": -1}}, "vae.decoder_steps"),
        ({"vae": {**raw["vae"], "patch_size": [18, 16, 16]}}, "vae.patch_size"),
        ({"vae": {**raw["vae"], "architecture": "huge"}}, "vae.architecture"),
        ({"data": {**raw["data"], "grid_size": [40, 40, 40]}}, "data.grid_size"),
        ({"vae": {**raw["vae"], "perceptual": {"network": "vgg"}}}, "vae.perceptual.network"),
    ]
    for change, key in cases:
        with pytest.raises(InputError, match=key.replace(".", r"\.")):
            parse_config({**raw, **change})
    names = "demo, demo-finetune, demo-wide, demo-wide-decoder, paper, small, tiny"
    with pytest.raises(InputError, match=f"bundled configs: {names}"):
        load_config("nope")


def test_vae_training_lowers_loss_and_writes_vae_model_dir(vae_dir, data):
    lines = progress_lines(vae_dir)
    header = lines[0]
    assert header["event"] == "start" and header["perceptual"]["network"] == "none"
    assert header["perceptual"]["used"] is False
    notices = [e["message"] for e in lines if e["event"] == "notice"]
    assert any("perceptual loss: OFF" in m for m in notices)
    try:
        import torch.utils.tensorboard  # noqa: F401

        assert (vae_dir / "tensorboard").is_dir()
    except ImportError:
        assert any("tensorboard is not installed" in m for m in notices)
    steps = [e for e in lines if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 17))
    assert all({"step", "total", "losses", "lr", "eta_s", "time"} <= set(e) for e in steps)
    assert "discriminator" in steps[-1]["losses"] and "discriminator" not in steps[0]["losses"]  # warm-up 2
    l1 = step_losses(vae_dir, "l1")
    assert np.mean(l1[-4:]) < 0.8 * np.mean(l1[:4]), l1
    meta = json.loads((vae_dir / "model.json").read_text(encoding="utf-8"))
    prov = meta["provenance"]
    assert meta["trained"] is False and prov["vae_trained"] is True and prov["unet_trained"] is False
    assert prov["perceptual"]["network"] == "none" and prov["vae_steps"] == 16
    assert len(prov["data_manifest_sha256"]) == 64 and "l1" in prov["validation"]
    assert meta["latent_scale"] != 1.0 and meta["grid"]["size"] == [32, 32, 32]
    assert LANDPipeline.from_pretrained(vae_dir).config.latent_scale == meta["latent_scale"]


def test_ldm_training_lowers_loss_previews_and_generates(vae_dir, data, tmp_path):
    cfg = with_overrides(load_config("tiny"), "ldm", preview_every=20, cond_dropout=0.0, checkpoint_every=40)
    out = train_ldm(cfg, data, vae_dir, tmp_path / "ldm", max_steps=40, device="cpu", progress="none")
    mse = step_losses(out, "mse")
    assert len(mse) == 40 and np.mean(mse[-8:]) < 0.8 * np.mean(mse[:8]), mse
    previews = sorted((out / "previews").glob("*.png"))
    assert [p.name for p in previews] == ["step_0000020.png", "step_0000040.png"]
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(previews[0])))  # grey, or RGBA via matplotlib
    assert png.shape[:2] == (2 * 32 + 2, 3 * 32 + 4)
    assert len(list((out / "latent_cache").glob("*.safetensors"))) == 3
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    prov = meta["provenance"]
    assert meta["trained"] is True and prov["ldm_steps"] == 40 and prov["weights"] == "EMA"
    assert prov["wall_time_s"] > 0 and set(prov["final_losses"]) == {"loss", "mse"}
    assert len(prov["data_manifest_sha256"]) == 64 and prov["config"]["name"] == "tiny"
    pipe = LANDPipeline.from_pretrained(out)
    case = data / "case001"
    textures = {
        int(k): v
        for k, v in json.loads((case / "textures.json").read_text(encoding="utf-8")).items()
        if k.isdigit()
    }
    masks = MaskSet(read_volume(case / "lung.nii.gz"), read_volume(case / "nodules.nii.gz"), textures)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct = pipe.generate(masks, steps=2, seed=1, device="cpu")
    assert ct.array.shape == (32, 32, 32) and ct.array.dtype == np.int16 and ct.array.std() > 0


def test_trainers_refuse_to_overwrite_or_resume_nothing(vae_dir, data, tmp_path):
    cfg = load_config("tiny")
    with pytest.raises(InputError, match="pass --resume"):
        train_vae(cfg, data, vae_dir, max_steps=1, device="cpu", progress="none")
    with pytest.raises(InputError, match="does not exist; start without --resume"):
        train_ldm(
            cfg, data, vae_dir, tmp_path / "new", max_steps=1, resume=True, device="cpu", progress="none"
        )


def test_ldm_without_latent_cache_and_resume_notices(vae_dir, data, tmp_path):
    from land.train.loop import resume_notices

    cfg = with_overrides(load_config("tiny"), "ldm", cache_latents=False)
    out = train_ldm(cfg, data, vae_dir, tmp_path / "ldm", max_steps=2, device="cpu", progress="none")
    assert not (out / "latent_cache").exists() and len(step_losses(out, "loss")) == 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and resume_notices(ckpt, cfg.raw, 1) == []
    notes = resume_notices(ckpt, with_overrides(cfg, "ldm", lr=0.5).raw, 2)
    assert "ldm.lr" in notes[0] and "2 rank(s)" in notes[1]


def _fake_medicalnet(path: Path) -> None:
    from land.train.perceptual import build_medicalnet

    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in build_medicalnet(10).state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(2)  # MedicalNet's segmentation head: ignored
    torch.save({"state_dict": state}, path)


def test_medicalnet_perceptual_loss_from_local_weights(tmp_path):
    path = tmp_path / "resnet_10.pth"
    _fake_medicalnet(path)
    loss, info = build_perceptual(PerceptualConfig("medicalnet_resnet10", str(path), (1, 2), "l2"))
    assert info["used"] is True and info["ignored"] == 1 and len(info["weights_sha256"]) == 64
    x = torch.rand(1, 1, 16, 16, 16)
    y = (x + 0.3 * torch.rand_like(x)).requires_grad_(True)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    value = loss(y, x)
    value.backward()
    assert value.item() > 0 and y.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in loss.parameters())
    with pytest.raises(InputError, match="vae.perceptual.weights is required"):
        build_perceptual(PerceptualConfig("medicalnet_resnet50", None, (1, 2, 3, 4), "l2"))


def test_vae_training_with_perceptual_loss_records_it(data, tmp_path):
    path = tmp_path / "resnet_10.pth"
    _fake_medicalnet(path)
    perceptual = {"network": "medicalnet_resnet10", "weights": str(path), "layers": [1, 2], "distance": "l2"}
    cfg = with_overrides(load_config("tiny"), "vae", perceptual=perceptual, latent_scale_cases=1)
    out = train_vae(cfg, data, tmp_path / "vae", max_steps=2, device="cpu", progress="none")
    lines = progress_lines(out)
    assert (
        lines[0]["perceptual"]["used"] is True and lines[0]["perceptual"]["network"] == "medicalnet_resnet10"
    )
    assert all("perceptual" in e["losses"] for e in lines if e["event"] == "step")
    prov = json.loads((out / "model.json").read_text(encoding="utf-8"))["provenance"]
    assert prov["perceptual"]["weights_sha256"] == lines[0]["perceptual"]["weights_sha256"]


def test_nodule_weighted_mse():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, 4, generator=g)
    cond = torch.full((2, 1, 4, 4, 4), 0.1)  # lung
    cond[0, 0, 1, 2, 3] = 0.2  # a texture-1 nodule voxel in sample 0 only
    plain = (pred - target).pow(2).flatten(1).mean(1)
    assert torch.allclose(nodule_weighted_mse(pred, target, cond, 0.0), plain)
    weighted = nodule_weighted_mse(pred, target, cond, 9.0)
    error = (pred - target).pow(2)[0]
    n = error.numel()
    expected0 = (error.sum() + 9.0 * error[:, 1, 2, 3].sum()) / (n + 9.0 * 4)
    assert torch.allclose(weighted[0], expected0) and torch.allclose(weighted[1], plain[1])


def test_vae_training_with_nodule_emphasis(data, tmp_path):
    cfg = with_overrides(
        load_config("tiny"),
        "vae",
        nodule_patch_fraction=1.0,
        latent_scale_cases=1,
        **{"loss_weights.nodule_l1": 2.0},
    )
    out = train_vae(cfg, data, tmp_path / "vae", max_steps=3, device="cpu", progress="none")
    steps = [e for e in progress_lines(out) if e["event"] == "step"]
    assert steps and all(e["losses"]["nodule_l1"] > 0 for e in steps)  # every patch holds a nodule
    last, w = steps[-1]["losses"], cfg.vae.loss_weights
    terms = {
        "l1": "l1",
        "kl": "kl",
        "perceptual": "perceptual",
        "nodule_l1": "nodule_l1",
        "generator_adv": "adversarial",
    }
    parts = {k: w[weight] * last[k] for k, weight in terms.items() if k in last}
    assert last["total"] == pytest.approx(sum(parts.values()), rel=1e-4) and parts["nodule_l1"] > 0


def test_vae_decoder_steps_train_the_decoder_on_whole_volumes_only(data, tmp_path):
    """After the patch steps, ``decoder_steps`` whole-volume steps change the decoder, not the encoder."""
    from safetensors.torch import load_file

    def run(name: str, decoder_steps: int) -> Path:
        cfg = with_overrides(
            load_config("tiny"),
            "vae",
            steps=2,
            decoder_steps=decoder_steps,
            log_every=1,
            latent_scale_cases=1,
            **{"loss_weights.nodule_l1": 1.0},
        )
        return train_vae(cfg, data, tmp_path / name, device="cpu", progress="none")

    plain, tuned = run("plain", 0), run("tuned", 3)
    lines = progress_lines(tuned)
    assert [e["step"] for e in lines if e["event"] == "step"] == [1, 2, 3, 4, 5]
    assert any("decoder-only steps 3-5" in e["message"] for e in lines if e["event"] == "notice")
    assert all("nodule_l1" in e["losses"] for e in lines if e["event"] == "step")
    a, b = load_file(plain / "vae.safetensors"), load_file(tuned / "vae.safetensors")
    frozen = [k for k in a if k.startswith(("encoder.", "quant_conv_mu.", "quant_conv_log_sigma."))]
    tuned_keys = [k for k in a if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and tuned_keys and len(frozen) + len(tuned_keys) == len(a)
    assert all(torch.equal(a[k], b[k]) for k in frozen)  # the latents stay the same
    assert sum(not torch.equal(a[k], b[k]) for k in tuned_keys) >= len(tuned_keys) // 2
    meta_a, meta_b = (json.loads((d / "model.json").read_text(encoding="utf-8")) for d in (plain, tuned))
    assert meta_b["latent_scale"] == pytest.approx(meta_a["latent_scale"], rel=1e-6)
    assert meta_b["provenance"]["decoder_only_steps"] == 3 and meta_a["provenance"]["decoder_only_steps"] == 0


def test_png_writer_and_montage(tmp_path):
    vol = (np.arange(4 * 6 * 8).reshape(4, 6, 8) % 256).astype(np.uint8)
    image = montage([vol, vol])
    assert image.shape == (2 * 6 + 2, 8 + 8 + 6 + 4)
    write_png(tmp_path / "m.png", image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m.png"))), image)


def test_init_from_fine_tunes_from_another_model(vae_dir, data, tmp_path):
    """ldm.init_from: the U-Net starts at the source's weights (new cond_inject tensors at zero, so step 0
    computes what the source computes); vae.init_from with 0 patch steps: decoder-only steps from the source
    VAE leave its encoder bit-identical. A source of another architecture is refused, naming the key."""
    from safetensors.torch import load_file

    from land.models import LANDUNet, UNetConfig
    from land.train.ldm_trainer import build_ldm_parts, init_unet_from

    tiny = load_config("tiny")
    src = train_ldm(tiny, data, vae_dir, tmp_path / "src", max_steps=2, device="cpu", progress="none")
    cfg = with_overrides(tiny, "ldm", init_from=str(src), cond_injection="every_level",
                         cond_features="occupancy+texture")  # fmt: skip
    parts = build_ldm_parts(cfg.ldm, cfg.model_config().diffusion, torch.device("cpu"), False, 0)
    info = init_unet_from(parts, src)
    assert info["new_parameters"] == 2 * 2 * len(cfg.ldm.architecture.channels)  # weight + bias per level
    src_meta = json.loads((src / "model.json").read_text(encoding="utf-8"))
    source = LANDUNet(UNetConfig.from_dict(src_meta["unet"]))
    source.load_state_dict(load_file(src / "unet.safetensors"))
    x, t = torch.randn(1, 4, 8, 8, 8), torch.tensor([400])
    cond = torch.zeros(1, 1, 8, 8, 8)
    cond[..., 2:6, 2:6, 2:6] = 0.1
    cond[..., 3:5, 3:5, 3:5] = 1.0
    with torch.no_grad():
        assert torch.equal(parts.unet.eval()(x, t, cond), source.eval()(x, t, cond))
    assert torch.equal(parts.ema.shadow["conv_in.conv.weight"], source.state_dict()["conv_in.conv.weight"])
    out = train_ldm(cfg, data, vae_dir, tmp_path / "ft", max_steps=2, device="cpu", progress="none")
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert meta["provenance"]["init_from"] == str(src) and meta["unet"]["cond_injection"] == "every_level"
    assert any("initialised from" in e.get("message", "") for e in progress_lines(out))
    arch = {**tiny.raw["ldm"]["architecture"], "channels": [16, 32, 32]}
    wider = with_overrides(tiny, "ldm", init_from=str(src), architecture=arch)
    with pytest.raises(InputError, match="does not fit"):
        train_ldm(wider, data, vae_dir, tmp_path / "bad", max_steps=1, device="cpu", progress="none")

    vcfg = with_overrides(tiny, "vae", init_from=str(vae_dir), steps=0, decoder_steps=2, latent_scale_cases=1)
    tuned = train_vae(vcfg, data, tmp_path / "vae_ft", device="cpu", progress="none")
    a, b = load_file(vae_dir / "vae.safetensors"), load_file(tuned / "vae.safetensors")
    encoder = [k for k in a if k.startswith(("encoder.", "quant_conv_mu.", "quant_conv_log_sigma."))]
    assert encoder and all(torch.equal(a[k], b[k]) for k in encoder)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    with pytest.raises(
        InputError, match="vae.steps must be an integer >= 1 .0, decoder-only steps, needs vae.init_from"
    ):
        with_overrides(tiny, "vae", steps=0)

    # land snapshot: the U-Net run's EMA weights and the decoder run's VAE, from their checkpoints
    from land.pipeline import LANDPipeline
    from land.train.snapshot import snapshot_model

    snap = snapshot_model(out, tmp_path / "vae_ft", tmp_path / "snap")
    s_meta = json.loads((snap / "model.json").read_text(encoding="utf-8"))
    assert (
        s_meta["latent_scale"]
        == json.loads((vae_dir / "model.json").read_text(encoding="utf-8"))["latent_scale"]
    )
    for name, ref in (("unet", out), ("vae", tuned)):
        got, want = load_file(snap / f"{name}.safetensors"), load_file(ref / f"{name}.safetensors")
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), name
    assert s_meta["provenance"]["unet_step"] == 2 and s_meta["provenance"]["vae_step"] == 2
    assert LANDPipeline.from_pretrained(snap).generate(None, steps=1).array.dtype == np.int16
    with pytest.raises(InputError, match="--latents-from"):
        snapshot_model(out, tuned, tmp_path / "snap2", latents_from=tmp_path / "nowhere")


def test_ldm_with_nodule_fraction_trains_caches_two_channels_and_generates(vae_dir, data, tmp_path):
    """ldm.cond_features occupancy+texture+fraction: the U-Net takes a 2-channel latent condition (scalar +
    nodule share), the latent cache stores it and says so, model.json records it and generate builds it."""
    from safetensors.torch import load_file

    cfg = with_overrides(load_config("tiny"), "ldm", cond_injection="every_level",
                         cond_features="occupancy+texture+fraction", nodule_dropout=0.5)  # fmt: skip
    assert cfg.ldm.architecture.cond_channels == 2
    out = train_ldm(cfg, data, vae_dir, tmp_path / "ldm", max_steps=2, device="cpu", progress="none")
    index = json.loads((out / "latent_cache" / "index.json").read_text(encoding="utf-8"))
    assert index["nodule_fraction"] is True
    cond = load_file(next((out / "latent_cache").glob("*.safetensors")))["cond"]
    assert cond.shape[0] == 2 and 0 < cond[1].max() <= 1 and cond[1][cond[0] <= 0.1].max() == 0
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert meta["unet"]["cond_channels"] == 2
    pipe = LANDPipeline.from_pretrained(out)
    case = data / "case001"
    raw = json.loads((case / "textures.json").read_text(encoding="utf-8"))
    textures = {int(k): v for k, v in raw.items() if k.isdigit()}
    masks = MaskSet(read_volume(case / "lung.nii.gz"), read_volume(case / "nodules.nii.gz"), textures)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latent_cond = pipe.prepare_conditioning(masks, "nodule+lung+texture")[0]
    assert latent_cond.shape[:2] == (1, 2) and latent_cond[:, 1].max() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ct = pipe.generate(masks, steps=2, seed=1, device="cpu", guidance=2.0, guidance_mode="nodules")
    assert ct.array.shape == (32, 32, 32) and ct.array.std() > 0


def test_init_from_on_the_command_line_completes_a_decoder_only_config(tmp_path, tiny_model_dir):
    import json as _json
    import subprocess
    import sys

    path = tmp_path / "decoder-only.json"
    _json.dump({"name": "dec", "vae": {"steps": 0, "decoder_steps": 2}}, path.open("w", encoding="utf-8"))
    with pytest.raises(InputError, match="needs vae.init_from or --init-from"):
        load_config(path)
    assert load_config(path, {"vae": {"init_from": str(tiny_model_dir)}}).vae.steps == 0
    run = subprocess.run([sys.executable, "-m", "land", "train-vae", "--config", str(path), "--data",
                          str(tmp_path / "no-data"), "--out", str(tmp_path / "out"), "--init-from",
                          str(tiny_model_dir)], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2 and "vae.steps" not in run.stderr and "no-data" in run.stderr, run.stderr
