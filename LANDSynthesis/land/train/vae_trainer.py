"""``land train-vae``: train LAND's VAE on random 3D patches.

Loss (LAND / MAISI weights, ``vae.loss_weights``): ``l1 * |x' - x| + perceptual * P(x', x) + kl * KL +
adversarial * LSGAN(D(x'))``, the adversarial term (and the discriminator, MONAI ``PatchDiscriminator`` with
``PatchAdversarialLoss(least_squares)``) only from step ``vae.adversarial_warmup`` on. Nodules are a tiny
share of a chest CT; ``nodule_l1 * mean |x' - x| over nodule voxels`` and ``vae.nodule_patch_fraction``
(patches centred on nodules) keep them from being averaged away (both off in the paper's config). Then
``vae.decoder_steps`` steps (default 0) train only the decoder on whole volumes with the encoder frozen: a VAE
trained on patches normalises (GroupNorm) with patch statistics but encodes and decodes whole volumes, and its
whole-volume reconstructions are worse than its patch ones; the latents do not change, so a U-Net trained on
them stays valid. ``ring_l1`` weights the mean L1 over the 1-5 mm shell around nodules (sharp edges, no
halo; decoder steps only). Validation reconstructs whole volumes (posterior mean, tiled decoding for large
volumes). At the end the latent scale (1 / std of the posterior means of a few training volumes, LDM-style)
is computed and OUT becomes a LAND model directory whose U-Net is untrained (``trained: false``,
``provenance.vae_trained: true``): the ``--vae`` input of ``land train-ldm``.

A mask-aware decoder (``vae.mask_decoder`` spade / additive, :mod:`land.models.mask_decoder`) gets each
case's conditioning mask (``ldm.mode``) in the decoder steps and validation; the patch steps decode without
it (all-zero condition). With ``vae.paired_fraction`` a share of the decoder steps is *paired*: the encoder
sees the case's ``image_without_nodules.nii.gz`` and the decoder, given the mask with the nodules, must
reproduce ``image.nii.gz`` (cases without that file always give plain reconstructions). A decoder-only run
(``vae.steps`` 0) from ``vae.init_from`` keeps that model's U-Net, latent scale, grid and conditioning (the
encoder and so the latents do not change), so OUT is a complete model for ``land generate``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..data.check import check_dataset
from ..data.folder import (
    IMAGE_WITHOUT_NODULES_FILE,
    CaseFiles,
    PatchDataset,
    conditioning_array,
    hu_to_unit,
    load_case,
    read_manifest,
    sha256_manifest,
)
from ..data.sampling import case_indices, step_seed
from ..interface.errors import InputError
from ..models import LANDUNet, build_vae
from ..models.mask_decoder import has_mask_decoder
from ..models.model_dir import ModelConfig, read_model_json, save_model_dir
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, restore_rng_state
from .config import TrainConfig, VAETrainConfig
from .decoder_data import DecoderCases, paired_step
from .distributed import (
    DistContext,
    average_gradients,
    barrier,
    init_distributed,
    mean_across_ranks,
    shutdown,
)
from .loop import (
    LossMeter,
    StopFlag,
    amp_setup,
    check_finite_losses,
    checkpoint_if_due,
    constant_with_warmup,
    due,
    eval_mode,
    prepare_out,
    resume_notices,
    seed_step,
    stop_if_requested,
    stop_on_signals,
    write_debug_hashes,
)
from .model_io import base_provenance, init_state, load_state
from .perceptual import build_perceptual
from .progress import TrainingLog

LARGE_LATENT_VOXELS = 32**3  # decode bigger latents with land.decoding.tiled.decode_tiled


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent voxels, averaged over the batch."""
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()


def split_cases(cases: list[CaseFiles], val_cases: int) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """(train, validation): the manifest's ``split`` column when it names 'val' cases, else the first
    ``val_cases`` training cases are also used for validation."""
    val = [c for c in cases if c.split in ("val", "validation")]
    train = [c for c in cases if c not in val]
    if not val:
        val = train[:val_cases]
    return train, val


