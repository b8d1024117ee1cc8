"""CLI commands ``land sample-set`` and ``land evaluate``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ..interface.contract import (
    SampleSetOptions,
    add_option_arguments,
    options_from_namespace,
    parse_memory,
)


def _sample_set(args: argparse.Namespace) -> int:
    from ..cli import cancel_on_signals, model_dir_or_default
    from ..imaging.atomic import preflight_outputs
    from ..interface.events import Reporter
    from .sample_set import run_sample_set

    opts = options_from_namespace(SampleSetOptions, args).validate()
    model_dir = model_dir_or_default(opts.model)
    preflight_outputs({"--model": model_dir, "--masks": opts.masks}, folders={"--out": opts.out})
    reporter = Reporter(opts.progress)
    reporter.show_warnings()
    cancel = cancel_on_signals()

    def on_sample(event: dict[str, Any]) -> None:
        reporter.close()
        if opts.progress == "json":  # the set's own progress: stage "sample", step = samples done
            reporter({**event, "stage": "sample", "step": event["sample"] + 1})
        elif opts.progress == "bar":
            what = "exists, skipped" if event["skipped"] else f"wrote in {event['seconds']} s"
            print(
                f"[{event['sample'] + 1}/{event['total']}] {event['out']} ({what})",
                file=sys.stderr,
                flush=True,
            )

    try:
        summary = run_sample_set(
            model_dir,
            opts.out,
            opts.n,
            opts.masks,
            steps=opts.steps,
            sampler=opts.sampler,
            seed=opts.seed,
            device=opts.device,
            mode=opts.mode,
            max_memory=parse_memory(opts.max_memory) if opts.max_memory else None,
            progress=reporter if opts.progress != "none" else None,
            on_sample=on_sample,
            cancel=cancel,
            guidance=opts.guidance,
            guidance_mode=opts.guidance_mode,
            precision=opts.precision,
        )
    finally:
        reporter.close()
    if opts.progress == "json":
        reporter.done(**summary)
    else:
        print(
            f"rank {summary['rank']}/{summary['world']}: {summary['written']} written, {summary['skipped']} "
            f"already there, of {summary['jobs']} samples for this rank in {opts.out}"
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..imaging.atomic import preflight_outputs
    from .report import EvalOptions, evaluate, ms_ssim_text

    preflight_outputs(
        {"--real": args.real, "--generated": args.generated, "--masks": args.masks,
         "--feature-weights": args.feature_weights},
        folders={"--out": args.out, "--cache": args.cache},
    )  # fmt: skip
    argv = ["land", "evaluate", "--real", args.real, "--generated", args.generated]
    for flag, value in (
        ("--masks", args.masks),
        ("--feature-weights", args.feature_weights),
        ("--cache", args.cache),
        ("--size", args.size),
        ("--ms-ssim-pairs", args.ms_ssim_pairs),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if args.ms_ssim_kernel != 7:
        argv += ["--ms-ssim-kernel", str(args.ms_ssim_kernel)]
    if args.no_fid:
        argv.append("--no-fid")
    argv += ["--intensity-protocol", args.intensity_protocol]
    argv += ["--seed", str(args.seed), "--device", args.device, "--out", args.out]
    opts = EvalOptions(
        real=Path(args.real),
        generated=Path(args.generated),
        out=Path(args.out),
        masks=Path(args.masks) if args.masks else None,
        feature_weights=Path(args.feature_weights) if args.feature_weights else None,
        no_fid=args.no_fid,
        cache_dir=Path(args.cache) if args.cache else None,
        size=args.size,
        ms_ssim_pairs=args.ms_ssim_pairs,
        ms_ssim_kernel=args.ms_ssim_kernel,
        seed=args.seed,
        device=_device(args.device),
        montage=args.montage,
        intensity_protocol=args.intensity_protocol,
        command=shlex.join(argv),
    )
    report = evaluate(opts, log=(lambda _m: None) if args.quiet else _stderr)
    if args.json:
        print(
            json.dumps(
                {k: v for k, v in report.items() if k not in ("fidelity", "fidelity_real")}, default=str
            )
        )
    else:
        fid, ms = report["fid"], report["ms_ssim"]
        print(
            f"FID {fid['fid']:.6g} (x10^3: {fid['fid_x1e3']:.4g})"
            if fid["available"]
            else f"FID unavailable: {fid['reason']}"
        )
        print(ms_ssim_text(ms) if ms["available"] else f"MS-SSIM unavailable: {ms['reason']}")
        drawn = f"{len(report['figures'])} figures" if report["figures"] else "no figures"
        print(f"wrote {Path(args.out) / 'report.md'}, report.json and {drawn}")
        if "figures_not_drawn" in report:
            print(f"note: {report['figures_not_drawn']}", file=sys.stderr)
    return 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _device(device: str) -> str:
    from ..pipeline import resolve_device

    return str(resolve_device(device))


def register(sub: argparse._SubParsersAction, command) -> None:
    """Add ``land sample-set`` and ``land evaluate``."""
    from .sets import INTENSITY_PROTOCOLS

    p = sub.add_parser(
        "sample-set", help="generate many CTs (one NIfTI per sample; resumable; torchrun-aware)"
    )
    add_option_arguments(p, SampleSetOptions)  # one argument per option field (land.interface.contract)
    command("sample-set")(_sample_set)

    p = sub.add_parser("evaluate", help="FID, MS-SSIM, memory and mask fidelity of generated vs real CT")
    p.add_argument("--real", required=True, help="real CTs: a folder dataset or a folder of image files")
    p.add_argument("--generated", required=True, help="generated CTs (e.g. land sample-set output)")
    p.add_argument("--masks", help="the mask dataset the samples were made from (enables fidelity)")
    p.add_argument("--feature-weights", help="MedicalNet resnet_50_23dataset.pth (default: search the cache)")
    p.add_argument("--no-fid", action="store_true", help="skip FID")
    p.add_argument("--cache", help="folder for cached set statistics (default ~/.cache/land/eval)")
    p.add_argument(
        "--intensity-protocol",
        choices=INTENSITY_PROTOCOLS,
        default=INTENSITY_PROTOCOLS[0],
        help="HU -> [0, 1] scaling of every volume before FID features and MS-SSIM: wdm = WDM-3D's (clip HU "
        "to [-1000, the volume's 99.9th percentile], min-max per volume; default, the paper's protocol); "
        "fixed-window = HU [-1000, 1000] -> [0, 1] (older LAND reports; FIDs not comparable)",
    )
    p.add_argument(
        "--size", type=int, help="resize volumes to SIZE^3 for FID and MS-SSIM (default: as stored)"
    )
    p.add_argument("--ms-ssim-pairs", type=int, help="random subset of this many pairs (default: all pairs)")
    p.add_argument("--ms-ssim-kernel", type=int, default=7, help="MS-SSIM kernel (7 = protocol; needs 112^3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the MS-SSIM pair subset")
    p.add_argument("--device", default="auto", help="device for the feature network and MS-SSIM")
    p.add_argument("--montage", type=int, default=3, help="generated samples shown in montage.png")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--out", required=True, help="report folder")
    command("evaluate")(_evaluate)
