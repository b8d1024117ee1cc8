"""``LANDPipeline``: masks in, synthetic CT (HU, int16) out; the engine's diffusers-style entry point."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .conditioning import model_grid
from .conditioning.encode import pool_to_latent
from .decoding.host_memory import reuse_freed_memory
from .decoding.tiled import decode_full, decode_tiled
from .imaging.maskset import MaskSet
from .imaging.volume import Volume
from .interface import __version__
from .interface.contract import (
    DEFAULT_PRECISION,
    DEFAULT_SAMPLER,
    check_fit,
    check_mode,
    check_precision,
    check_sampler,
    check_seed,
    guidance_text,
)
from .interface.errors import Cancelled, InputError, ModelError
from .models import LANDUNet, build_vae, count_parameters
from .models.model_dir import ModelConfig, load_weights, named_config, read_model_json, save_model_dir
from .sampling.diffusion import KnownLatent, NoiseSchedule, default_steps, sample
from .sampling.guidance import check_guidance, guided_denoiser

ProgressFn = Callable[[dict[str, Any]], None]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is an InputError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = "use auto, cpu, cuda or cuda:N (N = GPU index)"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {device!r}; {choices}") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported; {choices}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    return dev


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: no claim
        return False
    flags = set(text.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``precision`` means on ``device``: ``auto`` is bf16 on a CPU with native bfloat16."""
    precision = check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cpu" and native_bf16_cpu() else "fp32"


