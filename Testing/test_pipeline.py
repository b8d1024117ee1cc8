"""LANDPipeline: model directories with verified hashes, generation, geometry, determinism."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from conftest import make_masks, tiny_config

from land.interface.errors import Cancelled, InputError, ModelError
from land.models.model_dir import named_config
from land.pipeline import LANDPipeline


def test_save_and_load_round_trip_verifies_hashes(tiny_model_dir):
    meta = json.loads((tiny_model_dir / "model.json").read_text(encoding="utf-8"))
    assert meta["format"] == "land-model/1" and meta["trained"] is False
    assert set(meta["weights"]) == {"vae.safetensors", "unet.safetensors"}
    assert all(len(h) == 64 for h in meta["weights"].values())
    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    assert pipe.config.grid_size == (64, 64, 64) and pipe.config.spacing == (4.0, 4.0, 4.0)
    again = LANDPipeline.from_pretrained(tiny_model_dir)
    for a, b in zip(pipe.unet.state_dict().values(), again.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (
        pipe.model_id.startswith("tiny-test@")
        and pipe.model_id[-8:] == meta["weights"]["unet.safetensors"][:8]
    )


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "no-hash"])
def test_damaged_weights_are_refused(tiny_model_dir, tmp_path, damage):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "unet.safetensors"
    data = weights.read_bytes()
    if damage == "flip":
        weights.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    elif damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "missing":
        weights.unlink()
    else:
        meta = json.loads((model / "model.json").read_text(encoding="utf-8"))
        del meta["weights"]["unet.safetensors"]
        (model / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    expected = {"flip": "sha256", "truncate": "sha256", "missing": "missing", "no-hash": "no sha256"}[damage]
    with pytest.raises(ModelError, match=expected):
        LANDPipeline.from_pretrained(model)


def test_incompatible_config_is_a_model_error(tiny_model_dir, tmp_path):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "model.json").read_text(encoding="utf-8"))
    meta["unet"]["channels"] = [16, 16, 32, 32, 64]
    (model / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelError, match="do not fit the architecture"):
        LANDPipeline.from_pretrained(model)
    meta["grid"]["size"] = [60, 64, 64]
    (model / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelError, match="divisible by 64"):
        LANDPipeline.from_pretrained(model)


def test_named_configs_are_consistent():
    paper = named_config("paper")
    assert paper.grid_size == (256, 256, 256) and paper.latent_size == (64, 64, 64)
    assert named_config("small").latent_size == (32, 32, 32)
    with pytest.raises(ModelError, match="unknown config"):
        named_config("huge")


def test_generate_conditional_geometry_metadata_and_determinism(tiny_model_dir):
    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    masks = make_masks()
    events = []
    ct = pipe.generate(masks, steps=3, seed=11, device="cpu", progress=events.append)
    assert ct.array.dtype == np.int16 and ct.array.shape == (64, 64, 64)
    assert ct.array.min() >= -1000 and ct.array.max() <= 1000
    assert ct.spacing == (4.0, 4.0, 4.0)
    np.testing.assert_allclose(ct.direction, masks.lung.direction)
    assert "SYNTHETIC" in ct.metadata["description"]
    assert ct.metadata["seed"] == "11" and ct.metadata["sampler"] == "unipc" and ct.metadata["steps"] == "3"
    assert ct.metadata["textures"] == "1=5,2=1" and ct.metadata["mode"] == "nodule+lung+texture"
    denoise = [e for e in events if e["stage"] == "denoise"]
    assert [e["step"] for e in denoise] == [1, 2, 3] and all(e["total"] == 3 for e in denoise)
    assert any(e["stage"] == "decode" for e in events)

    same = pipe.generate(masks, steps=3, seed=11, device="cpu")
    other_seed = pipe.generate(masks, steps=3, seed=12, device="cpu")
    other_texture = pipe.generate(make_masks(textures={1: 1, 2: 1}), steps=3, seed=11, device="cpu")
    assert np.array_equal(ct.array, same.array)
    assert not np.array_equal(ct.array, other_seed.array)
    assert not np.array_equal(ct.array, other_texture.array)


def test_generate_match_input_returns_the_mask_geometry(tiny_model_dir):
    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    masks = make_masks()
    ct = pipe.generate(masks, steps=2, seed=0, device="cpu", match_input=True)
    assert ct.same_geometry(masks.lung.with_array(ct.array))
    assert ct.array.shape == masks.lung.array.shape and "SYNTHETIC" in ct.metadata["description"]


def test_unconditional_and_full_decode_agree_with_tiled(tiny_model_dir):
    from land.decoding.tiled import choose_method

    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    latent = (1, pipe.config.vae.latent_channels, *pipe.config.latent_size)
    assert choose_method(pipe.vae, latent, 64 << 20, torch.device("cpu")) == "stream"  # 64 MiB: streamed
    tiled = pipe.generate(None, steps=2, seed=3, device="cpu", max_memory=64 << 20)
    full = pipe.generate(None, steps=2, seed=3, device="cpu", decode="full")
    assert tiled.metadata["mode"] == "none"
    np.testing.assert_allclose(tiled.origin, [-126.0, -126.0, -126.0])
    # both in HU: 1% of the [0, 1] range is 20 HU; rounding to int16 adds at most 1
    assert np.abs(tiled.array.astype(np.int32) - full.array).max() <= 20


def test_generate_rejects_bad_options_and_cancels(tiny_model_dir):
    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    with pytest.raises(InputError, match="unknown sampler"):
        pipe.generate(None, sampler="euler")
    with pytest.raises(InputError, match="unknown mode"):
        pipe.generate(make_masks(), mode="lung")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            pipe.generate(None, device="cuda")
    cancel = threading.Event()

    def stop_after_first(event):
        if event["step"] == 1:
            cancel.set()

    with pytest.raises(Cancelled):
        pipe.generate(None, steps=5, progress=stop_after_first, cancel=cancel, device="cpu")
    cancel.clear()
    seen = []

    def stop_in_decode(event):
        seen.append(event["stage"])
        if event["stage"] == "decode":
            cancel.set()

    with pytest.raises(Cancelled):  # cancel also stops the tiled decoder between tiles
        pipe.generate(
            None, steps=2, progress=stop_in_decode, cancel=cancel, device="cpu", max_memory=64 << 20
        )
    assert seen.count("decode") == 1


def test_texture_mode_needs_textures(tiny_model_dir):
    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    masks = make_masks()
    masks.textures.pop(2)
    with pytest.raises(InputError, match="label 2"):
        pipe.generate(masks, steps=1)
    pipe.generate(masks, steps=1, mode="nodule+lung")  # textures are not needed without texture mode


def test_tiny_config_matches_fixture():
    cfg = tiny_config()
    cfg.validate()
    assert cfg.latent_size == (16, 16, 16)


def test_non_finite_weights_and_outputs_are_refused(tiny_model_dir, tmp_path):
    """A model whose weights hold NaN is refused on load (and never written); one whose output overflows
    to NaN/inf raises ModelError instead of writing an all-zero CT."""
    import shutil

    from safetensors.torch import load_file, save_file

    from land.models.model_dir import read_model_json, save_model_dir, sha256_file, write_model_json

    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    states = {"vae": pipe.vae.state_dict(), "unet": pipe.unet.state_dict()}
    bad = {k: v.clone() for k, v in states["unet"].items()}
    bad["conv_in.conv.weight"][0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ModelError, match="non-finite weights"):
        save_model_dir(tmp_path / "nan", pipe.config, {"vae": states["vae"], "unet": bad})
    assert not (tmp_path / "nan" / "unet.safetensors").exists()
    damaged = tmp_path / "damaged"  # NaN weights hashed into model.json by another tool: refused on load
    shutil.copytree(tiny_model_dir, damaged)
    save_file(bad, str(damaged / "unet.safetensors"))
    meta = read_model_json(damaged)
    meta["weights"]["unet.safetensors"] = sha256_file(damaged / "unet.safetensors")
    write_model_json(damaged, meta)
    with pytest.raises(ModelError, match="non-finite weights"):
        LANDPipeline.from_pretrained(damaged)

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    huge = {k: v.clone() for k, v in states["unet"].items()}
    for k in huge:
        if k.endswith("weight") and huge[k].is_floating_point():
            huge[k] *= 1e30
    save_model_dir(model, pipe.config, {"vae": states["vae"], "unet": huge})
    assert torch.isfinite(load_file(str(model / "unet.safetensors"))["conv_in.conv.weight"]).all()
    with pytest.raises(ModelError, match="non-finite latent"):
        LANDPipeline.from_pretrained(model).generate(steps=2, seed=0, device="cpu")


def test_generate_uses_the_schedule_in_model_json(tiny_model_dir):
    """The sampler follows the model's own diffusion schedule (model.json), as the trainer does."""
    from land.interface.errors import ModelError

    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    assert pipe.noise_schedule().num_train_timesteps == 1000
    base = pipe.generate(make_masks(), steps=3, seed=2, device="cpu").array
    pipe.config.diffusion = {**pipe.config.diffusion, "beta_end": 0.012}
    assert float(pipe.noise_schedule().betas[-1]) == pytest.approx(0.012)
    other = pipe.generate(make_masks(), steps=3, seed=2, device="cpu").array
    assert not np.array_equal(base, other)
    pipe.config.diffusion = {**pipe.config.diffusion, "prediction_type": "epsilon"}
    with pytest.raises(ModelError, match="v_prediction"):
        pipe.generate(make_masks(), steps=3, seed=2, device="cpu")


