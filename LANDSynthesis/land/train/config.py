"""Training configurations: JSON files with sections ``data``, ``vae`` and ``ldm`` (see land.resources).

``--config`` takes a bundled name (``paper``, ``small``, ``tiny``) or a path. Every value is validated and a
bad one raises :class:`InputError` naming its key (``vae.loss_weights.kl``). Keys starting with ``_`` are
comments. Missing keys take the defaults below (those of the ``paper`` config).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..imaging.maskset import MODES
from ..interface.contract import GUIDANCE_DEFAULTS, parse_guidance
from ..interface.errors import InputError
from ..models import UNET_CONFIGS, VAE_CONFIGS, UNetConfig, VAEConfig
from ..models.mask_decoder import MASK_DECODERS
from ..models.model_dir import ModelConfig
from ..models.unet import COND_FEATURES, COND_INJECTIONS, cond_channels_for
from ..resources import configs_dir
from .config_files import config_path

PERCEPTUAL_NETWORKS = (
    "none",
    "medicalnet_resnet10",
    "medicalnet_resnet18",
    "medicalnet_resnet34",
    "medicalnet_resnet50",
    "radimagenet_resnet50",
)


@dataclass(frozen=True)
class DataConfig:
    grid_size: tuple[int, int, int]  # x, y, z voxels
    spacing: tuple[float, float, float]  # x, y, z mm
    hu_min: float
    hu_max: float


@dataclass(frozen=True)
class PerceptualConfig:
    network: str
    weights: str | None  # MedicalNet .pth file, or a torch.hub cache folder for RadImageNet
    layers: tuple[int, ...]  # ResNet stages compared (1..4)
    distance: str  # "l2" (LPIPS-like) or "l1"

    def describe(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "weights": self.weights,
            "layers": list(self.layers),
            "distance": self.distance,
        }


@dataclass(frozen=True)
class VAETrainConfig:
    architecture: VAEConfig
    architecture_name: str | None
    patch_size: tuple[int, int, int]  # x, y, z
    batch_size: int
    lr: float
    discriminator_lr: float
    steps: int
    loss_weights: dict[str, float]  # l1, perceptual, kl, adversarial, nodule_l1, ring_l1
    adversarial_warmup: int
    discriminator_channels: int
    discriminator_layers: int
    perceptual: PerceptualConfig
    amp: bool
    val_every: int
    val_cases: int
    latent_scale_cases: int
    log_every: int
    checkpoint_every: int
    num_workers: int
    cache_volumes: int
    nodule_patch_fraction: float  # share of patches centred on a nodule voxel
    decoder_steps: int = 0  # after `steps`: decoder-only steps on whole volumes (encoder frozen)
    init_from: str | None = None  # model directory whose VAE weights start the training
    paired_fraction: float = 0.0  # share of decoder steps: image without nodules in, with nodules out


@dataclass(frozen=True)
class LDMTrainConfig:
    architecture: UNetConfig
    architecture_name: str | None
    lr: float
    weight_decay: float
    lr_warmup_steps: int
    steps: int
    batch_size: int
    ema_decay: float
    min_snr_gamma: float
    cond_dropout: float
    mode: str
    grad_clip: float
    preview_every: int
    preview_steps: int
    cache_latents: bool
    gradient_checkpointing: bool
    amp: bool
    log_every: int
    checkpoint_every: int
    nodule_loss_weight: float  # extra MSE weight on latent voxels under a nodule (0: plain mean)
    nodule_dropout: float = 0.0  # probability of dropping only the nodules (lungs kept), for guidance
    init_from: str | None = None  # model directory whose U-Net weights start the training (fine-tuning)
    guidance: dict[str, Any] = field(default_factory=lambda: dict(GUIDANCE_DEFAULTS))


@dataclass(frozen=True)
class TrainConfig:
    name: str
    seed: int
    data: DataConfig
    vae: VAETrainConfig
    ldm: LDMTrainConfig
    source: str  # bundled name or file path
    raw: dict[str, Any]  # the JSON as read (for checkpoints and provenance)

    def model_config(self, vae: VAEConfig | None = None, name: str | None = None) -> ModelConfig:
        """The ModelConfig of the trained model (VAE architecture from ``vae`` when given)."""
        cfg = ModelConfig(
            name=name or f"land-{self.name}",
            vae=copy.deepcopy(vae or self.vae.architecture),
            unet=copy.deepcopy(self.ldm.architecture),
            grid_size=self.data.grid_size,
            spacing=self.data.spacing,
            mode=self.ldm.mode,
            intensity={"hu_min": self.data.hu_min, "hu_max": self.data.hu_max},
            guidance=dict(self.ldm.guidance),
        )
        return cfg


# ------------------------------------------------------------------------------------------- validation
class _Section:
    """Reads keys of one config section, recording which were used, with errors naming the key."""

    def __init__(self, data: Any, path: str, defaults: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            raise InputError(f"config section '{path}' must be a JSON object, not {type(data).__name__}")
        self.data, self.path, self.defaults = data, path, defaults
        unknown = sorted(k for k in data if k not in defaults and not str(k).startswith("_"))
        if unknown:
            raise InputError(
                f"unknown config key(s) {', '.join(f'{path}.{k}' for k in unknown)}; known keys in "
                f"'{path}': {', '.join(sorted(defaults))}"
            )

    def key(self, name: str) -> str:
        return f"{self.path}.{name}"

    def get(self, name: str) -> Any:
        return self.data.get(name, self.defaults[name])

    def bad(self, name: str, expected: str) -> InputError:
        return InputError(f"config key {self.key(name)} must be {expected}, got {self.get(name)!r}")

    def int(self, name: str, minimum: int = 0) -> int:
        v = self.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.bad(name, f"an integer >= {minimum}")
        return v

    def float(
        self, name: str, minimum: float = 0.0, maximum: float = math.inf, open_min: bool = False
    ) -> float:
        v = self.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.bad(name, "a number")
        if v < minimum or v > maximum or (open_min and v == minimum):
            lo = f"> {minimum}" if open_min else f">= {minimum}"
            raise self.bad(name, f"a number {lo}" + (f" and <= {maximum}" if maximum < math.inf else ""))
        return float(v)

    def bool(self, name: str) -> bool:
        v = self.get(name)
        if not isinstance(v, bool):
            raise self.bad(name, "true or false")
        return v

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        v = self.get(name)
        if v not in choices:
            raise self.bad(name, f"one of {', '.join(choices)}")
        return v

    def triple(self, name: str, cast: Callable, what: str) -> tuple:
        v = self.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v, v, v]
        ok = isinstance(v, list) and len(v) == 3
        ok = ok and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v)
        if not ok or (cast is int and any(x != int(x) for x in v)):
            raise self.bad(name, f"three {what} (x, y, z) or one for all axes")
        return tuple(cast(x) for x in v)

    def sub(self, name: str) -> _Section:
        return _Section(self.get(name), self.key(name), self.defaults[name])


DATA_DEFAULTS: dict[str, Any] = {
    "grid_size": [256, 256, 256],
    "spacing": [1.0, 1.0, 1.0],
    "hu_min": -1000.0,
    "hu_max": 1000.0,
}
VAE_DEFAULTS: dict[str, Any] = {
    "architecture": "paper",
    "patch_size": [128, 128, 128],
    "batch_size": 1,
    "lr": 1e-4,
    "discriminator_lr": 1e-4,
    "steps": 100_000,
    "loss_weights": {
        "l1": 1.0,
        "perceptual": 0.3,
        "kl": 1e-7,
        "adversarial": 0.1,
        "nodule_l1": 0.0,
        "ring_l1": 0.0,
    },
    "adversarial_warmup": 5_000,
    "discriminator": {"channels": 32, "num_layers": 3},
    "perceptual": {
        "network": "medicalnet_resnet50",
        "weights": None,
        "layers": [1, 2, 3, 4],
        "distance": "l2",
    },
    "amp": True,
    "val_every": 1_000,
    "val_cases": 2,
    "latent_scale_cases": 8,
    "log_every": 10,
    "checkpoint_every": 500,
    "num_workers": 2,
    "cache_volumes": 8,
    "nodule_patch_fraction": 0.0,
    "decoder_steps": 0,
    "init_from": None,
    "mask_decoder": None,
    "paired_fraction": 0.0,
}
LDM_DEFAULTS: dict[str, Any] = {
    "architecture": "paper",
    "lr": 1e-5,
    "weight_decay": 1e-2,
    "lr_warmup_steps": 0,
    "steps": 200_000,
    "batch_size": 1,
    "ema_decay": 0.9999,
    "min_snr_gamma": 5.0,
    "cond_dropout": 0.0,
    "mode": "nodule+lung+texture",
    "grad_clip": 1.0,
    "preview_every": 5_000,
    "preview_steps": 10,
    "cache_latents": True,
    "gradient_checkpointing": False,
    "amp": True,
    "log_every": 10,
    "checkpoint_every": 1_000,
    "nodule_loss_weight": 0.0,
    "nodule_dropout": 0.0,
    "cond_injection": None,
    "cond_features": None,
    "init_from": None,
    "guidance": GUIDANCE_DEFAULTS,
}
TOP_DEFAULTS: dict[str, Any] = {
    "name": "custom",
    "seed": 0,
    "data": DATA_DEFAULTS,
    "vae": VAE_DEFAULTS,
    "ldm": LDM_DEFAULTS,
}
LOSS_KEYS = ("l1", "perceptual", "kl", "adversarial", "nodule_l1", "ring_l1")


def _architecture(sec: _Section, table: dict, cls: type, what: str) -> tuple[Any, str | None]:
    v = sec.get("architecture")
    if isinstance(v, str):
        if v not in table:
            raise sec.bad(
                "architecture", f"one of {', '.join(sorted(table))} or an object of {what} settings"
            )
        return cls.from_dict(table[v].to_dict()), v
    if not isinstance(v, dict):
        raise sec.bad("architecture", f"a name ({', '.join(sorted(table))}) or an object of {what} settings")
    try:
        return cls.from_dict({k: val for k, val in v.items() if not k.startswith("_")}), None
    except (TypeError, ValueError) as e:
        raise InputError(
            f"config key {sec.key('architecture')} is not a valid {what} architecture: {e}"
        ) from e


def _data(sec: _Section) -> DataConfig:
    hu_min, hu_max = sec.float("hu_min", -math.inf), sec.float("hu_max", -math.inf)
    if hu_max <= hu_min:
        raise sec.bad("hu_max", f"greater than data.hu_min ({hu_min:g})")
    return DataConfig(
        sec.triple("grid_size", int, "positive integers"),
        sec.triple("spacing", float, "positive numbers"),
        hu_min,
        hu_max,
    )


def _perceptual(sec: _Section) -> PerceptualConfig:
    network = sec.choice("network", PERCEPTUAL_NETWORKS)
    weights = sec.get("weights")
    if weights is not None and not (isinstance(weights, str) and weights):
        raise sec.bad("weights", "null or a file path")
    layers = sec.get("layers")
    if not (isinstance(layers, list) and layers and all(x in (1, 2, 3, 4) for x in layers)):
        raise sec.bad("layers", "a non-empty list of ResNet stages 1..4")
    return PerceptualConfig(
        network, weights, tuple(sorted(set(layers))), sec.choice("distance", ("l2", "l1"))
    )


def _init_from(sec: _Section) -> str | None:
    init_from = sec.get("init_from")
    if init_from is not None and (not isinstance(init_from, str) or not init_from):
        raise sec.bad("init_from", "null or the path of a LAND model directory")
    return init_from


def _vae_steps(sec: _Section, init_from: str | None) -> int:
    if sec.get("steps") == 0 and not init_from:
        raise sec.bad("steps", "an integer >= 1 (0, decoder-only steps, needs vae.init_from or --init-from)")
    return sec.int("steps", 0)


def _vae(sec: _Section) -> VAETrainConfig:
    init_from = _init_from(sec)
    arch, arch_name = _architecture(sec, VAE_CONFIGS, VAEConfig, "VAE")
    if sec.get("mask_decoder") is not None:
        arch.mask_decoder = sec.choice("mask_decoder", MASK_DECODERS)
    weights = sec.sub("loss_weights")
    disc = sec.sub("discriminator")
    patch = sec.triple("patch_size", int, "positive integers")
    if any(p % arch.compression for p in patch):
        raise sec.bad("patch_size", f"divisible by the VAE compression {arch.compression}")
    return VAETrainConfig(
        architecture=arch,
        architecture_name=arch_name,
        patch_size=patch,
        batch_size=sec.int("batch_size", 1),
        lr=sec.float("lr", 0.0, open_min=True),
        discriminator_lr=sec.float("discriminator_lr", 0.0, open_min=True),
        steps=_vae_steps(sec, init_from),
        loss_weights={k: weights.float(k) for k in LOSS_KEYS},
        adversarial_warmup=sec.int("adversarial_warmup", 0),
        discriminator_channels=disc.int("channels", 1),
        discriminator_layers=disc.int("num_layers", 1),
        perceptual=_perceptual(sec.sub("perceptual")),
        amp=sec.bool("amp"),
        val_every=sec.int("val_every", 0),
        val_cases=sec.int("val_cases", 0),
        latent_scale_cases=sec.int("latent_scale_cases", 1),
        log_every=sec.int("log_every", 1),
        checkpoint_every=sec.int("checkpoint_every", 1),
        num_workers=sec.int("num_workers", 0),
        cache_volumes=sec.int("cache_volumes", 0),
        nodule_patch_fraction=sec.float("nodule_patch_fraction", 0.0, 1.0),
        decoder_steps=sec.int("decoder_steps", 0),
        init_from=init_from,
        paired_fraction=sec.float("paired_fraction", 0.0, 1.0),
    )


def _ldm_guidance(sec: _Section) -> dict[str, Any]:
    try:
        return parse_guidance(sec.get("guidance"))
    except InputError as e:
        raise InputError(f"config key {sec.key('guidance')}: {e}") from None


def _ldm(sec: _Section) -> LDMTrainConfig:
    arch, arch_name = _architecture(sec, UNET_CONFIGS, UNetConfig, "U-Net")
    for key, choices in (("cond_injection", COND_INJECTIONS), ("cond_features", COND_FEATURES)):
        if sec.get(key) is not None:
            setattr(arch, key, sec.choice(key, choices))
    arch.cond_channels = cond_channels_for(arch.cond_features)
    cond_dropout = sec.float("cond_dropout", 0.0, 1.0)
    nodule_dropout = sec.float("nodule_dropout", 0.0, 1.0)
    if cond_dropout + nodule_dropout > 1.0:
        raise InputError(
            f"config keys {sec.key('cond_dropout')} + {sec.key('nodule_dropout')} = "
            f"{cond_dropout + nodule_dropout:g} exceed 1; they are probabilities of exclusive events"
        )
    if any(c % arch.norm_num_groups for c in arch.channels):
        raise InputError(
            f"config key {sec.key('architecture')}: every channel count must be a multiple of "
            f"norm_num_groups ({arch.norm_num_groups}), got channels {list(arch.channels)}"
        )
    if len(arch.attention_levels) != len(arch.channels):
        raise InputError(
            f"config key {sec.key('architecture')}: attention_levels and channels differ in length"
        )
    return LDMTrainConfig(
        architecture=arch,
        architecture_name=arch_name,
        lr=sec.float("lr", 0.0, open_min=True),
        weight_decay=sec.float("weight_decay"),
        lr_warmup_steps=sec.int("lr_warmup_steps", 0),
        steps=sec.int("steps", 1),
        batch_size=sec.int("batch_size", 1),
        ema_decay=sec.float("ema_decay", 0.0, 1.0),
        min_snr_gamma=sec.float("min_snr_gamma", 0.0, open_min=True),
        cond_dropout=cond_dropout,
        mode=sec.choice("mode", MODES),
        grad_clip=sec.float("grad_clip"),
        preview_every=sec.int("preview_every", 0),
        preview_steps=sec.int("preview_steps", 1),
        cache_latents=sec.bool("cache_latents"),
        gradient_checkpointing=sec.bool("gradient_checkpointing"),
        amp=sec.bool("amp"),
        log_every=sec.int("log_every", 1),
        checkpoint_every=sec.int("checkpoint_every", 1),
        nodule_loss_weight=sec.float("nodule_loss_weight"),
        nodule_dropout=nodule_dropout,
        init_from=_init_from(sec),
        guidance=_ldm_guidance(sec),
    )


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    """Validate a config dict (InputError naming the bad key) and return a :class:`TrainConfig`."""
    top = _Section(raw, "config", TOP_DEFAULTS)
    name = top.get("name")
    if not isinstance(name, str) or not name:
        raise top.bad("name", "a non-empty string")
    cfg = TrainConfig(
        name=name,
        seed=top.int("seed", 0),
        data=_data(top.sub("data")),
        vae=_vae(top.sub("vae")),
        ldm=_ldm(top.sub("ldm")),
        source=source,
        raw=copy.deepcopy(raw),
    )
    _check_grid(cfg)
    return cfg


def _check_grid(cfg: TrainConfig) -> None:
    c = cfg.vae.architecture.compression
    f = c * 2 ** (len(cfg.ldm.architecture.channels) - 1)
    if any(s % f for s in cfg.data.grid_size):
        raise InputError(
            f"config key data.grid_size {list(cfg.data.grid_size)} must be divisible by {f} (VAE compression "
            f"{c} x U-Net down-sampling {f // c})"
        )
    if any(p > g for p, g in zip(cfg.vae.patch_size, cfg.data.grid_size, strict=True)):
        raise InputError(
            f"config key vae.patch_size {list(cfg.vae.patch_size)} is larger than data.grid_size "
            f"{list(cfg.data.grid_size)}"
        )
    if cfg.vae.architecture.latent_channels != cfg.ldm.architecture.latent_channels:
        raise InputError(
            "config keys vae.architecture.latent_channels and ldm.architecture.latent_channels differ "
            f"({cfg.vae.architecture.latent_channels} vs {cfg.ldm.architecture.latent_channels})"
        )
    latent = cfg.data.grid_size[0] // c
    if latent % cfg.ldm.architecture.mask_patch:
        raise InputError(
            f"config key ldm.architecture.mask_patch ({cfg.ldm.architecture.mask_patch}) must divide the "
            f"latent grid ({latent})"
        )


def load_config(name_or_path: str | Path, overrides: dict[str, dict[str, Any]] | None = None) -> TrainConfig:
    """A bundled config by name (``paper``, ``small``, ...) or a JSON file by path; ``overrides``
    (``{section: {key: value}}``, None values ignored) are applied before it is validated, so a command-line
    option can complete a config (e.g. ``--init-from`` for ``vae.steps`` 0)."""
    text = str(name_or_path)
    path = config_path(text)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read training config {path}: {e}") from e
    except json.JSONDecodeError as e:
        raise InputError(f"training config {path} is not valid JSON: {e}") from e
    source = text if path.parent == configs_dir().resolve() and path.stem == text else str(path)
    for section, values in (overrides or {}).items():
        if isinstance(raw, dict):
            raw.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    return parse_config(raw, source)


def with_overrides(cfg: TrainConfig, section: str, **values: Any) -> TrainConfig:
    """A copy with ``raw[section][key] = value`` for each given (non-None) value, re-validated."""
    raw = copy.deepcopy(cfg.raw)
    sec = raw.setdefault(section, {})
    for key, value in values.items():
        if value is None:
            continue
        target = sec
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, copy.deepcopy(TOP_DEFAULTS[section][p]))
        target[leaf] = value
    return parse_config(raw, cfg.source)
