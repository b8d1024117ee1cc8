"""Model directories: ``model.json`` (architecture, grid, intensity window, provenance, hashes) + safetensors.

Weights are never unpickled: they are read with safetensors after their sha256 matches ``model.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..imaging.atomic import atomic_path
from ..interface.contract import GUIDANCE_DEFAULTS, parse_guidance
from ..interface.errors import InputError, ModelError
from . import UNET_CONFIGS, VAE_CONFIGS, UNetConfig, VAEConfig

FORMAT = "land-model/1"
MODEL_JSON = "model.json"
WEIGHT_FILES = {"vae": "vae.safetensors", "unet": "unet.safetensors"}
DIFFUSION_DEFAULTS = {
    "num_train_timesteps": 1000,
    "schedule": "linear_beta",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "prediction_type": "v_prediction",
}
# MAISI's CT mapping: HU clipped to [-1000, 1000] and scaled linearly to [0, 1].
INTENSITY_DEFAULTS = {"hu_min": -1000.0, "hu_max": 1000.0}


@dataclass
class ModelConfig:
    """Everything in ``model.json`` except the hashes, which are computed when saving."""

    name: str
    vae: VAEConfig
    unet: UNetConfig
    grid_size: tuple[int, int, int] = (256, 256, 256)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    mode: str = "nodule+lung+texture"
    latent_scale: float = 1.0
    trained: bool = False
    intensity: dict[str, float] = field(default_factory=lambda: dict(INTENSITY_DEFAULTS))
    diffusion: dict[str, Any] = field(default_factory=lambda: dict(DIFFUSION_DEFAULTS))
    provenance: dict[str, Any] = field(default_factory=dict)
    card: str = ""
    # recommended classifier-free guidance (land.sampling.guidance), measured for this model; scale 1 = none
    guidance: dict[str, Any] = field(default_factory=lambda: dict(GUIDANCE_DEFAULTS))

    @property
    def latent_size(self) -> tuple[int, int, int]:
        c = self.vae.compression
        return tuple(s // c for s in self.grid_size)  # type: ignore[return-value]

    def validate(self) -> None:
        """Check the grid against the networks' down-sampling; raise ModelError naming the problem."""
        c = self.vae.compression
        f = c * 2 ** (len(self.unet.channels) - 1)
        if any(s % f for s in self.grid_size):
            raise ModelError(
                f"grid size {self.grid_size} must be divisible by {f} (VAE compression {c} x U-Net "
                f"down-sampling {f // c}); fix 'grid.size' in {MODEL_JSON}"
            )
        if self.vae.latent_channels != self.unet.latent_channels:
            raise ModelError(
                f"VAE latent channels ({self.vae.latent_channels}) differ from the U-Net's "
                f"({self.unet.latent_channels}); the two networks do not belong together"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "trained": self.trained,
            "vae": self.vae.to_dict(),
            "unet": self.unet.to_dict(),
            "grid": {"size": list(self.grid_size), "spacing": list(self.spacing)},
            "intensity": dict(self.intensity),
            "conditioning": {
                "mode": self.mode,
                "encoding": "background 0, lung 0.5, nodule texture 1..5; /5",
            },
            "diffusion": dict(self.diffusion),
            "guidance": dict(self.guidance),
            "latent_scale": self.latent_scale,
            "provenance": dict(self.provenance),
            "card": self.card,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelConfig:
        if d.get("format") != FORMAT:
            raise ModelError(f"{MODEL_JSON} has format {d.get('format')!r}; this LAND reads {FORMAT!r}")
        try:
            return cls(
                name=str(d["name"]),
                vae=VAEConfig.from_dict(d["vae"]),
                unet=UNetConfig.from_dict(d["unet"]),
                grid_size=tuple(int(s) for s in d["grid"]["size"]),  # type: ignore[arg-type]
                spacing=tuple(float(s) for s in d["grid"]["spacing"]),  # type: ignore[arg-type]
                mode=str(d["conditioning"]["mode"]),
                latent_scale=float(d.get("latent_scale", 1.0)),
                trained=bool(d.get("trained", False)),
                intensity={k: float(v) for k, v in d.get("intensity", INTENSITY_DEFAULTS).items()},
                diffusion=dict(d.get("diffusion", DIFFUSION_DEFAULTS)),
                provenance=dict(d.get("provenance", {})),
                card=str(d.get("card", "")),
                guidance=_guidance(d.get("guidance", GUIDANCE_DEFAULTS)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{MODEL_JSON} is incomplete or invalid ({type(e).__name__}: {e})") from e


def _guidance(section: Any) -> dict[str, Any]:
    """model.json's ``guidance`` section, validated (ValueError, reported as an invalid model.json)."""
    try:
        return parse_guidance(section)
    except InputError as e:
        raise ValueError(f"'guidance': {e}") from None


def named_config(config: str, name: str | None = None) -> ModelConfig:
    """A ``paper`` or ``small`` model configuration (untrained)."""
    if config not in UNET_CONFIGS:
        raise ModelError(f"unknown config {config!r}; choose one of {sorted(UNET_CONFIGS)}")
    grid = (256, 256, 256) if config == "paper" else (128, 128, 128)
    spacing = (1.0, 1.0, 1.0) if config == "paper" else (2.0, 2.0, 2.0)
    cfg = ModelConfig(
        name=name or f"land-{config}-untrained",
        vae=VAEConfig(**VAE_CONFIGS[config].to_dict()),
        unet=UNetConfig.from_dict(UNET_CONFIGS[config].to_dict()),
        grid_size=grid,
        spacing=spacing,
    )
    cfg.validate()
    return cfg


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _network_schema(config_class: type) -> dict[str, Any]:
    """The JSON types of a network config class's fields, from their defaults."""
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
    schema: dict[str, Any] = {}
    for name, f in config_class.__dataclass_fields__.items():
        default = f.default
        if isinstance(default, (tuple, list)) and default:
            schema[name] = [kinds[type(default[0])]]
        elif type(default) in kinds:
            schema[name] = kinds[type(default)]
    return schema


# model.json's JSON types: "integer", "number", "string", "boolean", "object", ["integer"] (a list of them),
# or a nested schema (an object with these keys). Required keys are marked "!"; others may be absent.
# The networks' sections follow their config classes' fields (see _network_schema).
MODEL_JSON_SCHEMA: dict[str, Any] = {
    "format!": "string",
    "name!": "string",
    "trained": "boolean",
    "vae!": _network_schema(VAEConfig),
    "unet!": _network_schema(UNetConfig),
    "grid!": {"size!": ["integer"], "spacing!": ["number"]},
    "intensity": {"hu_min!": "number", "hu_max!": "number"},
    "conditioning!": {"mode!": "string", "encoding": "string"},
    "diffusion": {"num_train_timesteps": "integer", "schedule": "string", "beta_start": "number",
                  "beta_end": "number", "prediction_type": "string"},
    "guidance": {"scale": "number", "mode": "string"},
    "latent_scale": "number",
    "provenance": "object",
    "card": "string",
    "weights": "object",
}  # fmt: skip
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a whole number",
               float: "a number", type(None): "null"}  # fmt: skip


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"string": str, "object": dict}[kind])


