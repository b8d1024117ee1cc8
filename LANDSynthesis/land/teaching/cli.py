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

from ..interface.contract import TeachingSetOptions, add_option_arguments, options_from_namespace
from ..interface.errors import Cancelled, LANDError
from ..interface.events import Reporter


class _Progress:
    """Case-level progress (tqdm bar or JSON lines) with the pipeline's per-step events inside."""

    def __init__(self, style: str) -> None:
        self.style = style
        self.reporter = Reporter(style)
        self.inner = Reporter("none")
        self.bar = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event["stage"] != "case":
            self.inner(event)
            return
        self.inner = Reporter("json" if self.style == "json" else "none")  # fresh ETA per case
        if self.style == "json":
            self.reporter({**event, "eta_s": event.get("eta_s")})  # the plan's estimate (None at first)
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
    from ..cli import cancel_on_signals, model_dir_or_default
    from ..imaging.atomic import preflight_outputs
    from ..interface.contract import parse_diameters, parse_textures
    from ..pipeline import LANDPipeline
    from .build import make_teaching_set, refuse_foreign_folder
    from .plan import TeachingSettings

    try:
        import pydicom  # noqa: F401
    except ModuleNotFoundError:
        raise LANDError("land teaching-set writes DICOM with pydicom, which is not installed; fix: "
                        "pip install 'pydicom>=3'") from None  # fmt: skip
    opts = options_from_namespace(TeachingSetOptions, args).validate()
    progress = _Progress(opts.progress)
    progress.reporter.show_warnings()
    settings = TeachingSettings(
        cases=opts.cases,
        nodule_rate=opts.nodule_rate,
        textures=parse_textures(opts.textures),
        diameters=parse_diameters(opts.diameters),
        seed=opts.seed,
        lung_masks=str(Path(opts.lung_masks).resolve()) if opts.lung_masks else None,
        pair_rate=float(opts.pair_rate or 0.0),
    )
    settings.validate()
    model_dir = model_dir_or_default(opts.model)
    preflight_outputs({"--model": model_dir, "--lung-masks": opts.lung_masks}, folders={"--out": opts.out})
    refuse_foreign_folder(opts.out)
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
        result = make_teaching_set(opts.out, settings, pipe, steps=opts.steps, burn_in=opts.burn_in,
                                   device=opts.device, progress=progress, cancel=cancel,
                                   guidance=opts.guidance, guidance_mode=opts.guidance_mode,
                                   precision=opts.precision)  # fmt: skip
    except (KeyboardInterrupt, Cancelled):
        raise Cancelled("teaching set cancelled (finished cases are kept; run again to resume)") from None
    finally:
        progress.close()
    progress.reporter.done(
        out=str(result.out), complete=result.complete,
        index=str(result.index) if result.index else None,
        answers=str(result.answers) if result.answers else None,
        generated=len(result.generated), skipped=len(result.skipped), pairs=len(result.pairs or {}),
    )  # fmt: skip
    if opts.progress != "json":
        took = time.monotonic() - t0
        print(
            f"generated {len(result.generated)} case(s), skipped {len(result.skipped)} finished, {took:.0f} s"
        )
        if result.complete:
            print(f"wrote SYNTHETIC teaching set {result.out}: DICOM for trainees in {result.out / 'dicom'}, "
                  f"instructor sheet {result.index}, answer key {result.answers}")  # fmt: skip
            if result.pairs:
                print(f"{len(result.pairs)} matched pair(s), the same CT with and without one nodule, in "
                      f"random case order: {result.out / 'key' / 'pairs.csv'}")  # fmt: skip
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
    from .score import DEFAULT_MARGIN_MM

    p = sub.add_parser(
        "teaching-set", help="SYNTHETIC teaching cases as DICOM, with answer key and instructor sheet"
    )
    add_option_arguments(p, TeachingSetOptions)  # one argument per option field (land.interface.contract)
    command("teaching-set")(cmd_teaching_set)

    p = sub.add_parser("teaching-score", help="score a trainee's marks against a teaching set's key")
    p.add_argument("--answers", required=True, help="teaching set folder (or its key/ or answers.json)")
    p.add_argument("--reads", required=True, help="CSV with columns case,x,y,z (patient LPS mm)")
    p.add_argument("--margin-mm", type=float, default=DEFAULT_MARGIN_MM,
                   help=f"hit if within nodule radius + this (default {DEFAULT_MARGIN_MM:g} mm)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    command("teaching-score")(cmd_teaching_score)
