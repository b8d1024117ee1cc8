"""Seconds per training step and peak RSS of LAND's trainers (the real step functions), paper config.

- ``vae``: one ``vae_train_step`` on a ``--patch``^3 patch (paper: 128), batch 1, with the adversarial term
  and discriminator step, and a MedicalNet ResNet-50 perceptual loss with random weights (same cost as
  the real weights; ``--perceptual none`` to leave it out).
- ``ldm``: one ``ldm_train_step`` of the paper U-Net on a 4 x ``--latent``^3 latent (paper: 64), batch 1,
  with the paper config's gradient checkpointing (``--no-checkpointing`` to switch it off), AdamW and EMA.

Each part runs in its own child process, so peak RSS is its own. Prints a table; not a test.

    python benchmarks/bench_train.py --parts vae --patch 128 --repeats 2
    python benchmarks/bench_train.py --parts ldm --latent 32 --threads 2
    python benchmarks/bench_train.py --device cuda --json train_gpu.json   # on a GPU: AMP, peak GPU memory
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_vae(patch: int, repeats: int, perceptual: str, device: str = "cpu") -> dict:
    import torch

    from land.train.config import load_config
    from land.train.perceptual import MedicalNetPerceptualLoss
    from land.train.vae_trainer import build_vae_parts, vae_train_step

    cfg = load_config("paper")
    loss = None if perceptual == "none" else MedicalNetPerceptualLoss(50, None)
    dev = torch.device(device)
    if loss is not None:
        loss = loss.to(dev)
    parts = build_vae_parts(cfg.vae, dev, loss, ddp=False, seed=0)
    x = torch.rand(1, 1, patch, patch, patch, device=dev)
    times = []
    for _ in range(repeats + 1):
        _sync(dev)
        start = time.perf_counter()
        vae_train_step(parts, x, adversarial=True)
        _sync(dev)
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in parts.vae.parameters())
    part = f"VAE step {patch}^3 patch, perceptual {perceptual}, AMP {parts.amp_text}"
    return {"part": part, "params": params, "times": times}


def bench_ldm(latent: int, repeats: int, checkpointing: bool, device: str = "cpu") -> dict:
    import torch

    from land.models.model_dir import DIFFUSION_DEFAULTS
    from land.train.config import load_config, with_overrides
    from land.train.ldm_trainer import build_ldm_parts, ldm_train_step

    cfg = with_overrides(load_config("paper"), "ldm", gradient_checkpointing=checkpointing)
    dev = torch.device(device)
    parts = build_ldm_parts(cfg.ldm, DIFFUSION_DEFAULTS, dev, ddp=False, seed=0)
    z0 = torch.randn(1, 4, latent, latent, latent)
    cond = torch.rand(1, 1, latent, latent, latent)
    times = []
    for i in range(repeats + 1):
        gen = torch.Generator().manual_seed(i)
        _sync(dev)
        start = time.perf_counter()
        ldm_train_step(parts, z0, cond, gen)
        _sync(dev)
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in parts.unet.parameters())
    ck = "on" if checkpointing else "off"
    part = f"LDM step 4x{latent}^3 latent, checkpointing {ck}, AMP {parts.amp_text}"
    return {"part": part, "params": params, "times": times}


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if args.child == "vae":
        result = bench_vae(args.patch, args.repeats, args.perceptual, args.device)
    else:
        result = bench_ldm(args.latent, args.repeats, not args.no_checkpointing, args.device)
    result["s_per_step"] = statistics.median(result["times"][1:])
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.device.startswith("cuda"):
        result["peak_gpu"] = torch.cuda.max_memory_allocated(torch.device(args.device))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="vae,ldm", help="comma-separated: vae, ldm")
    parser.add_argument("--patch", type=int, default=128, help="VAE patch side (paper 128)")
    parser.add_argument("--latent", type=int, default=64, help="latent side (paper 64 = 256^3 CT)")
    nets = ["medicalnet_resnet50", "none"]
    parser.add_argument("--perceptual", choices=nets, default=nets[0], help="perceptual network (random)")
    parser.add_argument("--no-checkpointing", action="store_true", help="U-Net without checkpointing")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (AMP as the paper config: on CUDA)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    import torch

    print(f"torch {torch.__version__}, {args.threads} thread(s), cpu count {os.cpu_count()}")
    print(f"paper config, batch 1, median of {args.repeats} step(s) after a warm-up step")
    rows = []
    for part in args.parts.split(","):
        cmd = [sys.executable, __file__, "--child", part, "--patch", str(args.patch)]
        cmd += ["--latent", str(args.latent), "--perceptual", args.perceptual]
        cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads), "--device", args.device]
        cmd += ["--no-checkpointing"] if args.no_checkpointing else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'step':70s} {'params':>9s} {'s/step':>8s} {'peak RSS':>9s} {'peak GPU':>9s}")
    for r in rows:
        rss, gpu = r["peak_rss"] / 2**30, r.get("peak_gpu", 0) / 2**30
        print(f"{r['part']:70s} {r['params'] / 1e6:8.1f}M {r['s_per_step']:8.2f} {rss:8.2f}G {gpu:8.2f}G")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