@torch.no_grad()
def encode_mean(vae: torch.nn.Module, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Posterior mean of a (1, 1, D, H, W) image."""
    mu, _ = vae.encode(image.to(device))
    return mu


@torch.no_grad()
def reconstruct(
    vae: torch.nn.Module, image: torch.Tensor, device: torch.device, cond: torch.Tensor | None = None
) -> torch.Tensor:
    """Whole-volume reconstruction from the posterior mean (tiled decoding for large latents), on CPU;
    ``cond``: a mask decoder's full-resolution conditioning mask."""
    mu = encode_mean(vae, image, device)
    if mu[0, 0].numel() > LARGE_LATENT_VOXELS:
        from ..decoding.tiled import decode_tiled

        return decode_tiled(vae, mu, device=device, cond=cond)
    if cond is None:
        return vae.decode(mu).float().cpu()
    return vae.decode(mu, cond.to(device)).float().cpu()


def validate(
    vae: torch.nn.Module,
    cases: list[CaseFiles],
    hu: tuple[float, float],
    device: torch.device,
    mode: str = "nodule+lung+texture",
) -> dict[str, float]:
    """Mean L1 (in [0, 1] units), MAE in HU and PSNR of whole-volume reconstructions (a mask decoder decodes
    with each case's conditioning mask in ``mode``)."""
    l1s, psnrs = [], []
    with eval_mode(vae):
        for files in cases:
            case = load_case(files)
            x = torch.from_numpy(hu_to_unit(case.image.array, *hu))[None, None]
            cond = None
            if has_mask_decoder(vae):
                cond = torch.from_numpy(conditioning_array(case.masks, mode))[None, None]
            y = reconstruct(vae, x, device, cond).clamp(0, 1)
            err = (y - x).abs().mean().item()
            mse = (y - x).pow(2).mean().item()
            l1s.append(err)
            psnrs.append(10 * math.log10(1.0 / max(mse, 1e-12)))
    l1 = float(np.mean(l1s)) if l1s else float("nan")
    return {
        "l1": l1,
        "mae_hu": l1 * (hu[1] - hu[0]),
        "psnr": float(np.mean(psnrs)) if psnrs else float("nan"),
        "cases": len(l1s),
    }


def latent_scale(
    vae: torch.nn.Module, cases: list[CaseFiles], hu: tuple[float, float], device: torch.device
) -> tuple[float, float]:
    """(1 / std, std) of the posterior means of ``cases`` (whole volumes)."""
    values = []
    with eval_mode(vae):
        for files in cases:
            case = load_case(files)
            x = torch.from_numpy(hu_to_unit(case.image.array, *hu))[None, None]
            values.append(encode_mean(vae, x, device).double().cpu().flatten())
    std = float(torch.cat(values).std())
    return (1.0 / std if std > 0 else 1.0), std


def l1_terms(
    recon: torch.Tensor,
    x: torch.Tensor,
    nodules: torch.Tensor | None,
    w: dict[str, float],
    ring: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``l1 * mean |recon - x|`` plus, with ``nodules`` (0/1 like ``x``), ``nodule_l1 *`` the mean over nodule
    voxels and, with ``ring`` (0/1), ``ring_l1 *`` the mean over the ring around them (each 0 for a batch
    without any); returns the loss and the logged terms."""
    error = (recon - x).abs()
    l1 = error.mean()
    loss = w["l1"] * l1
    losses = {"l1": l1.item()}
    for key, region in (("nodule_l1", nodules), ("ring_l1", ring)):
        if region is not None and w.get(key, 0.0) > 0:
            term = (error * region).sum() / region.sum().clamp(min=1.0)
            loss = loss + w[key] * term
            losses[key] = term.item()
    return loss, losses


@dataclass
class VAEParts:
    """Everything one VAE training step touches (and the checkpoint holds)."""

    vae: torch.nn.Module
    disc: torch.nn.Module
    vae_run: torch.nn.Module  # DDP wrappers (or the modules themselves)
    disc_run: torch.nn.Module
    perceptual: torch.nn.Module | None
    adv_loss: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LambdaLR
    sched_d: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast: Callable[[], contextlib.AbstractContextManager]
    amp_text: str
    weights: dict[str, float]

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "models": {"vae": self.vae.state_dict(), "discriminator": self.disc.state_dict()},
            "optimizers": {"vae": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict()},
            "schedulers": {"vae": self.sched_g.state_dict(), "discriminator": self.sched_d.state_dict()},
            "scaler": self.scaler.state_dict(),
        }

    def load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        self.vae.load_state_dict(ckpt["models"]["vae"])
        self.disc.load_state_dict(ckpt["models"]["discriminator"])
        self.opt_g.load_state_dict(ckpt["optimizers"]["vae"])
        self.opt_d.load_state_dict(ckpt["optimizers"]["discriminator"])
        self.sched_g.load_state_dict(ckpt["schedulers"]["vae"])
        self.sched_d.load_state_dict(ckpt["schedulers"]["discriminator"])
        self.scaler.load_state_dict(ckpt["scaler"])


def build_vae_parts(
    vc: VAETrainConfig, device: torch.device, perceptual: torch.nn.Module | None, ddp: bool, seed: int
) -> VAEParts:
    """VAE, PatchDiscriminator (instance norm), Adam optimizers, constant LR schedules, AMP."""
    from monai.losses import PatchAdversarialLoss
    from monai.networks.nets import PatchDiscriminator
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(seed)
    vae = build_vae(vc.architecture).to(device)
    disc = PatchDiscriminator(
        spatial_dims=3,
        num_layers_d=vc.discriminator_layers,
        channels=vc.discriminator_channels,
        in_channels=1,
        out_channels=1,
        norm="INSTANCE",
    ).to(device)
    if perceptual is not None:
        perceptual.to(device)
    opt_g = torch.optim.Adam(vae.parameters(), lr=vc.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=vc.discriminator_lr)
    autocast, scaler, amp_text = amp_setup(device, vc.amp)
    return VAEParts(
        vae=vae,
        disc=disc,
        vae_run=DDP(vae) if ddp else vae,
        disc_run=DDP(disc) if ddp else disc,
        perceptual=perceptual,
        adv_loss=PatchAdversarialLoss(criterion="least_squares"),
        opt_g=opt_g,
        opt_d=opt_d,
        sched_g=torch.optim.lr_scheduler.LambdaLR(opt_g, constant_with_warmup(0)),
        sched_d=torch.optim.lr_scheduler.LambdaLR(opt_d, constant_with_warmup(0)),
        scaler=scaler,
        autocast=autocast,
        amp_text=amp_text,
        weights=dict(vc.loss_weights),
    )


def vae_train_step(
    p: VAEParts, x: torch.Tensor, adversarial: bool, nodules: torch.Tensor | None = None
) -> dict[str, float]:
    """One generator step (+ one discriminator step when ``adversarial``); returns the losses.

    ``nodules`` (0/1, shaped like ``x``) adds ``nodule_l1`` times the mean L1 over nodule voxels.
    """
    w = p.weights
    with p.autocast():
        recon, mu, sigma = p.vae_run(x)
        recon = recon.float()
        loss_g, losses = l1_terms(recon, x, nodules, w)
        kl = kl_divergence(mu, sigma)
        loss_g = loss_g + w["kl"] * kl
        losses["kl"] = kl.item()
        if p.perceptual is not None and w["perceptual"] > 0:
            perceptual = p.perceptual(recon, x)
            loss_g = loss_g + w["perceptual"] * perceptual
            losses["perceptual"] = perceptual.item()
        if adversarial:
            p.disc.requires_grad_(False)  # generator step: no discriminator gradients (and no DDP sync)
            g_adv = p.adv_loss(p.disc(recon)[-1], target_is_real=True, for_discriminator=False)
            loss_g = loss_g + w["adversarial"] * g_adv
            losses["generator_adv"] = g_adv.item()
    losses["total"] = loss_g.item()
    p.opt_g.zero_grad(set_to_none=True)
    p.scaler.scale(loss_g).backward()
    p.scaler.step(p.opt_g)
    if adversarial:
        p.disc.requires_grad_(True)
        with p.autocast():
            logits = p.disc_run(torch.cat([recon.detach(), x]))[-1].float()
            fake, real = logits[: x.shape[0]], logits[x.shape[0] :]
            loss_d = 0.5 * (
                p.adv_loss(fake, target_is_real=False, for_discriminator=True)
                + p.adv_loss(real, target_is_real=True, for_discriminator=True)
            )
        p.opt_d.zero_grad(set_to_none=True)
        p.scaler.scale(w["adversarial"] * loss_d).backward()
        p.scaler.step(p.opt_d)
        losses["discriminator"] = loss_d.item()
    p.scaler.update()
    p.sched_g.step()
    if adversarial:
        p.sched_d.step()
    return losses


def decoder_train_step(
    p: VAEParts,
    x: torch.Tensor,
    nodules: torch.Tensor | None,
    ctx: DistContext,
    *,
    source: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    ring: torch.Tensor | None = None,
) -> dict[str, float]:
    """One decoder-only step on whole volumes: decode the (frozen) encoder's posterior mean of ``source``
    (default ``x``; a paired step: the image without nodules) under ``cond`` (a mask decoder's conditioning
    mask), L1 against ``x`` (+ nodule and ring L1).

    The encoder gets no gradient, so Adam leaves it (and so the latents) unchanged. Under torchrun the
    decoder's gradients are averaged across ranks here (the DDP wrapper is not used in this phase).
    """
    with torch.no_grad(), p.autocast():
        mu, _ = p.vae.encode(x if source is None else source)
    with p.autocast():
        recon = p.vae.decode(mu.detach()) if cond is None else p.vae.decode(mu.detach(), cond)
        loss, losses = l1_terms(recon.float(), x, nodules, p.weights, ring)
    losses["total"] = loss.item()
    p.opt_g.zero_grad(set_to_none=True)
    p.scaler.scale(loss).backward()
    average_gradients(p.vae, ctx)
    p.scaler.step(p.opt_g)
    p.scaler.update()
    p.sched_g.step()
    return losses


def init_vae_from(parts: VAEParts, model_dir: str | Path) -> None:
    """Load a model directory's VAE weights (sha256-checked, same architecture) into ``parts.vae``. A plain
    VAE's weights also start a mask-aware one (its mask heads keep their zero initialisation)."""
    weights = init_state(model_dir, "vae", "vae.init_from")
    target = parts.vae.state_dict()
    missing = set(target) - set(weights)
    if (
        set(weights) - set(target)
        or any(not k.startswith("decoder.mask_") for k in missing)
        or any(weights[k].shape != target[k].shape for k in weights)
    ):
        raise InputError(
            f"vae.init_from {model_dir}: its VAE does not fit this config's VAE architecture; "
            "fix: use the same vae.architecture (and a plain or the same vae.mask_decoder)"
        )
    parts.vae.load_state_dict({k: v.to(target[k].dtype) for k, v in weights.items()}, strict=not missing)


def train_vae(
    cfg: TrainConfig,
    data: str | Path,
    out: str | Path,
    *,
    max_steps: int | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: str = "bar",
) -> Path:
    """Train the VAE (see the module docstring); returns the model directory (= ``out``)."""
    ctx = init_distributed(device)
    try:
        with stop_on_signals() as stop:
            result = _train(cfg, Path(data), Path(out), max_steps, resume, ctx, progress, stop)
    except BaseException:
        if ctx.enabled and dist.is_initialized():
            dist.destroy_process_group()
        raise
    shutdown(ctx)
    return result


def _train(
    cfg: TrainConfig,
    data: Path,
    out: Path,
    max_steps: int | None,
    resume: bool,
    ctx: DistContext,
    style: str,
    stop: StopFlag,
) -> Path:
    vc, dev = cfg.vae, ctx.device
    total = int(max_steps or vc.steps + vc.decoder_steps)
    patch_end = min(vc.steps, total)
    out = prepare_out(out, resume, ctx)
    check_dataset(data, cfg.data.grid_size, cfg.data.spacing, deep=False).raise_if_bad(config=cfg.source)
    train_cases, val_cases = split_cases(read_manifest(data), vc.val_cases)
    perceptual, perceptual_info = build_perceptual(vc.perceptual)
    hu = (cfg.data.hu_min, cfg.data.hu_max)
    parts = build_vae_parts(vc, dev, perceptual, ctx.enabled, cfg.seed)

    start, elapsed_before, notes = 0, 0.0, []
    if vc.init_from and not resume:
        init_vae_from(parts, vc.init_from)
        notes.append(f"VAE initialised from {Path(vc.init_from).resolve()}")
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT_FILE, "vae")
        parts.load_checkpoint_state(ckpt)
        restore_rng_state(ckpt["rng"])
        start, elapsed_before = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
        notes = resume_notices(ckpt, cfg.raw, ctx.world_size)

    header = {
        "world_size": ctx.world_size,
        "device": str(dev),
        "amp": parts.amp_text,
        "perceptual": perceptual_info,
        "loss_weights": vc.loss_weights,
        "adversarial_warmup": vc.adversarial_warmup,
        "config_source": cfg.source,
        "config": cfg.raw,
        "train_cases": len(train_cases),
        "val_cases": len(val_cases),
    }
    log = TrainingLog(out, "train-vae", total, start, header, enabled=ctx.is_main, style=style)
    for note in notes:
        log.notice(note, warning=True)
    if perceptual is None:
        log.notice("perceptual loss: OFF (vae.perceptual.network is 'none')")
    else:
        log.notice(f"perceptual loss: {vc.perceptual.network} from {perceptual_info.get('weights')}")

    with_nodules = vc.loss_weights["nodule_l1"] > 0
    patches = PatchDataset(
        train_cases,
        vc.patch_size,
        *hu,
        cache_volumes=vc.cache_volumes,
        nodule_fraction=vc.nodule_patch_fraction,
        with_nodules=with_nodules,
    )
    n, bs = len(train_cases), vc.batch_size
    batches = [
        [
            (i, step_seed(cfg.seed, s, ctx.rank, 1 + j))
            for j, i in enumerate(case_indices(n, cfg.seed, s, bs, ctx.rank, ctx.world_size))
        ]
        for s in range(start, patch_end)
    ]
    loader = (
        DataLoader(patches, batch_sampler=batches, num_workers=vc.num_workers, pin_memory=dev.type == "cuda")
        if batches
        else []
    )

    t0 = time.monotonic()
    meter = LossMeter()
    last_val: dict[str, Any] = {}
    parts.vae.train()
    parts.disc.train()

    def after_step(step: int) -> None:
        nonlocal last_val
        if due(step, vc.log_every, total):
            log.step(step, mean_across_ranks(meter.pop(), ctx), parts.sched_g.get_last_lr()[0])
        if ctx.is_main and val_cases and due(step, vc.val_every, total):
            last_val = validate(parts.vae, val_cases, hu, dev, cfg.ldm.mode)
            log.event("validation", step, **last_val)
        elapsed = elapsed_before + time.monotonic() - t0

        def save(every: int = vc.checkpoint_every, step: int = step, elapsed: float = elapsed) -> None:
            checkpoint_if_due("vae", step, every, total, out, cfg.raw, cfg.seed, ctx, parts.checkpoint_state,
                              log, elapsed)  # fmt: skip

        save()
        stop_if_requested(stop, ctx, step, due(step, vc.checkpoint_every, total), lambda: save(1), out)

    for s, item in zip(range(start, patch_end), loader, strict=False):
        seed_step(cfg.seed, s, ctx.rank)
        adversarial = vc.loss_weights["adversarial"] > 0 and s >= vc.adversarial_warmup
        x, nodules = item if with_nodules else (item, None)
        if nodules is not None:
            nodules = nodules.to(dev, non_blocking=True)
        losses = vae_train_step(parts, x.to(dev, non_blocking=True), adversarial, nodules)
        meter.add(check_finite_losses(losses, s + 1, out))
        after_step(s + 1)

    if total > max(start, patch_end):
        first = max(start, patch_end)
        log.notice(f"decoder-only steps {first + 1}-{total} on whole volumes (encoder frozen)")
        masked = has_mask_decoder(parts.vae)
        if vc.paired_fraction > 0:
            pair = IMAGE_WITHOUT_NODULES_FILE
            log.notice(f"paired decoder steps: a share {vc.paired_fraction:g} (of the cases with {pair})")
        volumes = DecoderCases(
            train_cases,
            hu,
            cfg.ldm.mode,
            cond=masked,
            nodules=with_nodules,
            ring=vc.loss_weights["ring_l1"] > 0,
            without=vc.paired_fraction > 0,
            cache_volumes=vc.cache_volumes,
        )
        for s in range(first, total):
            seed_step(cfg.seed, s, ctx.rank)
            index = case_indices(n, cfg.seed, s, 1, ctx.rank, ctx.world_size)[0]
            case = volumes[index]
            paired = paired_step(cfg.seed, s, ctx.rank, vc.paired_fraction, case.without is not None)
            losses = decoder_train_step(
                parts,
                case.image.to(dev),
                None if case.nodules is None else case.nodules.to(dev),
                ctx,
                source=case.without.to(dev) if paired and case.without is not None else None,
                cond=None if case.cond is None else case.cond.to(dev),
                ring=None if case.ring is None else case.ring.to(dev),
            )
            losses["paired"] = float(paired)
            meter.add(check_finite_losses(losses, s + 1, out))
            after_step(s + 1)

    wall = elapsed_before + time.monotonic() - t0
    vae = parts.vae
    write_debug_hashes(ctx, total, {"vae": vae.state_dict(), "discriminator": parts.disc.state_dict()})
    if ctx.is_main:
        scale_cases = train_cases[: vc.latent_scale_cases]
        scale, std = latent_scale(vae, scale_cases, hu, dev)
        log.event("latent_scale", total, latent_scale=scale, latent_std=std, cases=len(scale_cases))
        _write_model_dir(
            cfg,
            out,
            data,
            vae,
            scale,
            std,
            total,
            wall,
            meter.last,
            last_val,
            perceptual_info,
            parts.amp_text,
            ctx,
        )
        log.event("done", total, out=str(out), wall_time_s=round(wall, 1))
    log.close()
    barrier(ctx)
    return out


def _write_model_dir(
    cfg: TrainConfig,
    out: Path,
    data: Path,
    vae: torch.nn.Module,
    scale: float,
    std: float,
    steps: int,
    wall: float,
    losses: dict[str, float],
    val: dict[str, Any],
    perceptual: dict[str, Any],
    amp: str,
    ctx: DistContext,
) -> None:
    kept = kept_unet(cfg)
    if kept is not None:  # decoder-only from a model: its U-Net, latent scale and conditioning stay valid
        mc, unet_state = kept
        mc.name = f"land-{cfg.name}"
        mc.vae = copy.deepcopy(cfg.vae.architecture)
    else:
        mc = cfg.model_config(name=f"land-{cfg.name}-vae")
        mc.latent_scale = scale
        mc.trained = False  # the U-Net is untrained
        torch.manual_seed(cfg.seed)
        unet_state = LANDUNet(mc.unet).state_dict()
    prov = base_provenance(
        "train-vae", data, sha256_manifest(data), cfg.raw, cfg.source, ctx.device, ctx.world_size
    )
    prov.update(
        stage="vae" if kept is None else "decoder",
        vae_trained=True,
        unet_trained=mc.trained,
        unet=f"UNTRAINED (random init, seed {cfg.seed}): train it with land train-ldm --vae THIS_DIR"
        if kept is None
        else f"kept from {cfg.vae.init_from} (the encoder and latent scale are unchanged)",
        vae_steps=steps,
        decoder_only_steps=max(0, steps - cfg.vae.steps),
        init_from=cfg.vae.init_from,
        wall_time_s=round(wall, 1),
        final_losses=losses,
        validation=val,
        perceptual=perceptual,
        loss_weights=cfg.vae.loss_weights,
        adversarial_warmup=cfg.vae.adversarial_warmup,
        amp=amp,
        latent_std=std,
    )
    mc.provenance = prov
    if kept is None:
        mc.card = (
            f"VAE trained by land train-vae for {steps} steps (config {cfg.source}); latent scale "
            f"{scale:.4g}. The U-Net is UNTRAINED (random weights): use this directory as --vae of land "
            "train-ldm."
        )
    else:
        mc.card = (
            f"The model {cfg.vae.init_from} with its VAE decoder fine-tuned by land train-vae for {steps} "
            f"decoder-only steps (config {cfg.source}; mask decoder {mc.vae.mask_decoder}); encoder, latent "
            "scale and U-Net unchanged.\n\n" + mc.card
        )
    mc.validate()
    save_model_dir(out, mc, {"vae": vae.state_dict(), "unet": unet_state})


def kept_unet(cfg: TrainConfig) -> tuple[ModelConfig, dict[str, torch.Tensor]] | None:
    """For a decoder-only run (``vae.steps`` 0) from ``vae.init_from`` on that model's grid and intensity
    window: its ModelConfig and U-Net weights, which stay valid (the encoder does not change); else None."""
    vc = cfg.vae
    if vc.steps != 0 or not vc.init_from:
        return None
    meta = read_model_json(vc.init_from)
    init = ModelConfig.from_json(meta)
    same_vae = {**init.vae.to_dict(), "mask_decoder": "none"} == {
        **vc.architecture.to_dict(),
        "mask_decoder": "none",
    }
    same_grid = tuple(init.grid_size) == tuple(cfg.data.grid_size) and np.allclose(
        init.spacing, cfg.data.spacing
    )
    same_hu = (init.intensity["hu_min"], init.intensity["hu_max"]) == (cfg.data.hu_min, cfg.data.hu_max)
    if not (same_vae and same_grid and same_hu):
        return None
    return init, load_state(vc.init_from, "unet", meta)
