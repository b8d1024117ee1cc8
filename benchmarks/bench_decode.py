"""Benchmark VAE decoding: LAND's exact decoding vs stock full ``vae.decode`` vs MONAI sliding window.

Modes: ``tiled`` = what LAND uses (``decode_tiled`` with method ``auto``: at 256^3 in 2 GiB the streaming
decoder, each convolution once, layer outputs spilled to disk), ``passes`` = the pass-based tiled decoder
(each stage recomputed once per GroupNorm), ``full`` = ``vae.decode``, ``sliding`` = MONAI's sliding window
(not exact: per-tile GroupNorm statistics), ``full64`` = ``vae.decode`` in float64 (not run by default: the
reference for how exact each float32 decode is; CPU float64 convolutions need far more memory, so small
sizes only, e.g. ``--size 16``). Ratios are to ``full`` in the same run.

Each mode runs in its own subprocess, which reports its wall time and peak resident memory
(``ru_maxrss``: includes the interpreter, torch and MONAI) and saves its output for the comparison.
The VAE is MONAI ``AutoencoderKL`` with channels (32, 64, 128) (random weights, fixed seed, randomised
GroupNorm affines / conv biases); the latent is the (sliding-window) encoding of a chest-like phantom.

    python benchmarks/bench_decode.py                      # 4x64^3 -> 256^3, all modes (minutes, ~15 GB)
    python benchmarks/bench_decode.py --size 32 --modes tiled,full
    python benchmarks/bench_decode.py --size 16 --max-memory 8388608 --modes tiled,full,full64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("tiled", "passes", "full", "sliding", "full64")
DEFAULT_MODES = MODES[:4]


def build_vae(seed: int):
    import torch
    from monai.networks.nets import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(32, 64, 128),
        latent_channels=4,
        num_res_blocks=(1, 1, 1),
        attention_levels=(False, False, False),
        norm_num_groups=32,
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.5, generator=g)
            elif isinstance(m, torch.nn.modules.conv._ConvNd) and m.bias is not None:
                m.bias.normal_(0.2, 0.3, generator=g)
    return vae.eval()


def phantom(size: int, seed: int):
    """Chest-like phantom in [0, 1]: body ellipsoid, two lungs, spine, a few nodules, mild noise."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ax = torch.linspace(-1, 1, size)
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    img = torch.zeros(size, size, size)
    img[(x / 0.9) ** 2 + (y / 0.7) ** 2 < 1] = 0.45  # body
    for cx in (-0.4, 0.4):  # lungs
        img[((x - cx) / 0.3) ** 2 + ((y + 0.05) / 0.45) ** 2 + (z / 0.85) ** 2 < 1] = 0.05
    img[(x / 0.12) ** 2 + ((y - 0.5) / 0.12) ** 2 < 1] = 0.9  # spine
    for _ in range(6):  # nodules
        c = (torch.rand(3, generator=g) - 0.5) * torch.tensor([1.2, 0.6, 0.6]) + torch.tensor([0.0, 0.0, 0.4])
        r = 0.03 + 0.07 * float(torch.rand(1, generator=g))
        img[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2] * (1 if c[0] > 0 else -1)) ** 2 < r * r] = 0.6
    img += 0.02 * torch.randn(img.shape, generator=g)
    return img.clamp_(0, 1)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_prep(work: Path, size: int, seed: int) -> dict:
    """Build the model and the latent (encoder of a phantom, sliding window to bound memory)."""
    import numpy as np
    import torch
    from monai.inferers import SlidingWindowInferer

    vae = build_vae(seed)
    torch.save(vae.state_dict(), work / "vae.pt")
    img = phantom(4 * size, seed)[None, None]
    roi = min(128, 4 * size)
    enc = SlidingWindowInferer(roi_size=(roi,) * 3, sw_batch_size=1, overlap=0.0, mode="constant")
    with torch.no_grad():
        z = enc(img, lambda x: vae.encode(x)[0])
    z = (z - z.mean()) / z.std()  # unit-variance latent, like a scaled LDM latent
    np.save(work / "latent.npy", z.numpy().astype(np.float32))
    return {"latent_shape": list(z.shape)}


