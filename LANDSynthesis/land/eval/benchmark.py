"""``land benchmark``: time per step, time per volume and peak memory of generation on this machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from typing import Any

import torch


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)


def run_benchmark(
    model_dir: str | None,
    config: str | None,
    steps: int | None,
    sampler: str,
    device: str,
    seed: int = 0,
    max_memory: int | None = None,
    decode: str = "tiled",
    size: int | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Generate one unconditional volume and report timings and peak memory.

    ``size`` overrides the model's grid (``size``^3 voxels at the model's spacing), e.g. to time 128^3 on a
    256^3 model; it must be divisible by the networks' total down-sampling.
    """
    from ..pipeline import LANDPipeline, resolve_device, resolve_precision
    from ..sampling.diffusion import default_steps

    steps = default_steps(sampler) if steps is None else steps

    pipe = (
        LANDPipeline.from_pretrained(model_dir) if model_dir else LANDPipeline.from_config(config or "small")
    )
    if size is not None:
        from ..interface.errors import InputError

        c = pipe.config.vae.compression * 2 ** (len(pipe.config.unet.channels) - 1)
        if size < c or size % c:
            raise InputError(f"--size {size} must be a positive multiple of {c} for this model")
        pipe.config.grid_size = (int(size),) * 3
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    marks: dict[str, float] = {}

    def on_progress(event: dict[str, Any]) -> None:
        now = time.perf_counter()
        marks.setdefault(f"{event['stage']}_first", now)
        marks[f"{event['stage']}_last"] = now

    start = time.perf_counter()
    pipe.generate(None, steps=steps, sampler=sampler, seed=seed, device=dev, progress=on_progress,
                  max_memory=max_memory, decode=decode, precision=precision)  # fmt: skip
    total = time.perf_counter() - start
    denoise = marks["denoise_last"] - start
    # the first step includes start-up; steps after it are the steady state
    per_step = (marks["denoise_last"] - marks["denoise_first"]) / (steps - 1) if steps > 1 else denoise
    result: dict[str, Any] = {
        "model": pipe.model_id,
        "grid": list(pipe.config.grid_size),
        "latent": list(pipe.config.latent_size),
        "sampler": sampler,
        "steps": steps,
        "decode": decode,
        "precision": precision,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "s_per_step": round(per_step, 3),
        "denoise_s": round(denoise, 2),
        "decode_s": round(total - denoise, 2),
        "total_s": round(total, 2),
        "peak_rss_gb": round(peak_rss_bytes() / 2**30, 3),
    }
    if dev.type == "cuda":
        result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
    return result


def register(sub: argparse._SubParsersAction, command) -> None:
    from ..cli import parse_memory
    from ..interface.contract import (
        DEFAULT_SAMPLER,
        MAX_GRID_SIDE,
        add_precision_argument,
        count_argument,
        sampler_help,
        steps_help,
    )
    from ..sampling.diffusion import SAMPLERS

    p = sub.add_parser("benchmark", help="time and peak memory of generating one volume on this machine")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model directory (default: a random-weights --config model)")
    src.add_argument("--config", choices=["paper", "small"], default=None, help="untrained architecture")
    p.add_argument("--size", type=count_argument("--size", 16, MAX_GRID_SIDE),
                   help="grid size S (S^3 voxels; default: the model's grid)")  # fmt: skip
    p.add_argument("--steps", type=int, help=steps_help())
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER, help=sampler_help())
    p.add_argument("--device", default="auto")
    p.add_argument("--decode", choices=["tiled", "full"], default="tiled")
    p.add_argument("--max-memory", type=parse_memory, help="decode memory budget, e.g. 2G")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_precision_argument(p)

    @command("benchmark")
    def cmd_benchmark(args: argparse.Namespace) -> int:
        r = run_benchmark(args.model, args.config, args.steps, args.sampler, args.device,
                          max_memory=args.max_memory, decode=args.decode, size=args.size,
                          precision=args.precision)  # fmt: skip
        if args.json:
            print(json.dumps(r))
            return 0
        print(f"{r['model']}: grid {'x'.join(map(str, r['grid']))}, latent {'x'.join(map(str, r['latent']))}")
        print(f"device {r['device']}, {r['threads']} threads ({r['cpu_count']} CPUs), torch {r['torch']}")
        print(f"{r['sampler']} {r['steps']} steps ({r['precision']}): {r['s_per_step']} s/step, "
              f"denoise {r['denoise_s']} s, {r['decode']} decode {r['decode_s']} s, "
              f"total {r['total_s']} s")  # fmt: skip
        print(
            f"peak RSS {r['peak_rss_gb']} GB"
            + (f", peak GPU {r['peak_gpu_gb']} GB" if "peak_gpu_gb" in r else "")
        )
        return 0