def with_precision(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device, precision: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model_fn`` under autocast to ``precision`` (output back in float32); fp32: ``model_fn`` itself."""
    if precision == "fp32":
        return model_fn
    dtype = _DTYPES[precision]

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return model_fn(x, t).float()

    return run


def _check_finite(t: torch.Tensor, what: str) -> None:
    """ModelError when the model produced NaN or infinity (a diverged or damaged model), instead of writing
    a CT of garbage or zeros."""
    if not bool(torch.isfinite(t).all()):
        raise ModelError(
            f"the model produced a non-finite {what} (NaN or infinity); its weights are damaged or its "
            "training diverged, and no CT was written; fix: use another model or retrain it"
        )


class LANDPipeline:
    """A VAE + denoiser pair with its ``model.json`` configuration.

    >>> pipe = LANDPipeline.from_pretrained(land.resources.demo_model_dir())  # doctest: +SKIP
    >>> ct = pipe.generate(masks, steps=12, sampler="unipc", seed=0)  # doctest: +SKIP
    """

    def __init__(
        self, config: ModelConfig, vae: torch.nn.Module, unet: LANDUNet, model_dir: Path | None = None
    ):
        config.validate()
        self.config = config
        self.vae = vae.eval()
        self.unet = unet.eval()
        self.model_dir = model_dir
        self.weights_sha256: dict[str, str] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: str | ModelConfig = "small", seed: int = 0) -> LANDPipeline:
        """Randomly initialised networks (``trained`` false) for a named config or a ModelConfig."""
        cfg = named_config(config) if isinstance(config, str) else config
        torch.manual_seed(seed)
        return cls(cfg, build_vae(cfg.vae), LANDUNet(cfg.unet))

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike) -> LANDPipeline:
        """Load a model directory, verifying every weights file's sha256 before reading it."""
        meta = read_model_json(model_dir)
        cfg = ModelConfig.from_json(meta)
        cfg.validate()
        weights = load_weights(model_dir, meta)
        vae, unet = build_vae(cfg.vae), LANDUNet(cfg.unet)
        for name, net in (("vae", vae), ("unet", unet)):
            try:
                net.load_state_dict(weights[name], strict=True)
            except RuntimeError as e:
                first = str(e).splitlines()[0]
                raise ModelError(f"{name} weights do not fit the architecture in model.json: {first}") from e
        pipe = cls(cfg, vae, unet, Path(model_dir))
        pipe.weights_sha256 = dict(meta.get("weights", {}))
        return pipe

    def save_pretrained(self, model_dir: str | os.PathLike) -> Path:
        """Write ``model.json`` and the two safetensors files (with their sha256)."""
        out = save_model_dir(
            model_dir, self.config, {"vae": self.vae.state_dict(), "unet": self.unet.state_dict()}
        )
        self.weights_sha256 = dict(read_model_json(out)["weights"])
        return out

    def _check_decode_space(
        self, grid: Sequence[int], max_memory: int | None, dev: torch.device, temp_dir: str | None
    ) -> None:
        """Refuse before denoising when streamed decoding of a latent on ``grid`` would not find its temporary
        disk space."""
        from .decoding.streamed import check_disk_space, plan_stream
        from .decoding.tiled import choose_method

        vae_shape = (1, self.config.vae.latent_channels, *grid)
        if choose_method(self.vae, vae_shape, max_memory, dev) == "stream":
            check_disk_space(plan_stream(self.vae, vae_shape, max_memory, dev), temp_dir)

    def noise_schedule(self) -> NoiseSchedule:
        """The diffusion schedule the model was trained with (``model.json`` ``diffusion``)."""
        d = self.config.diffusion
        if d.get("schedule", "linear_beta") != "linear_beta" or d.get("prediction_type") != "v_prediction":
            raise ModelError(
                f"model {self.config.name} uses {d.get('schedule')} with {d.get('prediction_type')}; LAND "
                "samples linear_beta schedules with v_prediction only"
            )
        return NoiseSchedule(int(d["num_train_timesteps"]), float(d["beta_start"]), float(d["beta_end"]))

    @property
    def model_id(self) -> str:
        """Model name plus the first 8 hex digits of the U-Net weights' sha256 (when known)."""
        sha = self.weights_sha256.get("unet.safetensors", "")
        return f"{self.config.name}@{sha[:8]}" if sha else self.config.name

    def parameter_counts(self) -> dict[str, int]:
        return {"vae": count_parameters(self.vae), "unet": count_parameters(self.unet)}

    # ------------------------------------------------------------------ generation
    def grid_reference(self) -> Volume:
        """The model grid with identity direction, centred at the origin (for unconditional samples)."""
        return model_grid.grid_reference(self.config.grid_size, self.config.spacing)

    def on_model_grid(self, reference: Volume) -> bool:
        """True when a volume already has the model's grid size and spacing."""
        return model_grid.on_model_grid(reference, self.config.grid_size, self.config.spacing)

    def model_grid_masks(self, masks: MaskSet | None, fit: str = "crop") -> tuple[MaskSet | None, Volume]:
        """Masks on the model grid and the grid as a reference volume
        (:func:`land.conditioning.model_grid.masks_to_model_grid`; ``fit`` ``crop`` or ``scale``)."""
        return model_grid.masks_to_model_grid(masks, self.config.grid_size, self.config.spacing, fit)

    def prepare_conditioning(
        self, masks: MaskSet | None, mode: str, strict: bool = False, fit: str = "crop"
    ) -> tuple[torch.Tensor, Volume, MaskSet | None]:
        """Masks -> (latent-grid conditioning (1, C, d, h, w), model-grid reference, masks on the model grid);
        C is 2 for U-Nets that take the nodule-fraction channel, else 1. ``fit``: :meth:`model_grid_masks`."""
        full, ref, masks = self.model_grid_conditioning(masks, mode, strict, fit)
        return self.pool_conditioning(full), ref, masks

    def pool_conditioning(self, full: np.ndarray) -> torch.Tensor:
        """The model-grid conditioning mask pooled to the latent grid for the U-Net (1, C, d, h, w)."""
        return pool_to_latent(
            full, self.config.vae.compression, nodule_fraction=self.config.unet.nodule_fraction
        )

    def decoder_condition(self, full: np.ndarray) -> torch.Tensor | None:
        """The VAE decoder's condition (1, 1, D, H, W) from the model-grid conditioning mask; None for a plain
        decoder (``vae.mask_decoder`` none). The decoder derives its channels from it
        (:func:`land.models.mask_decoder.decoder_condition`)."""
        if self.config.vae.mask_decoder == "none":
            return None
        return torch.from_numpy(np.ascontiguousarray(full, dtype=np.float32))[None, None]

    def model_grid_conditioning(
        self, masks: MaskSet | None, mode: str, strict: bool = False, fit: str = "crop"
    ) -> tuple[np.ndarray, Volume, MaskSet | None]:
        """Masks -> (encoded conditioning mask on the model grid (D, H, W) float32, model-grid reference,
        masks on the model grid): :func:`land.conditioning.model_grid.model_grid_condition` (check, place the
        grid, resample keeping every nodule, encode) on this model's grid."""
        return model_grid.model_grid_condition(
            masks, mode, self.config.grid_size, self.config.spacing, strict, fit
        )

    @torch.inference_mode()
    def generate(
        self,
        conditioning: MaskSet | None = None,
        *,
        mode: str | None = None,
        steps: int | None = None,
        sampler: str = DEFAULT_SAMPLER,
        seed: int = 0,
        device: str | torch.device = "auto",
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        strict: bool = False,
        decode: str = "tiled",
        max_memory: int | None = None,
        match_input: bool = False,
        guidance: float | None = None,
        guidance_mode: str | None = None,
        precision: str = DEFAULT_PRECISION,
        temp_dir: str | None = None,
        fit: str = "crop",
        known: KnownLatent | None = None,
    ) -> Volume:
        """Synthesize one CT. Returns an int16 HU volume on the model grid (or the input's, ``match_input``).

        ``conditioning`` is a :class:`MaskSet` in any geometry (resampled to the model grid, centred on the
        lungs) or None (unconditional). Same seed, sampler, steps and device give an identical volume.
        ``progress`` receives ``{"stage": "denoise"|"decode", "step": i, "total": n}``; setting ``cancel``
        stops at the next step with :class:`land.Cancelled`. ``guidance`` / ``guidance_mode``: classifier-free
        guidance (:mod:`land.sampling.guidance`); default the model's recommended ``guidance`` from
        model.json.
        ``precision`` ``bf16``/``fp16`` runs the U-Net under autocast (the sampler's state and the VAE decoder
        stay float32); ``fp32`` is exact; ``auto`` (default): :func:`resolve_precision`. ``temp_dir``: where
        streamed decoding keeps layer outputs that do not fit ``max_memory`` (default: the system temporary
        folder); its free space is checked before denoising. ``fit``: how lungs larger than the model's
        grid are handled, ``crop`` or ``scale`` (:meth:`model_grid_masks`). ``known``: latent voxels kept
        from another sample's trajectory, or recorded for one (matched pairs,
        :mod:`land.sampling.matched_pairs`).
        """
        mode = mode or (self.config.mode if conditioning is not None else "none")
        check_mode(mode)
        check_sampler(sampler)
        if decode not in ("tiled", "full"):
            raise InputError(f"unknown decode {decode!r}; choose 'tiled' or 'full'")
        if mode != "none" and mode != self.config.mode:
            warnings.warn(
                f"model {self.config.name} was trained in mode {self.config.mode!r}; {mode!r} may look wrong",
                stacklevel=2,
            )
        steps = default_steps(sampler) if steps is None else steps
        seed = check_seed(seed)
        check_precision(precision)
        scale, gmode = self.resolve_guidance(guidance, guidance_mode)
        if mode == "none":
            scale, gmode = 1.0, "none"  # nothing to guide towards
        dev = resolve_device(device)
        precision = resolve_precision(precision, dev)
        check_fit(fit)
        full, ref, grid_masks = self.model_grid_conditioning(conditioning, mode, strict, fit)
        cond = self.pool_conditioning(full).to(dev)
        mask = self.decoder_condition(full)
        del full

        def report(stage: str) -> Callable[[int, int], None]:
            def on_step(i: int, n: int) -> None:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("generation cancelled")  # also stops tiled decoding between tiles
                if progress is not None:
                    progress({"stage": stage, "step": int(i), "total": int(n)})

            return on_step

        if decode == "tiled":
            self._check_decode_space(cond.shape[2:], max_memory, dev, temp_dir)
        self.unet.to(dev)
        z = self.denoise(cond, sampler=sampler, steps=steps, seed=seed, guidance=scale,
                         guidance_mode=gmode, mode=mode, precision=precision, progress=report("denoise"),
                         cancel=cancel, known=known)  # fmt: skip
        self.unet.to("cpu")
        self.vae.to(dev)
        image = self.decode(z, method=decode, max_memory=max_memory, progress=report("decode"),
                            temp_dir=temp_dir, cond=mask)  # fmt: skip
        self.vae.to("cpu")
        ct = Volume.like(ref, np.rint(self.to_hu(image)).astype(np.int16))
        ct.metadata = self.provenance(grid_masks, mode, sampler, steps, seed, dev, (scale, gmode), precision)
        ct.metadata["fit"] = fit
        ct.metadata["grid_spacing_mm"] = "x".join(f"{v:.4g}" for v in ref.spacing)
        if match_input and conditioning is not None and conditioning.reference is not None:
            from .conditioning.model_grid import from_model_grid

            meta = ct.metadata
            ct = from_model_grid(ct, conditioning.reference, default_hu=int(self.config.intensity["hu_min"]))
            ct.metadata = meta
        return ct

    def denoise(
        self,
        cond: torch.Tensor,
        *,
        sampler: str = DEFAULT_SAMPLER,
        steps: int | None = None,
        seed: int = 0,
        guidance: float = 1.0,
        guidance_mode: str = "none",
        mode: str | None = None,
        precision: str = "fp32",
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
        known: KnownLatent | None = None,
    ) -> torch.Tensor:
        """A latent (1, C, *grid) sampled for the latent-grid condition ``cond``, on ``cond``'s device (where
        the U-Net must be), with the model's own noise schedule; ``precision`` as resolved (not ``auto``).
        ``known`` records the trajectory or keeps part of a recorded one (:class:`KnownLatent`)."""
        dev = cond.device
        latent_shape = (1, self.config.unet.latent_channels, *cond.shape[2:])
        denoiser = guided_denoiser(self.unet, cond, guidance, guidance_mode, mode or self.config.mode)
        with reuse_freed_memory(dev.type == "cpu"):  # each step reuses the last one's memory (10 % faster)
            z = sample(
                with_precision(denoiser, dev, precision),
                latent_shape,
                sampler=sampler,
                steps=steps,
                generator=torch.Generator().manual_seed(int(seed)),
                device=dev,
                progress=progress,
                cancel=cancel,
                schedule=self.noise_schedule(),
                known=known,
            )
        _check_finite(z, "latent")
        return z

    def decode(
        self,
        z: torch.Tensor,
        *,
        method: str = "tiled",
        max_memory: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        temp_dir: str | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The image in [0, 1]-scaled intensities (float32, CPU) of a latent from :meth:`denoise`, decoded
        where the VAE is: ``tiled`` (exact, within ``max_memory``) or ``full``. ``cond``: a mask decoder's
        condition on the model grid (:meth:`decoder_condition`; None: no mask); plain decoders take none."""
        z = z / self.config.latent_scale
        if method == "tiled":
            dev = next(self.vae.parameters()).device
            image = decode_tiled(self.vae, z, max_memory=max_memory, device=dev, progress=progress,
                                 spill_dir=temp_dir, cond=cond)  # fmt: skip
        else:
            image = decode_full(self.vae, z, cond).cpu()
        _check_finite(image, "decoded image")
        return image

    def to_hu(self, image: torch.Tensor) -> np.ndarray:
        """The first volume of a decoded batch in HU (float32): [0, 1] clipped and mapped to the HU window."""
        lo, hi = self.config.intensity["hu_min"], self.config.intensity["hu_max"]
        return image[0, 0].float().clamp(0.0, 1.0).numpy() * (hi - lo) + lo

    def resolve_guidance(self, scale: float | None, mode: str | None) -> tuple[float, str]:
        """Guidance scale and mode to use: the given ones, else the model's recommendation (model.json).

        A scale without a mode uses the model's recommended mode, or ``nodules`` when it recommends none.
        """
        rec_scale, rec_mode = self.config.guidance["scale"], self.config.guidance["mode"]
        if scale is None and mode is None:
            return check_guidance(rec_scale, rec_mode)
        if scale is None:
            scale = rec_scale
        if mode is None:
            mode = rec_mode if rec_mode != "none" else "nodules"
        return check_guidance(scale, mode)

    def provenance(
        self,
        masks: MaskSet | None,
        mode: str,
        sampler: str,
        steps: int,
        seed: int,
        device: torch.device,
        guidance: tuple[float, str] = (1.0, "none"),
        precision: str = DEFAULT_PRECISION,
    ) -> dict[str, str]:
        """Metadata stored with every output: what made it, and that it is SYNTHETIC."""
        textures = {} if masks is None else {int(k): int(v) for k, v in sorted(masks.textures.items())}
        return {
            "synthetic": "true",
            "description": f"SYNTHETIC CT - LAND {self.model_id} seed {seed}",
            "model": self.model_id,
            "model_trained": str(self.config.trained).lower(),
            "mode": mode,
            "sampler": sampler,
            "steps": str(steps),
            "guidance": guidance_text(*guidance),
            "precision": precision,
            "seed": str(seed),
            "device": device.type,
            "textures": ",".join(f"{k}={v}" for k, v in textures.items()),
            "land_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
