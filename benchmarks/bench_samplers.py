"""Choose the default sampler and step count by measurement: distance to an exact / many-step reference.

Part 1, analytic: data x0 ~ N(0.3, 0.5^2) has a closed-form v-prediction and an exact probability-flow
solution; every sampler x step count is compared with it (RMS and max over 4096 values).
Part 2, the bundled demo model on the demo masks (fp32): each sampler x step count vs a many-step reference
with the same seeds (default 200 DPM-Solver++(2M) steps; ``--ref-sampler ddim --ref-steps 1000`` for DDIM):
mean |delta HU| per voxel, and per nodule the mean HU and the contrast to its surrounding lung (the
fidelity measures of ``land demo-fidelity``) as differences to the reference.
Prints tables; not a test.

    python benchmarks/bench_samplers.py                 # both parts (~10 min on 2 CPU cores)
    python benchmarks/bench_samplers.py --skip-model    # analytic part only (seconds)
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

CANDIDATES = (("dpmpp2m", 25), ("dpmpp2m", 12), ("unipc", 10), ("unipc", 11), ("unipc", 12), ("unipc", 14))
MU, S = 0.3, 0.5


def analytic(steps_list: tuple[int, ...]) -> None:
    from land.sampling.diffusion import SAMPLERS, NoiseSchedule, sample

    sched = NoiseSchedule()

    def gaussian_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = sched.alphas_cumprod[t].view(-1, *([1] * (x.ndim - 1)))
        a, sg, xd = abar.sqrt(), (1 - abar).sqrt(), x.double()
        x0 = MU + a * S**2 / (abar * S**2 + 1 - abar) * (xd - a * MU)
        return (a * (xd - a * x0) / sg - sg * x0).to(x.dtype)

    x = torch.randn(8, 512, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    abar_T = float(sched.alphas_cumprod[-1])
    exact = MU + S * (x - math.sqrt(abar_T) * MU) / math.sqrt(abar_T * S**2 + 1 - abar_T)
    ode = [s for s in SAMPLERS if s != "ddpm"]
    print("Analytic Gaussian data: RMS (max) distance to the exact probability-flow solution")
    print(f"{'steps':>6} " + " ".join(f"{s:>18}" for s in ode))
    for steps in steps_list:
        cells = []
        for s in ode:
            out = sample(gaussian_v, x.shape, sampler=s, steps=steps, x_T=x, dtype=torch.float64)
            d = out - exact
            cells.append(f"{d.pow(2).mean().sqrt().item():>9.4f} ({d.abs().max().item():.3f})")
        print(f"{steps:>6} " + " ".join(cells))
    print()


def demo_model(
    seeds: list[int],
    ref_steps: int,
    candidates: list[tuple[str, int]],
    cache: str | None = None,
    ref_sampler: str = "dpmpp2m",
) -> None:
    from land.eval.fidelity import nodule_stats
    from land.pipeline import LANDPipeline
    from land.resources import demo_model_dir
    from land.world.demo import make_demo_masks

    pipe = LANDPipeline.from_pretrained(demo_model_dir())
    masks = make_demo_masks()
    lung = masks.lung.array
    labels = masks.nodules.array
    spacing = masks.lung.spacing

    def run(sampler: str, steps: int, seed: int) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        ct = pipe.generate(masks, sampler=sampler, steps=steps, seed=seed, device="cpu", precision="fp32")
        return ct.array.astype(np.float64), time.perf_counter() - t0

    def nodules(ct: np.ndarray) -> list:
        return nodule_stats(ct, lung, labels, masks.textures, spacing)

    stored = dict(np.load(cache)) if cache and os.path.exists(cache) else {}
    refs = {}
    for seed in seeds:
        key = f"{ref_sampler}{ref_steps}_seed{seed}"
        if key in stored:
            refs[seed] = stored[key].astype(np.float64)
            continue
        refs[seed], sec = run(ref_sampler, ref_steps, seed)
        print(f"reference {ref_sampler} {ref_steps} steps, seed {seed}: {sec:.0f} s", flush=True)
        if cache:
            stored[key] = refs[seed].astype(np.int16)
            np.savez(cache, **stored)
    print(
        f"\nDemo model, demo masks (nodules of texture 5/3/1), seeds {seeds};"
        f" vs {ref_sampler} {ref_steps} steps"
    )
    print(f"{'sampler':>8} {'steps':>5} {'s/volume':>9} {'mean|dHU|':>10} {'lung mean|dHU|':>15} "
          f"{'nodule |dHU|':>13} {'contrast |dHU|':>15} {'visible':>8}")  # fmt: skip
    ref_vis = []
    for seed in seeds:
        ref_vis += [n.visible for n in nodules(refs[seed])]
    for sampler, steps in candidates:
        d_all, d_lung, d_nod, d_con, vis, secs = [], [], [], [], [], []
        for seed in seeds:
            ct, sec = run(sampler, steps, seed)
            secs.append(sec)
            diff = np.abs(ct - refs[seed])
            d_all.append(diff.mean())
            d_lung.append(diff[lung > 0].mean())
            for a, b in zip(nodules(ct), nodules(refs[seed]), strict=True):
                d_nod.append(abs(a.mean_hu - b.mean_hu))
                d_con.append(abs(a.contrast_hu - b.contrast_hu))
                vis.append(a.visible)
        print(
            f"{sampler:>8} {steps:>5} {np.mean(secs):>9.1f} {np.mean(d_all):>10.2f} {np.mean(d_lung):>15.2f} "
            f"{np.mean(d_nod):>13.1f} {np.mean(d_con):>15.1f} {sum(vis):>4}/{len(vis)}",
            flush=True,
        )
    print(f"reference visible: {sum(ref_vis)}/{len(ref_vis)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds for the demo-model part")
    ap.add_argument("--ref-steps", type=int, default=200)
    ap.add_argument("--ref-sampler", default="dpmpp2m", choices=("dpmpp2m", "ddim", "unipc"))
    ap.add_argument("--skip-model", action="store_true", help="only the analytic part")
    ap.add_argument(
        "--candidates",
        default=",".join(f"{s}:{n}" for s, n in CANDIDATES),
        help="comma-separated sampler:steps pairs for the demo-model part",
    )
    ap.add_argument("--refs-cache", help="npz file that keeps the (slow) references between runs")
    args = ap.parse_args()
    analytic((6, 8, 10, 12, 15, 20, 25, 50, 200))
    if not args.skip_model:
        pairs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.candidates.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
        demo_model(seeds, args.ref_steps, pairs, args.refs_cache, args.ref_sampler)


if __name__ == "__main__":
    main()
