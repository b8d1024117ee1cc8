"""Seconds per denoising step and peak RSS: LAND's U-Net (fp32, bf16 autocast) vs the released LAND code's
layout (``released_unet.py``, rebuilt from its published configuration) and MONAI's DiffusionModelUNet.

Each network runs in its own child process (so peak RSS is its own), one after the other in one run. Prints
a table with each row's time and RSS as a ratio to the reference row (``--reference``); not a test.

    python benchmarks/bench_unet.py --size 64 --config paper --repeats 2
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


def build(kind: str, config: str):
    import torch

    from land.models import UNET_CONFIGS, LANDUNet

    cfg = UNET_CONFIGS[config]
    if kind.startswith("land-unfused"):  # upsamplers as nn.Upsample then the convolution (the fusion's gain)
        net = LANDUNet(cfg)
        net.upsamplers = torch.nn.ModuleList(torch.nn.Sequential(*u.children()) for u in net.upsamplers)
        return net, cfg
    if kind.startswith("land"):
        return LANDUNet(cfg), cfg
    if kind.startswith("released"):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from released_unet import ReleasedLayoutUNet

        return ReleasedLayoutUNet(cfg.latent_channels, cfg.cond_channels, cfg.num_res_blocks), cfg
    from monai.networks.nets import DiffusionModelUNet

    net = DiffusionModelUNet(
        spatial_dims=3,
        in_channels=cfg.latent_channels + cfg.cond_channels,
        out_channels=cfg.latent_channels,
        channels=tuple(cfg.channels),
        attention_levels=tuple(cfg.attention_levels),
        num_res_blocks=cfg.num_res_blocks,
        num_head_channels=cfg.num_head_channels,
        with_conditioning=True,
        cross_attention_dim=cfg.cross_attention_dim,
        norm_num_groups=cfg.norm_num_groups,
        use_flash_attention=True,
    )
    del torch
    return net, cfg


def child(kind: str, config: str, size: int, repeats: int) -> dict:
    import torch

    torch.manual_seed(0)
    net, cfg = build(kind, config)
    net.eval()
    x = torch.randn(1, cfg.latent_channels, size, size, size)
    cond = torch.rand(1, 1, size, size, size)
    t = torch.tensor([500])
    tokens = (size // cfg.mask_patch) ** 3
    ctx = torch.randn(1, tokens, cfg.cross_attention_dim)
    times = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind.endswith("bf16"))
    with torch.inference_mode(), autocast:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            if kind.startswith(("land", "released")):
                net(x, t, cond)
            else:
                net(torch.cat([x, cond], 1), t, context=ctx)
            times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() for p in net.parameters())
    return {"kind": kind, "params": params, "s_per_step": statistics.median(times[1:]), "peak_rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="latent grid side (64 = 256^3 CT)")
    parser.add_argument("--config", default="paper", choices=["paper", "small"])
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards after one warm-up")
    parser.add_argument(
        "--kinds",
        default="released,land,land-bf16",
        help="comma-separated: land, land-bf16, land-unfused, land-unfused-bf16 (upsampling not fused), "
        "released, released-bf16, stock",
    )
    parser.add_argument("--reference", default="released", help="row the ratios are taken to")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.config, args.size, args.repeats)))
        return
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    print(f"config {args.config}, latent 4x{args.size}^3 + mask, median of {args.repeats} after a warm-up")
    rows = []
    for kind in args.kinds.split(","):
        cmd = [sys.executable, __file__, "--child", kind, "--size", str(args.size), "--config", args.config]
        cmd += ["--repeats", str(args.repeats)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    names = {
        "land": "LAND U-Net (additive skips)",
        "land-bf16": "LAND U-Net, bfloat16 autocast (precision auto)",
        "land-unfused": "LAND U-Net, upsampling not fused",
        "land-unfused-bf16": "LAND U-Net, bf16, upsampling not fused",
        "released": "released LAND layout (additive skips, fp32)",
        "released-bf16": "released LAND layout, bfloat16 autocast",
        "stock": "MONAI DiffusionModelUNet (concat skips)",
    }
    first = next((r for r in rows if r["kind"] == args.reference), rows[0])
    print(f"{'network':48s} {'params':>10s} {'s/step':>8s} {'peak RSS':>9s}  ratio to {first['kind']}")
    for r in rows:
        rss = r["peak_rss"] / 2**30
        time_ratio, rss_ratio = r["s_per_step"] / first["s_per_step"], r["peak_rss"] / first["peak_rss"]
        ratio = f"time {time_ratio:.2f}, RSS {rss_ratio:.2f}"
        print(f"{names[r['kind']]:48s} {r['params'] / 1e6:9.1f}M {r['s_per_step']:8.2f} {rss:8.2f}G  {ratio}")


if __name__ == "__main__":
    main()