def test_training_preview_samples_and_decodes_as_generate_does(tiny_model_dir):
    """The LDM trainer's preview goes through LANDPipeline.denoise / decode / to_hu: the CT of generate
    (fp32, same seed and steps), and it follows the model's schedule (it used the default one before)."""
    from land.train.ldm_trainer import PREVIEW_WINDOW_HU, make_preview
    from land.train.preview import montage, to_uint8

    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    masks = make_masks()
    cond, _, _ = pipe.prepare_conditioning(masks, pipe.config.mode, False)
    ct = pipe.generate(masks, steps=3, seed=4, device="cpu", precision="fp32", guidance=1.0).array
    hu = pipe.to_hu(pipe.decode(pipe.denoise(cond, steps=3, seed=4, mode=pipe.config.mode)))
    assert np.array_equal(np.rint(hu).astype(np.int16), ct)
    preview = make_preview(pipe.unet, pipe.vae, cond, pipe.config, 3, 4, torch.device("cpu"))
    top = montage([to_uint8(hu, *PREVIEW_WINDOW_HU)])
    assert np.array_equal(preview[: top.shape[0]], top)  # the generated CT's row
    pipe.config.diffusion = {**pipe.config.diffusion, "beta_end": 0.012}
    other = make_preview(pipe.unet, pipe.vae, cond, pipe.config, 3, 4, torch.device("cpu"))
    assert not np.array_equal(other, preview)