def _expected(kind: Any) -> str:
    if isinstance(kind, dict):
        return "an object"
    if isinstance(kind, list):
        return f"a list of {_expected(kind[0]).removeprefix('a ').removeprefix('an ')}s"
    return {"integer": "a whole number", "number": "a finite number", "string": "a string",
            "boolean": "true or false", "object": "an object"}[kind]  # fmt: skip


def check_model_json(meta: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``meta`` when its keys have the JSON types of :data:`MODEL_JSON_SCHEMA`, else ModelError (exit 3)
    naming the first wrong key, what it holds and what it should hold."""

    def fail(key: str, value: Any, kind: Any) -> ModelError:
        held = _JSON_NAMES.get(type(value), type(value).__name__)
        shown = "" if value is None or isinstance(value, (dict, list)) else f" ({json.dumps(value)[:40]})"
        return ModelError(
            f"{path}: '{key}' is {held}{shown}, expected {_expected(kind)}; fix: restore {MODEL_JSON} from "
            "where the model came from (it does not match the LAND model format)"
        )

    def walk(value: Any, kind: Any, key: str) -> None:
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                raise fail(key, value, kind)
            for name, sub in kind.items():
                name, required = name.rstrip("!"), name.endswith("!")
                if name in value:
                    walk(value[name], sub, f"{key}.{name}" if key else name)
                elif required:
                    raise ModelError(f"{path}: '{key + '.' if key else ''}{name}' is missing")
        elif isinstance(kind, list):
            if not isinstance(value, list):
                raise fail(key, value, kind)
            for i, item in enumerate(value):
                if not _type_ok(item, kind[0]):
                    raise fail(f"{key}[{i}]", item, kind[0])
        elif not _type_ok(value, kind):
            raise fail(key, value, kind)

    if not isinstance(meta, dict):
        raise fail("(the whole file)", meta, MODEL_JSON_SCHEMA)
    walk(meta, MODEL_JSON_SCHEMA, "")
    return meta


def read_model_json(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``model.json`` of a model directory, its types checked (ModelError when missing, not JSON or not
    of the model format's types: :func:`check_model_json`)."""
    path = Path(model_dir) / MODEL_JSON
    if Path(model_dir).is_file():
        raise ModelError(
            f"{model_dir} is a file, not a model directory; pass --model with the folder that holds "
            f"{MODEL_JSON} and the .safetensors files"
        )
    if not Path(model_dir).is_dir():
        raise ModelError(
            f"model directory {model_dir} does not exist; pass --model with a LAND model directory"
        )
    if not path.is_file():
        raise ModelError(f"{path} is missing; a LAND model directory holds {MODEL_JSON} and *.safetensors")
    try:
        return check_model_json(json.loads(path.read_text(encoding="utf-8")), path)
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from e
    except OSError as e:
        raise ModelError(f"cannot read {path} ({e.strerror or e}); check its permissions") from e


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding NaN or infinity."""
    return [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite_weights(state: dict[str, torch.Tensor], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``state``, or ModelError if any weight in it is NaN or infinite (a diverged or damaged model)."""
    bad = non_finite(state)
    if bad:
        raise ModelError(
            f"{path} holds non-finite weights (NaN or infinity in {len(bad)} tensor(s), e.g. {bad[0]}): its "
            "training diverged or the file was damaged before it was hashed; fix: use another model or "
            "retrain it"
        )
    return state


def load_weights(model_dir: str | os.PathLike, meta: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """Verify each weights file against the sha256 in ``model.json`` and load it with safetensors."""
    hashes = meta.get("weights", {})
    out = {}
    for key, filename in WEIGHT_FILES.items():
        path = Path(model_dir) / filename
        expected = hashes.get(filename)
        if not path.is_file():
            raise ModelError(f"weights file {path} is missing")
        if not expected:
            raise ModelError(
                f"{MODEL_JSON} has no sha256 for {filename}; refusing to load unverified weights"
            )
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"sha256 of {path} is {actual[:16]}..., {MODEL_JSON} expects {expected[:16]}...: the file is "
                "corrupt, truncated or was replaced; download or copy the model again"
            )
        try:
            out[key] = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ModelError(f"cannot read {path}: {e}") from e
        check_finite_weights(out[key], path)
    return out


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def save_model_dir(
    model_dir: str | os.PathLike, config: ModelConfig, state_dicts: dict[str, dict[str, torch.Tensor]]
) -> Path:
    """Write weights (safetensors) and ``model.json`` with their sha256; files are replaced atomically.
    Non-finite weights are refused (ModelError) before anything is written."""
    out = Path(model_dir)
    for key, filename in WEIGHT_FILES.items():
        check_finite_weights(state_dicts[key], out / filename)
    out.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for key, filename in WEIGHT_FILES.items():
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dicts[key].items()}
        _atomic_write(out / filename, lambda p, t=tensors: save_file(t, p, metadata={"format": "pt"}))
        hashes[filename] = sha256_file(out / filename)
    meta = config.to_json()
    meta["weights"] = hashes
    _atomic_write(
        out / MODEL_JSON, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    )
    return out


def write_model_json(model_dir: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Replace ``model.json`` (e.g. to update the card); the weights' sha256 entries must stay intact."""
    path = Path(model_dir) / MODEL_JSON
    if not meta.get("weights"):
        raise ModelError(f"refusing to write {path} without the weights' sha256 entries")
    _atomic_write(path, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"))
    return path
