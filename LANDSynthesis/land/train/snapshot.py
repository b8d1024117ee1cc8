"""A model directory from running training runs: ``land snapshot``.

A U-Net fine-tune and a decoder-only VAE fine-tune on the same latent space (the encoder frozen) can run
side by side for hours; ``snapshot`` writes a generating model from their latest checkpoints without stopping
them: the U-Net's EMA weights from the LDM run, the VAE (with its mask decoder, if any) from the VAE run, the
grid of the LDM run's config and the latent scale the U-Net was trained with. Checkpoints are read with
``weights_only`` and their sha256 (:func:`land.train.checkpoint.load_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

from ..interface.errors import InputError

__all__ = ["snapshot_model"]


def snapshot_model(ldm_run: Path, vae_source: Path, dest: Path, latents_from: Path | None = None) -> Path:
    """Write ``dest`` from the LDM run's checkpoint (EMA U-Net, grid, mode, guidance) and ``vae_source``: a
    VAE run folder (its checkpoint's VAE and ``vae.mask_decoder``) or a model directory (its VAE as is).
    ``latents_from``: the model whose VAE made the U-Net's training latents (default: the one its run
    recorded); its latent scale is the snapshot's."""
    import torch

    from ..models.model_dir import ModelConfig, load_weights, read_model_json, save_model_dir
    from .checkpoint import load_checkpoint
    from .config import parse_config
    from .progress import PROGRESS_FILE, last_progress_event

    ldm_run, vae_source, dest = Path(ldm_run), Path(vae_source), Path(dest)
    ldm = load_checkpoint(ldm_run / "checkpoint.pt", "ldm")
    cfg = parse_config(ldm["config"], str(ldm["config"].get("name", ldm_run)))
    base_dir = Path(latents_from or last_progress_event(ldm_run / PROGRESS_FILE, "start").get("vae") or "")
    if not (base_dir / "model.json").is_file():
        raise InputError(
            f"{ldm_run}: the model its U-Net's latents came from ({base_dir}) is not a model directory; fix: "
            "name it with --latents-from"
        )
    base_meta = read_model_json(base_dir)
    if not (vae_source / "checkpoint.pt").is_file():  # a model directory; a run folder: its checkpoint
        meta = read_model_json(vae_source)
        vae_cfg = ModelConfig.from_json(meta).vae
        vae_state = load_weights(vae_source, meta)["vae"]
        vae_note = f"VAE of {vae_source}"
        vae_step = None
    else:
        vck = load_checkpoint(vae_source / "checkpoint.pt", "vae")
        vcfg = parse_config(vck["config"], str(vae_source))
        vae_cfg = vcfg.model_config().vae
        vae_state = vck["models"]["vae"]
        vae_note = f"VAE of the run {vae_source} at step {vck['step']}"
        vae_step = int(vck["step"])
    mc = cfg.model_config(vae=vae_cfg, name=f"land-{cfg.name}")
    mc.latent_scale = float(base_meta["latent_scale"])  # what the U-Net was trained with
    mc.intensity = dict(base_meta.get("intensity", mc.intensity))
    shadow = ldm["ema"]["shadow"]
    unet_state = {k: v.to(torch.float32) for k, v in shadow.items()}
    mc.trained = True
    mc.provenance = {
        "created_by": "land snapshot",
        "unet": f"EMA weights of the run {ldm_run} at step {ldm['step']} (config {cfg.source})",
        "unet_step": int(ldm["step"]),
        "vae": vae_note,
        "vae_step": vae_step,
        "latent_scale_from": str(base_dir),
    }
    mc.card = f"Snapshot of fine-tunes: U-Net {ldm_run} step {ldm['step']}, {vae_note}. SYNTHETIC outputs."
    mc.validate()
    return save_model_dir(dest, mc, {"vae": vae_state, "unet": unet_state})