def child_decode(work: Path, mode: str, seed: int, max_memory: int | None) -> dict:
    import numpy as np
    import torch

    from land.decoding.streamed import plan_stream
    from land.decoding.tiled import choose_method, decode_full, decode_tiled, plan_tiles

    vae = build_vae(seed)
    vae.load_state_dict(torch.load(work / "vae.pt"))
    z = torch.from_numpy(np.load(work / "latent.npy"))
    info: dict = {"rss_before_mib": rss_mib(), "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if mode == "tiled":
        method = choose_method(vae, z.shape, max_memory, torch.device("cpu"))
        if method == "stream":
            plan = plan_stream(vae, z.shape, max_memory=max_memory)
            info["plan"], info["disk_mib"] = plan.describe(), plan.peak_disk_bytes / 2**20
        else:
            info["plan"] = plan_tiles(vae, z.shape, max_memory=max_memory).describe()
        info["method"] = method
        t0 = time.perf_counter()
        out = decode_tiled(vae, z, max_memory=max_memory)
    elif mode == "passes":
        info["plan"] = plan_tiles(vae, z.shape, max_memory=max_memory).describe()
        t0 = time.perf_counter()
        out = decode_tiled(vae, z, max_memory=max_memory, method="passes")
    elif mode == "full":
        out = decode_full(vae, z)
    elif mode == "full64":
        with torch.no_grad():
            out = vae.double().decode(z.double())
    elif mode == "sliding":
        from monai.inferers import SlidingWindowInferer

        sw = SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=1, overlap=0.25, mode="gaussian")
        with torch.no_grad():
            out = sw(z, vae.decode)
    else:
        raise ValueError(mode)
    info["seconds"] = time.perf_counter() - t0
    info["peak_rss_mib"] = rss_mib()
    np.save(work / f"out_{mode}.npy", out.numpy().astype(np.float64 if mode == "full64" else np.float32))
    return info


def run_child(args: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        return {"error": f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="latent edge length (output is 4x)")
    ap.add_argument(
        "--modes", default=",".join(DEFAULT_MODES), help="comma-separated subset of " + ",".join(MODES)
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-memory", type=int, default=None, help="tiled budget in bytes (default: 2 GiB)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs/outputs here (default: temp dir)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child is not None:  # inside a subprocess: do one thing, print one JSON line
        work = args.workdir
        if args.child == "prep":
            res = child_prep(work, args.size, args.seed)
        else:
            res = child_decode(work, args.child, args.seed, args.max_memory)
        print(json.dumps(res))
        return

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown modes {sorted(unknown)}")
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        common = ["--workdir", str(work), "--size", str(args.size), "--seed", str(args.seed)]
        t0 = time.perf_counter()
        prep = run_child(["--child", "prep", *common])
        if "error" in prep:
            sys.exit("preparing the latent failed")
        print(f"latent {tuple(prep['latent_shape'])} prepared in {time.perf_counter() - t0:.0f} s ({work})")
        results: dict[str, dict] = {}
        for mode in modes:
            extra = ["--max-memory", str(args.max_memory)] if args.max_memory is not None else []
            results[mode] = res = run_child(["--child", mode, *common, *extra])
            if "plan" in res:
                print(res["plan"])
            status = res["error"] if "error" in res else f"done in {res['seconds']:.1f} s"
            print(f"{mode}: {status}", flush=True)
        report(work, modes, results)


def report(work: Path, modes: list[str], results: dict[str, dict]) -> None:
    import numpy as np

    ref = np.load(work / "out_full.npy", mmap_mode="r") if (work / "out_full.npy").exists() else None
    ref64 = np.load(work / "out_full64.npy", mmap_mode="r") if "full64" in results else None
    rng = float(ref.max() - ref.min()) if ref is not None else math.nan
    full_s = results.get("full", {}).get("seconds", math.nan)
    head = f"{'mode':<8} {'time s':>8} {'/ full':>7} {'peak RSS MiB':>13} {'RSS before':>11} "
    head += f"{'max|d| vs full':>15} "
    head += f"{'mean|d|':>10} {'max|d|/range':>13}"
    if ref64 is not None:
        head += f" {'max|d| vs fp64':>15} {'mean|d| fp64':>13}"
    print()
    print(head)
    print("-" * len(head))
    for mode in modes:
        res = results[mode]
        if "error" in res:
            print(f"{mode:<8} failed: {res['error']}")
            continue
        dmax = dmean = math.nan
        if ref is not None and mode != "full":
            out = np.load(work / f"out_{mode}.npy", mmap_mode="r")
            diff = np.abs(np.asarray(out, dtype=np.float64) - ref)
            dmax, dmean = float(diff.max()), float(diff.mean())
        elif mode == "full":
            dmax = dmean = 0.0
        line = (
            f"{mode:<8} {res['seconds']:>8.1f} {res['seconds'] / full_s:>7.2f} {res['peak_rss_mib']:>13.0f} "
            f"{res['rss_before_mib']:>11.0f} "
            f"{dmax:>15.3g} {dmean:>10.3g} {dmax / rng:>13.3g}"
        )
        if ref64 is not None:
            out = np.load(work / f"out_{mode}.npy", mmap_mode="r")
            d64 = np.abs(np.asarray(out, dtype=np.float64) - ref64)
            line += f" {float(d64.max()):>15.3g} {float(d64.mean()):>13.3g}"
        print(line)
    print(f"\noutput range of full decode: {rng:.4g}; threads per child: {results[modes[0]].get('threads')}")
    for mode in modes:
        if "disk_mib" in results[mode]:
            res = results[mode]
            print(f"{mode}: method {res['method']}, spill disk at peak {res['disk_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
