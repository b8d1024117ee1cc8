"""``land train-ldm``: train LAND's denoising U-Net on cached VAE latents.

Per step: latents ``z`` (posterior mean x latent scale) and latent-grid conditioning of a batch of cases,
``t ~ U{0..999}``, ``x_t = alpha_t z + sigma_t eps``; the U-Net predicts ``v = alpha_t eps - sigma_t z`` and
the loss is the Min-SNR-gamma weighted MSE (``min(SNR, gamma) / (SNR + 1)`` per sample). With probability
``ldm.cond_dropout`` a sample's conditioning is replaced by zeros, with probability ``ldm.nodule_dropout``
only its nodules are dropped (set to the lung value): what classifier-free guidance
(``land.sampling.guidance``)
contrasts with at sampling time. ``ldm.init_from`` starts from another model's U-Net weights (fine-tuning;
levels the source lacks, e.g. ``cond_injection`` projections, keep their zero initialisation, so training
starts from exactly the source model). ``ldm.nodule_loss_weight`` w > 0 makes
the MSE a weighted mean, weight 1 + w on latent voxels the (kept) conditioning marks as nodule: a nodule is a
few latent voxels among tens of thousands, so a plain mean barely trains it (0 in the paper's config).
AdamW, EMA of the weights (the saved model), periodic previews (few-step DPM-Solver++(2M) sample, decoded,
PNG montage). The output is a LAND model directory with ``trained: true``.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..conditioning.encode import nodule_region
from ..data.check import check_dataset
from ..data.folder import read_manifest, sha256_manifest
from ..data.sampling import case_indices, step_seed
from ..interface.contract import DEFAULT_SAMPLER
from ..interface.errors import InputError
from ..models import LANDUNet
from ..models.model_dir import WEIGHT_FILES, ModelConfig, save_model_dir
from ..sampling.diffusion import NoiseSchedule, min_snr_weight
from ..sampling.guidance import drop_condition
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, restore_rng_state
from .config import LDMTrainConfig, TrainConfig
from .distributed import DistContext, barrier, init_distributed, mean_across_ranks, shutdown
from .ema import EMA
from .latents import LatentStore
from .loop import (
    LossMeter,
    StopFlag,
    amp_setup,
    check_finite_losses,
    checkpoint_if_due,
    constant_with_warmup,
    due,
    prepare_out,
    resume_notices,
    seed_step,
    stop_if_requested,
    stop_on_signals,
    write_debug_hashes,
)
from .model_io import base_provenance, init_state, load_vae, vae_is_trained
from .preview import montage, save_png, to_uint8
from .progress import TrainingLog

PREVIEW_WINDOW_HU = (-1000.0, 400.0)


def train_ldm(
    cfg: TrainConfig,
    data: str | Path,
    vae_dir: str | Path,
    out: str | Path,
    *,
    max_steps: int | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: str = "bar",
    cache_dir: str | Path | None = None,
) -> Path:
    """Train the U-Net (see the module docstring); returns the model directory (= ``out``)."""
    ctx = init_distributed(device)
    try:
        with stop_on_signals() as stop:
            result = _train(
                cfg, Path(data), Path(vae_dir), Path(out), max_steps, resume, ctx, progress, cache_dir, stop
            )
    except BaseException:
        if ctx.enabled and dist.is_initialized():
            dist.destroy_process_group()
        raise
    shutdown(ctx)
    return result


def _check_vae(cfg: TrainConfig, vae_cfg: ModelConfig) -> None:
    mc = cfg.model_config(vae=vae_cfg.vae)
    try:
        mc.validate()
    except Exception as e:  # ModelError: grid / latent channels do not fit the config's U-Net
        raise InputError(f"the VAE does not fit the training config: {e}") from e


@torch.no_grad()
def make_preview(
    unet: LANDUNet,
    vae: torch.nn.Module,
    cond: torch.Tensor,
    mc: ModelConfig,
    steps: int,
    seed: int,
    device: torch.device,
) -> np.ndarray:
    """Montage (uint8): generated CT (top row) and the conditioning mask (bottom row), centre slices —
    sampled and decoded as ``land generate`` does (LANDPipeline.denoise / decode, the model's schedule)."""
    from ..pipeline import LANDPipeline

    pipe = LANDPipeline(mc, vae, unet)  # both already on ``device``
    cond = cond.to(device)
    z = pipe.denoise(cond, sampler=DEFAULT_SAMPLER, steps=steps, seed=seed, mode=mc.mode)
    c = mc.vae.compression
    mask = cond[0, 0].cpu().numpy().repeat(c, 0).repeat(c, 1).repeat(c, 2)
    hu = pipe.to_hu(pipe.decode(z, cond=pipe.decoder_condition(mask)))  # a mask decoder: the pooled mask
    ct = to_uint8(hu, *PREVIEW_WINDOW_HU)
    return montage([ct, to_uint8(mask, 0.0, 1.0)])


@dataclass
class LDMParts:
    """Everything one U-Net training step touches (and the checkpoint holds)."""

    unet: LANDUNet
    unet_run: torch.nn.Module  # DDP wrapper (or the U-Net itself)
    ema: EMA
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast: Callable[[], contextlib.AbstractContextManager]
    amp_text: str
    schedule: NoiseSchedule
    min_snr_gamma: float
    cond_dropout: float
    grad_clip: float
    nodule_loss_weight: float = 0.0
    nodule_dropout: float = 0.0
    mode: str = "nodule+lung+texture"

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "models": {"unet": self.unet.state_dict()},
            "optimizers": {"unet": self.opt.state_dict()},
            "schedulers": {"unet": self.sched.state_dict()},
            "ema": self.ema.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        self.unet.load_state_dict(ckpt["models"]["unet"])
        self.opt.load_state_dict(ckpt["optimizers"]["unet"])
        self.sched.load_state_dict(ckpt["schedulers"]["unet"])
        self.ema.load_state_dict(ckpt["ema"])
        self.scaler.load_state_dict(ckpt["scaler"])


def build_ldm_parts(
    lc: LDMTrainConfig, diffusion: dict[str, Any], device: torch.device, ddp: bool, seed: int
) -> LDMParts:
    """U-Net (optionally gradient-checkpointed), EMA, AdamW, warm-up-then-constant LR, AMP, noise schedule."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(seed)
    unet = LANDUNet(lc.architecture).to(device)
    unet.use_checkpoint = lc.gradient_checkpointing
    opt = torch.optim.AdamW(unet.parameters(), lr=lc.lr, weight_decay=lc.weight_decay)
    autocast, scaler, amp_text = amp_setup(device, lc.amp)
    return LDMParts(
        unet=unet,
        unet_run=DDP(unet) if ddp else unet,
        ema=EMA(unet, lc.ema_decay),
        opt=opt,
        sched=torch.optim.lr_scheduler.LambdaLR(opt, constant_with_warmup(lc.lr_warmup_steps)),
        scaler=scaler,
        autocast=autocast,
        amp_text=amp_text,
        schedule=NoiseSchedule(
            diffusion["num_train_timesteps"], diffusion["beta_start"], diffusion["beta_end"]
        ),
        min_snr_gamma=lc.min_snr_gamma,
        cond_dropout=lc.cond_dropout,
        grad_clip=lc.grad_clip,
        nodule_loss_weight=lc.nodule_loss_weight,
        nodule_dropout=lc.nodule_dropout,
        mode=lc.mode,
    )


def init_unet_from(parts: LDMParts, model_dir: str | Path) -> dict[str, Any]:
    """Load a model directory's U-Net weights (sha256-checked) into ``parts.unet`` and restart its EMA there.

    Parameters the source lacks must be ``cond_inject.*`` (zero-initialised, so the network computes exactly
    what the source does); anything else that does not fit is an :class:`InputError`. Returns what was done.
    """
    weights = init_state(model_dir, "unet", "ldm.init_from")
    target = parts.unet.state_dict()
    missing = sorted(set(target) - set(weights))
    unexpected = sorted(set(weights) - set(target))
    shapes = [k for k in set(target) & set(weights) if target[k].shape != weights[k].shape]
    bad = [k for k in missing if not k.startswith("cond_inject.")]
    if bad or unexpected or shapes:
        first = (bad or unexpected or shapes)[0]
        raise InputError(
            f"ldm.init_from {model_dir}: its U-Net does not fit this config's architecture (e.g. {first}); "
            "fix: use the same U-Net architecture (only cond_injection may be added)"
        )
    parts.unet.load_state_dict({**target, **{k: v.to(target[k].dtype) for k, v in weights.items()}})
    parts.ema = EMA(parts.unet, parts.ema.decay)
    return {"init_from": str(Path(model_dir).resolve()), "new_parameters": len(missing)}


def nodule_weighted_mse(
    pred: torch.Tensor, target: torch.Tensor, cond: torch.Tensor, nodule_weight: float
) -> torch.Tensor:
    """Per-sample MSE (N,): a plain mean, or with ``nodule_weight`` w > 0 the mean weighted 1 + w on the
    latent voxels ``cond`` (N, 1, d, h, w) marks as nodule (all channels)."""
    error = (pred - target).pow(2)
    if nodule_weight <= 0:
        return error.flatten(1).mean(dim=1)
    weight = (1.0 + nodule_weight * nodule_region(cond).to(error.dtype)).expand_as(error).flatten(1)
    return (error.flatten(1) * weight).sum(dim=1) / weight.sum(dim=1)


def ldm_train_step(
    p: LDMParts, z0: torch.Tensor, cond: torch.Tensor, gen: torch.Generator
) -> dict[str, float]:
    """One v-prediction step with Min-SNR weights; timesteps, noise and dropout drawn from ``gen`` (CPU)."""
    dev = next(p.unet.parameters()).device
    bs = z0.shape[0]
    t = torch.randint(0, p.schedule.num_train_timesteps, (bs,), generator=gen)
    noise = torch.randn(z0.shape, generator=gen)
    u = torch.rand(bs, generator=gen)
    keep = (u >= p.cond_dropout).to(cond.dtype).view(-1, 1, 1, 1, 1)
    cond = cond * keep
    if p.nodule_dropout > 0:
        drop = ((u >= p.cond_dropout) & (u < p.cond_dropout + p.nodule_dropout)).view(-1, 1, 1, 1, 1)
        cond = torch.where(drop, drop_condition(cond, "nodules", p.mode), cond)
    z0, noise, t, cond = z0.to(dev), noise.to(dev), t.to(dev), cond.to(dev)
    x_t = p.schedule.add_noise(z0, noise, t)
    target = p.schedule.velocity(z0, noise, t)
    with p.autocast():
        pred = p.unet_run(x_t, t, cond)
    mse = nodule_weighted_mse(pred.float(), target, cond, p.nodule_loss_weight)
    loss = (min_snr_weight(t, p.schedule, p.min_snr_gamma) * mse).mean()
    p.opt.zero_grad(set_to_none=True)
    p.scaler.scale(loss).backward()
    if p.grad_clip > 0:
        p.scaler.unscale_(p.opt)
        torch.nn.utils.clip_grad_norm_(p.unet.parameters(), p.grad_clip)
    p.scaler.step(p.opt)
    p.scaler.update()
    p.sched.step()
    p.ema.update(p.unet)
    return {"loss": loss.item(), "mse": mse.mean().item()}


def _train(
    cfg: TrainConfig,
    data: Path,
    vae_dir: Path,
    out: Path,
    max_steps: int | None,
    resume: bool,
    ctx: DistContext,
    style: str,
    cache_dir: str | Path | None,
    stop: StopFlag,
) -> Path:
    lc, dev = cfg.ldm, ctx.device
    total = int(max_steps or lc.steps)
    out = prepare_out(out, resume, ctx)
    check_dataset(data, cfg.data.grid_size, cfg.data.spacing, deep=False).raise_if_bad(config=cfg.source)
    cases = read_manifest(data)
    train_cases = [c for c in cases if c.split not in ("val", "validation")] or cases

    vae, vae_cfg, vae_meta = load_vae(vae_dir)
    _check_vae(cfg, vae_cfg)
    vae.to(dev).eval().requires_grad_(False)
    hu = (vae_cfg.intensity["hu_min"], vae_cfg.intensity["hu_max"])
    mc = cfg.model_config(vae=vae_cfg.vae, name=f"land-{cfg.name}")
    mc.latent_scale = vae_cfg.latent_scale
    mc.intensity = dict(vae_cfg.intensity)
    latent_grid = mc.latent_size

    parts = build_ldm_parts(lc, mc.diffusion, dev, ctx.enabled, cfg.seed)
    init_info = init_unet_from(parts, lc.init_from) if lc.init_from and not resume else {}
    unet, ema = parts.unet, parts.ema
    start, elapsed_before, notes = 0, 0.0, []
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT_FILE, "ldm")
        parts.load_checkpoint_state(ckpt)
        restore_rng_state(ckpt["rng"])
        start, elapsed_before = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
        notes = resume_notices(ckpt, cfg.raw, ctx.world_size)

    vae_sha = vae_meta.get("weights", {}).get(WEIGHT_FILES["vae"], "")
    header = {
        "world_size": ctx.world_size,
        "device": str(dev),
        "amp": parts.amp_text,
        "vae": str(vae_dir.resolve()),
        "vae_sha256": vae_sha,
        "latent_scale": mc.latent_scale,
        "mode": lc.mode,
        "config_source": cfg.source,
        "config": cfg.raw,
        "train_cases": len(train_cases),
    }
    log = TrainingLog(out, "train-ldm", total, start, header, enabled=ctx.is_main, style=style)
    for note in notes:
        log.notice(note, warning=True)
    if init_info:
        log.notice(
            f"U-Net initialised from {init_info['init_from']} ({init_info['new_parameters']} new "
            "zero-initialised tensors)"
        )
    if not vae_is_trained(vae_meta):
        log.notice(f"the VAE in {vae_dir} is UNTRAINED (random weights); train one with land train-vae")

    cache = None
    if lc.cache_latents:
        cache = Path(cache_dir) if cache_dir else out / "latent_cache"
    store = LatentStore(
        train_cases,
        vae,
        vae_cfg.vae.compression,
        mc.latent_scale,
        lc.mode,
        hu,
        latent_grid,
        dev,
        cache,
        {"vae_sha256": vae_sha},
        nodule_fraction=lc.architecture.nodule_fraction,
    )
    store.prepare(ctx, log.notice)

    preview_cond = store.get(0)[1][None]
    n, bs = len(train_cases), lc.batch_size
    t0 = time.monotonic()
    meter = LossMeter()
    unet.train()
    for s in range(start, total):
        step = s + 1
        seed_step(cfg.seed, s, ctx.rank)
        z0, cond = store.batch(case_indices(n, cfg.seed, s, bs, ctx.rank, ctx.world_size))
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, s, ctx.rank, 2))
        meter.add(check_finite_losses(ldm_train_step(parts, z0, cond, gen), step, out))

        if due(step, lc.log_every, total):
            log.step(step, mean_across_ranks(meter.pop(), ctx), parts.sched.get_last_lr()[0])
        if ctx.is_main and lc.preview_every > 0 and due(step, lc.preview_every, total):
            _preview(unet, ema, vae, preview_cond, mc, lc.preview_steps, cfg.seed, dev, out, step, log)
            unet.train()
        elapsed = elapsed_before + time.monotonic() - t0

        def save(every: int = lc.checkpoint_every, step: int = step, elapsed: float = elapsed) -> None:
            checkpoint_if_due("ldm", step, every, total, out, cfg.raw, cfg.seed, ctx, parts.checkpoint_state,
                              log, elapsed)  # fmt: skip

        save()
        stop_if_requested(stop, ctx, step, due(step, lc.checkpoint_every, total), lambda: save(1), out)

    wall = elapsed_before + time.monotonic() - t0
    ema_state = ema.state_dict_for(unet)
    write_debug_hashes(ctx, total, {"unet": unet.state_dict(), "ema": ema_state})
    if ctx.is_main:
        prov = base_provenance(
            "train-ldm", data, sha256_manifest(data), cfg.raw, cfg.source, dev, ctx.world_size
        )
        prov.update(
            stage="ldm",
            vae_trained=vae_is_trained(vae_meta),
            unet_trained=True,
            vae_source=str(vae_dir.resolve()),
            vae_sha256=vae_sha,
            vae_provenance={k: v for k, v in vae_meta.get("provenance", {}).items() if k != "config"},
            ldm_steps=total,
            wall_time_s=round(wall, 1),
            final_losses=meter.last,
            weights="EMA",
            ema_decay=lc.ema_decay,
            min_snr_gamma=lc.min_snr_gamma,
            cond_dropout=lc.cond_dropout,
            nodule_dropout=lc.nodule_dropout,
            init_from=lc.init_from,
            amp=parts.amp_text,
        )
        mc.provenance, mc.trained = prov, True
        mc.card = (
            f"LAND model trained by land train-ldm for {total} steps (config {cfg.source}, mode {lc.mode}), "
            f"EMA weights (decay {lc.ema_decay}). Outputs are SYNTHETIC."
        )
        save_model_dir(out, mc, {"vae": vae.state_dict(), "unet": ema_state})
        log.event("done", total, out=str(out), wall_time_s=round(wall, 1))
    log.close()
    barrier(ctx)
    return out


def _preview(
    unet: LANDUNet,
    ema: EMA,
    vae: torch.nn.Module,
    cond: torch.Tensor,
    mc: ModelConfig,
    steps: int,
    seed: int,
    dev: torch.device,
    out: Path,
    step: int,
    log: TrainingLog,
) -> None:
    ema_unet = copy.deepcopy(unet)
    ema_unet.load_state_dict(ema.state_dict_for(unet))
    image = make_preview(ema_unet, vae, cond, mc, steps, seed, dev)
    del ema_unet
    folder = out / "previews"
    folder.mkdir(exist_ok=True)
    path = folder / f"step_{step:07d}.png"
    save_png(path, image)
    log.image("preview", image, step)
    log.event("preview", step, path=str(path))
