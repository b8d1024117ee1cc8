"""``land sample-set``: many synthetic CTs, one NIfTI file per sample, resumable, split over torchrun ranks.

Sample ``i`` uses seed ``seed + i`` and, with a mask dataset, the masks of case ``i mod (number of cases)``;
it is written to ``sample_<i>[_<case>]_seed<s>.nii.gz`` with a JSON sidecar holding its provenance (model,
sampler, steps, seed, mask case, generation time, peak memory). A sample whose image and sidecar both exist
is skipped (writes are atomic, so a finished pair is complete).
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..imaging.io import sidecar_path
from ..interface.contract import DEFAULT_PRECISION, DEFAULT_SAMPLER
from ..interface.errors import Cancelled, InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SampleJob:
    """One sample to generate: its index, seed, mask case (None: unconditional) and output file."""

    index: int
    seed: int
    case: str | None
    out: Path

    def done(self) -> bool:
        """True when the image and its sidecar (written last) both exist."""
        return self.out.is_file() and sidecar_path(self.out).is_file()


def plan_jobs(n: int, out_dir: str | Path, seed: int = 0, cases: list[str] | None = None) -> list[SampleJob]:
    """The ``n`` samples of a set (see the module docstring)."""
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    if cases is not None and not cases:
        raise InputError("the mask dataset lists no cases")
    out = Path(out_dir)
    jobs = []
    for i in range(n):
        case = cases[i % len(cases)] if cases else None
        tag = f"_{_UNSAFE.sub('_', case)}" if case else ""
        jobs.append(SampleJob(i, seed + i, case, out / f"sample_{i:04d}{tag}_seed{seed + i}.nii.gz"))
    return jobs


def run_sample_set(
    model_dir: str | Path,
    out_dir: str | Path,
    n: int,
    masks_dir: str | Path | None = None,
    *,
    steps: int | None = None,
    sampler: str = DEFAULT_SAMPLER,
    seed: int = 0,
    device: str = "auto",
    mode: str | None = None,
    max_memory: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
    cancel=None,
    rank: int | None = None,
    world: int | None = None,
    guidance: float | None = None,
    guidance_mode: str | None = None,
    precision: str = DEFAULT_PRECISION,
) -> dict[str, Any]:
    """Generate this rank's share of the set; returns ``{"written", "skipped", "jobs", "rank", "world"}``.

    ``progress`` gets the pipeline's step events, ``on_sample`` one event per sample
    (``{"sample": i, "total": n, "out": path, "skipped": bool, "seconds": s}``). ``guidance`` /
    ``guidance_mode``: classifier-free guidance (default: the model's recommended); ``precision``: as
    :meth:`LANDPipeline.generate`.
    """
    import torch

    from ..data.folder import load_case, read_manifest
    from ..imaging.io import write_volume
    from ..interface.sharding import rank_and_world, rank_share
    from ..pipeline import LANDPipeline, resolve_device
    from .benchmark import peak_rss_bytes

    if rank is None or world is None:
        rank, world = rank_and_world()
    files = {c.name: c for c in read_manifest(masks_dir)} if masks_dir is not None else None
    jobs = plan_jobs(n, out_dir, seed, list(files) if files is not None else None)
    mine = rank_share(jobs, rank, world)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = [j for j in mine if not j.done()]
    summary = {
        "jobs": len(mine),
        "skipped": len(mine) - len(todo),
        "written": 0,
        "rank": rank,
        "world": world,
    }
    for job in mine:
        if job.done() and on_sample is not None:
            on_sample({"sample": job.index, "total": n, "out": str(job.out), "skipped": True})
    if not todo:
        return summary
    pipe = LANDPipeline.from_pretrained(model_dir)
    if not pipe.config.trained:
        warnings.warn(
            f"model {pipe.config.name} is UNTRAINED (random weights): the samples are noise", stacklevel=2
        )
    dev = resolve_device(device)
    for job in todo:
        masks = load_case(files[job.case], image=False).masks if files is not None and job.case else None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        try:
            ct = pipe.generate(
                masks,
                mode=mode,
                steps=steps,
                sampler=sampler,
                seed=job.seed,
                device=dev,
                progress=progress,
                cancel=cancel,
                max_memory=max_memory,
                guidance=guidance,
                guidance_mode=guidance_mode,
                precision=precision,
            )
        except KeyboardInterrupt:
            raise Cancelled("sample-set cancelled; run the same command again to resume") from None
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else peak_rss_bytes()
        meta = dict(ct.metadata)
        meta.update(
            {
                "sample_index": str(job.index),
                "case": job.case or "",
                "generation_s": f"{seconds:.2f}",
                "peak_memory_gb": f"{peak / 2**30:.3f}",
                "peak_memory_kind": "cuda_max_memory_allocated" if dev.type == "cuda" else "process_peak_rss",
                "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            }
        )
        write_volume(job.out, ct, meta)
        summary["written"] += 1
        if on_sample is not None:
            on_sample(
                {
                    "sample": job.index,
                    "total": n,
                    "out": str(job.out),
                    "skipped": False,
                    "seconds": round(seconds, 2),
                }
            )
    return summary