def _wide_masks(width_mm: float, spacing: float = 2.0):
    """Two box lungs ``width_mm`` wide in total, in a volume larger than the tiny model's 256 mm grid."""
    from land.imaging.maskset import MaskSet
    from land.imaging.volume import Volume

    n = int(360 / spacing)
    lung = np.zeros((n, n, n), np.uint8)
    half, c = int(width_mm / spacing / 2), n // 2
    lung[c - 50 : c + 50, c - 40 : c + 40, c - half : c - 8] = 1
    lung[c - 50 : c + 50, c - 40 : c + 40, c + 8 : c + half] = 1
    return MaskSet(lung=Volume(lung, (spacing,) * 3, (-180.0,) * 3))


def test_fit_scale_keeps_a_chest_wider_than_the_grid(tiny_model_dir):
    from land.conditioning.model_grid import FieldOfViewWarning
    from land.imaging.grid import FIT_FILL

    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    masks = _wide_masks(300.0)
    with pytest.warns(FieldOfViewWarning, match="cut off.*--fit scale"):
        cropped, grid = pipe.model_grid_masks(masks, "crop")
    assert grid.spacing == (4.0, 4.0, 4.0)
    assert cropped.lung.array.sum() * 64 < masks.lung.array.sum() * 8  # part of the lungs is lost
    scaled, grid = pipe.model_grid_masks(masks, "scale")
    factor = 300.0 / (FIT_FILL * 256.0)
    assert grid.spacing[0] == pytest.approx(4.0 * factor, rel=0.02)
    lung = scaled.lung.array > 0
    assert not lung[:, :, 0].any() and not lung[:, :, -1].any()  # the whole width fits
    ct = pipe.generate(masks, steps=1, fit="scale", match_input=True)
    assert ct.array.shape == masks.lung.array.shape and ct.metadata["fit"] == "scale"
    small = _wide_masks(150.0)
    assert pipe.model_grid_masks(small, "scale")[1].spacing == (4.0, 4.0, 4.0)  # nothing to fit
    with pytest.raises(InputError, match="unknown --fit"):
        pipe.model_grid_masks(small, "stretch")
