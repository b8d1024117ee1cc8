"""The GPU path in one run (issue 16), for a session lent the device: writes ``OUT/gpu_check.json`` after
every part, so a timeout still returns what was measured. Needs torch (CUDA), numpy, scipy, safetensors, tqdm
and MONAI (pure Python: carry its wheel); no SimpleITK.

1. parity: the bundled demo model on its demo masks, seed 0, 25 steps: CUDA fp32/bf16/fp16 vs CPU fp32
   (max / mean |HU difference|), exact tiled vs full decoding on CUDA, ``--device auto`` picks CUDA;
2. generation: ``land benchmark --config paper --size 256 --steps 25`` at each precision (s/step, denoise,
   decode, total, peak GPU memory);
3. training: one paper-config VAE step (128^3 patch) and LDM step (4x64^3 latent) with AMP (s/step, peak GPU).

    # here: pip download monai --no-deps -d .device_wheels  (1.7 MB; add .device_wheels/ to .git/info/exclude)
    # device run (carry .device_wheels, timeout 480 s):
    pip install --no-deps --no-index .device_wheels/*.whl && python benchmarks/gpu_check.py --out $OUT
    python benchmarks/gpu_check.py --out /tmp/g --device cpu --size 64 --config small --quick   # dry run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LANDSynthesis"))
sys.path.insert(0, str(REPO / "benchmarks"))


def parity(device: str, steps: int) -> dict:
    import numpy as np
    import torch

    from land.decoding.tiled import decode_full, decode_tiled
    from land.pipeline import LANDPipeline, resolve_device
    from land.resources import demo_model_dir
    from land.world.demo import make_demo_masks

    pipe = LANDPipeline.from_pretrained(demo_model_dir())
    masks = make_demo_masks()
    out: dict = {"auto_device": resolve_device("auto").type, "steps": steps}
    t0 = time.perf_counter()
    ref = pipe.generate(masks, steps=steps, seed=0, device="cpu", precision="fp32").array.astype(np.float32)
    out["cpu_fp32_s"] = round(time.perf_counter() - t0, 2)
    for precision in ("fp32", "bf16", "fp16"):
        t0 = time.perf_counter()
        ct = pipe.generate(masks, steps=steps, seed=0, device=device, precision=precision).array
        diff = np.abs(ct.astype(np.float32) - ref)
        out[f"{device}_{precision}"] = {"s": round(time.perf_counter() - t0, 2), "max_hu": float(diff.max()),
                                        "mean_hu": float(diff.mean())}  # fmt: skip
    z = torch.randn(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    dev = torch.device(device)
    vae = pipe.vae.to(dev).eval()
    with torch.inference_mode():
        full = decode_full(vae, z.to(dev)).cpu()
        tiled = decode_tiled(vae, z.to(dev), max_memory=256 * 2**20, device=dev).cpu()
    out["tiled_vs_full_max_abs"] = float((full - tiled).abs().max())
    return out


def generation(config: str, size: int, steps: int, device: str) -> dict:
    from land.eval.benchmark import run_benchmark

    return {p: run_benchmark(None, config, steps, "dpmpp2m", device, size=size, precision=p)
            for p in ("fp32", "bf16")}  # fmt: skip


def training(patch: int, latent: int, device: str) -> dict:
    import torch
    from bench_train import bench_ldm, bench_vae

    rows = {}
    for name, run in (("vae", lambda: bench_vae(patch, 2, "none", device)),
                      ("ldm", lambda: bench_ldm(latent, 2, True, device))):  # fmt: skip
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        row = run()
        row["s_per_step"] = sorted(row["times"][1:])[len(row["times"][1:]) // 2]
        if device.startswith("cuda"):
            row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        rows[name] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", default="paper", help="architecture for the generation benchmark")
    parser.add_argument("--size", type=int, default=256, help="CT side for the generation benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a dry run of the script)")
    parser.add_argument("--parts", default="parity,generation,training", help="comma-separated parts to run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        report["env"] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "gpu": gpu}
    except Exception:  # noqa: BLE001 - record and go on
        report["env"] = {"error": traceback.format_exc()}
    steps = 3 if args.quick else 25
    parts = (
        ("parity", lambda: parity(args.device, steps)),
        ("generation", lambda: generation(args.config, args.size, steps, args.device)),
        ("training", lambda: training(32 if args.quick else 128, 16 if args.quick else 64, args.device)),
    )
    for name, run in parts:
        if name not in args.parts.split(","):
            continue
        t0 = time.perf_counter()
        try:
            report[name] = run()
        except Exception:  # noqa: BLE001 - one part failing must not lose the others
            report[name] = {"error": traceback.format_exc()}
        report[name + "_wall_s"] = round(time.perf_counter() - t0, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        print(f"{name}: {report[name + '_wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
