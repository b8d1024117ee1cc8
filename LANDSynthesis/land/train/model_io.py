"""Reading the VAE of a model directory and the provenance the trainers write into ``model.json``."""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..interface import __version__
from ..interface.errors import InputError, ModelError
from ..models import build_vae
from ..models.model_dir import WEIGHT_FILES, ModelConfig, check_finite_weights, read_model_json, sha256_file


def load_state(
    model_dir: str | Path, key: str, meta: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """One network's weights (``key`` "vae" or "unet") of a model directory, sha256-verified; the other
    network's file is not read."""
    meta = read_model_json(model_dir) if meta is None else meta
    filename = WEIGHT_FILES[key]
    path = Path(model_dir) / filename
    expected = meta.get("weights", {}).get(filename)
    if not path.is_file():
        raise ModelError(f"weights file {path} is missing")
    if not expected or sha256_file(path) != expected:
        raise ModelError(f"sha256 of {path} does not match model.json: the file is corrupt or was replaced")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"cannot read {path}: {e}") from e
    return check_finite_weights(state, path)


def init_state(model_dir: str | Path, key: str, config_key: str) -> dict[str, torch.Tensor]:
    """:func:`load_state` for the config key ``vae.init_from`` / ``ldm.init_from`` (errors: InputError)."""
    try:
        return load_state(model_dir, key)
    except ModelError as e:
        raise InputError(f"{config_key}: {e}") from e


def load_vae(model_dir: str | Path) -> tuple[torch.nn.Module, ModelConfig, dict[str, Any]]:
    """The VAE of a LAND model directory (sha256-verified; U-Net weights not read), its config, model.json."""
    meta = read_model_json(model_dir)
    cfg = ModelConfig.from_json(meta)
    state = load_state(model_dir, "vae", meta)
    path = Path(model_dir) / WEIGHT_FILES["vae"]
    vae = build_vae(cfg.vae)
    try:
        vae.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"VAE weights in {path} do not fit its model.json: {str(e).splitlines()[0]}") from e
    return vae, cfg, meta


def vae_is_trained(meta: dict[str, Any]) -> bool:
    """True for a model directory written by ``land train-vae`` / ``train-ldm`` or any trained model."""
    prov = meta.get("provenance", {})
    return bool(meta.get("trained")) or bool(prov.get("vae_trained"))


def base_provenance(
    command: str,
    data: Path,
    manifest_sha256: str,
    cfg_raw: dict,
    cfg_source: str,
    device: torch.device,
    world_size: int,
) -> dict[str, Any]:
    return {
        "created_by": f"land {command}",
        "land_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": str(Path(data).resolve()),
        "data_manifest_sha256": manifest_sha256,
        "config_source": cfg_source,
        "config": cfg_raw,
        "device": device.type,
        "world_size": world_size,
    }
