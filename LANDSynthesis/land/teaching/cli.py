"""``land teaching-set`` and ``land teaching-score``.

``--progress json`` prints the same objects as ``land generate`` (``{"stage": "denoise"|"decode", "step",
"total", "eta_s"}`` per step, ``{"warning": ...}``, ``{"error": ..., "exit_code": ...}``), plus
``{"stage": "case", "step": i, "total": n, "eta_s": s, "case": id}`` before each case, and ends with
``{"done": true, "out": DIR, "complete": bool, "index": PATH|null, "answers": PATH|null, ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import Cancelled, InputError, LANDError, ModelError


class _Progress:
    """Case-level progress (tqdm bar or JSON lines) with the pipeline's per-step events inside."""

    def __init__(self, style: str) -> None:
        from ..cli import Reporter

        self.style = style
        self.reporter = Reporter(style)
        self.inner = Reporter("none")
        self.bar = None

    def __call__(self, event: dict[str, Any]) -> None:
        from ..cli import Reporter

        if event["stage"] != "case":
            self.inner(event)
            return
        self.inner = Reporter("json" if self.style == "json" else "none")  # fresh ETA per case
        if self.style == "json":
            eta = event.get("eta_s")
            self.reporter.emit({**event, "eta_s": None if eta is None else round(eta, 1)})
        elif self.style == "bar":
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=event["total"], desc="cases", unit="case", file=sys.stderr)
            self.bar.set_postfix_str(event["case"])
            self.bar.update(event["step"] - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_teaching_set(args: argparse.Namespace) -> int:
    from ..cli import cancel_on_signals, default_model_dir
    from ..pipeline import LANDPipeline
    from .build import make_teaching_set
    from .plan import TeachingSettings, parse_diameters, parse_textures

    try:
        import pydicom  # noqa: F401
    except ModuleNotFoundError:
        raise LANDError("land teaching-set writes DICOM with pydicom, which is not installed; fix: "
                        "pip install 'pydicom>=3'") from None  # fmt: skip
    progress = _Progress(args.progress)
    progress.reporter.show_warnings()
    settings = TeachingSettings(
        cases=args.cases,
        nodule_rate=args.nodule_rate,
        textures=parse_textures(args.textures),
        diameters=parse_diameters(args.diameters),
        seed=args.seed,
        lung_masks=str(Path(args.lung_masks).resolve()) if args.lung_masks else None,
    )
    settings.validate()
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    model_dir = Path(args.model) if args.model else default_model_dir()
    if args.model is None and not (model_dir / "model.json").is_file():
        raise ModelError(
            "no trained default model is bundled with this installation yet; pass --model DIR with a LAND "
            "model directory (train one with land train-ldm, or make an untrained test model with "
            "land init-model --config small --out DIR)"
        )
    pipe = LANDPipeline.from_pretrained(model_dir)
    if not pipe.config.trained:
        progress.reporter.warning(
            f"model {pipe.config.name} is UNTRAINED (random weights): the output is noise"
        )
    if "nodule" not in pipe.config.mode:
        progress.reporter.warning(
            f"model {pipe.config.name} is unconditional: the planned nodules will not show"
        )
    cancel = cancel_on_signals()
    t0 = time.monotonic()
    try:
        result = make_teaching_set(args.out, settings, pipe, steps=args.steps, burn_in=not args.no_burn_in,
                                   device=args.device, progress=progress, cancel=cancel,
                                   guidance=args.guidance, guidance_mode=args.guidance_mode,
                                   precision=args.precision)  # fmt: skip
    except (KeyboardInterrupt, Cancelled):
        raise Cancelled("teaching set cancelled (finished cases are kept; run again to resume)") from None
    finally:
        progress.close()
    progress.reporter.emit({
        "done": True, "out": str(result.out), "complete": result.complete,
        "index": str(result.index) if result.index else None,
        "answers": str(result.answers) if result.answers else None,
        "generated": len(result.generated), "skipped": len(result.skipped),
    })  # fmt: skip
    if args.progress != "json":
        took = time.monotonic() - t0
        print(
            f"generated {len(result.generated)} case(s), skipped {len(result.skipped)} finished, {took:.0f} s"
        )
        if result.complete:
            print(f"wrote SYNTHETIC teaching set {result.out}: DICOM for trainees in {result.out / 'dicom'}, "
                  f"instructor sheet {result.index}, answer key {result.answers}")  # fmt: skip
        else:
            print(
                f"this rank's cases are done in {result.out}; the key is written when all cases are finished"
            )
    return 0


def cmd_teaching_score(args: argparse.Namespace) -> int:
    from .score import format_report, score_files

    result = score_files(args.answers, args.reads, args.margin_mm)
    print(json.dumps(result, indent=1) if args.json else format_report(result))
    return 0


def register(sub: argparse._SubParsersAction, command) -> None:
    """Add ``land teaching-set`` and ``land teaching-score`` to the CLI."""
    from ..contract import DEFAULT_SAMPLER, DEFAULT_STEPS, add_precision_argument
    from ..guidance import add_guidance_arguments
    from .score import DEFAULT_MARGIN_MM

    p = sub.add_parser(
        "teaching-set", help="SYNTHETIC teaching cases as DICOM, with answer key and instructor sheet"
    )
    p.add_argument("--model", help="model directory (default: the bundled demo model)")
    p.add_argument("--cases", type=int, required=True, help="number of cases")
    p.add_argument("--out", required=True, help="output folder (rerun with the same settings to resume)")
    p.add_argument("--nodule-rate", type=float, default=0.7, help="share of cases with nodules (default 0.7)")
    p.add_argument("--textures", default="1,3,5", help="nodule textures to draw from, 1..5 (default 1,3,5)")
    p.add_argument("--diameters", default="4-25", help="nodule diameter range in mm (default 4-25)")
    p.add_argument("--steps", type=int, help=f"sampling steps of the {DEFAULT_SAMPLER} sampler "
                   f"(default {DEFAULT_STEPS[DEFAULT_SAMPLER]})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the whole set (plan and generation)")
    p.add_argument("--lung-masks", help="folder of lung masks to use instead of phantom lungs")
    p.add_argument("--no-burn-in", action="store_true", help="do not burn 'SYNTHETIC' into the pixels")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: one GPU per rank)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    add_guidance_arguments(p)
    add_precision_argument(p)
    command("teaching-set")(cmd_teaching_set)

    p = sub.add_parser("teaching-score", help="score a trainee's marks against a teaching set's key")
    p.add_argument("--answers", required=True, help="teaching set folder (or its key/ or answers.json)")
    p.add_argument("--reads", required=True, help="CSV with columns case,x,y,z (patient LPS mm)")
    p.add_argument("--margin-mm", type=float, default=DEFAULT_MARGIN_MM,
                   help=f"hit if within nodule radius + this (default {DEFAULT_MARGIN_MM:g} mm)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    command("teaching-score")(cmd_teaching_score)
