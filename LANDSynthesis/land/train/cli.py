"""Training sub-commands of ``land``: ``check-dataset``, ``train-vae``, ``train-ldm``, ``train-pipeline``.

Registered by ``land.cli`` through ``register(subparsers, command)``. All three run under ``torchrun`` too
(``python -m torch.distributed.run --nproc_per_node N -m land train-ldm ...``): DDP, rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder (manifest.csv + one folder per case)")
    p.add_argument("--config", required=True, help="training config: paper, small, tiny or a JSON file")
    p.add_argument("--out", required=True, help="output folder: checkpoint, progress.jsonl, model directory")
    p.add_argument("--max-steps", type=_positive_int, help="train up to this step (default: the config's)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (exactly)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: one GPU per rank)")
    p.add_argument(
        "--progress",
        choices=["bar", "json", "none"],
        default="bar",
        help="console progress; json prints the progress.jsonl lines to stdout",
    )


def _refuse_overwrite(args: argparse.Namespace, *extra: str) -> None:
    """The shared refusal (land.imaging.atomic) for a trainer: --out must not be or lie in any of its
    inputs."""
    from ..imaging.atomic import preflight_outputs

    names = ("data", "config", "init_from", "perceptual_weights", "vae", *extra)
    inputs = {"--" + n.replace("_", "-"): getattr(args, n, None) for n in names}
    if not os.path.isfile(str(args.config)):
        inputs["--config"] = None  # a built-in config's name, not a file
    preflight_outputs(inputs, folders={"--out": args.out, "--cache-dir": getattr(args, "cache_dir", None)})


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def register(subparsers: Any, command: Callable) -> None:
    p = subparsers.add_parser("check-dataset", help="validate a training dataset folder (exit 2 on problems)")
    p.add_argument("data", metavar="DIR", help="dataset folder with manifest.csv")
    p.add_argument("--config", help="also check each case's grid against this training config")
    p.add_argument("--quick", action="store_true", help="headers and files only (do not read the masks)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    command("check-dataset")(cmd_check_dataset)

    p = subparsers.add_parser("train-vae", help="train the VAE; OUT becomes a model dir for train-ldm --vae")
    _common(p)
    p.add_argument("--perceptual-weights", help="local MedicalNet weights file (sets vae.perceptual.weights)")
    p.add_argument("--init-from", help="start from this model directory's VAE weights (sets vae.init_from)")
    command("train-vae")(cmd_train_vae)

    p = subparsers.add_parser("train-ldm", help="train the denoising U-Net on VAE latents")
    _common(p)
    p.add_argument("--vae", required=True, help="model directory with the VAE (e.g. the OUT of train-vae)")
    p.add_argument("--cache-dir", help="latent cache folder (default OUT/latent_cache)")
    p.add_argument("--no-latent-cache", action="store_true", help="encode cases at every use instead")
    p.add_argument(
        "--init-from",
        help="start from this model directory's U-Net weights (sets ldm.init_from; fine-tuning)",
    )
    command("train-ldm")(cmd_train_ldm)

    from ..interface.contract import add_option_arguments
    from .pipeline_run import STAGES, TrainingOptions

    p = subparsers.add_parser(
        "train-pipeline",
        help="run the training stages (prepare, vae, ldm, sample, evaluate) as land child processes; "
        "finished stages are skipped, interrupted training resumes with --resume",
    )
    add_option_arguments(p, TrainingOptions)
    p.add_argument(
        "--stage", default="all", help=f"all, one of {', '.join(STAGES)}, or a comma-separated list"
    )
    p.add_argument("--resume", action="store_true", help="continue interrupted training from its checkpoints")
    p.add_argument("--python", help="Python for the stage processes (default: this one)")
    p.add_argument("--quiet", action="store_true", help="only stage summaries, not the stages' output")
    p.add_argument(
        "--progress",
        choices=["text", "json", "none"],
        default="text",
        help="text: the stages' output on stdout; json: progress, warning, error and done events on stdout "
        "(land.interface.events; the stages' output goes to stderr); none: only the summary",
    )
    command("train-pipeline")(cmd_train_pipeline)
    p = subparsers.add_parser(
        "snapshot",
        help="a generating model directory from the latest checkpoints of running fine-tunes (U-Net and VAE)",
    )
    p.add_argument("--unet", required=True, help="train-ldm run folder (its checkpoint's EMA U-Net)")
    p.add_argument("--vae", required=True, help="train-vae run folder (its checkpoint's VAE) or a model")
    p.add_argument("--latents-from", help="model whose VAE encoded the U-Net's training latents (default: "
                   "the run's --vae)")  # fmt: skip
    p.add_argument("--out", required=True, help="model directory to write")
    command("snapshot")(cmd_snapshot)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from ..imaging.atomic import preflight_outputs
    from .snapshot import snapshot_model

    preflight_outputs({"--unet": args.unet, "--vae": args.vae, "--latents-from": args.latents_from},
                      folders={"--out": args.out})  # fmt: skip
    latents = Path(args.latents_from) if args.latents_from else None
    out = snapshot_model(Path(args.unet), Path(args.vae), Path(args.out), latents)
    print(f"wrote model directory {out}")
    return 0


def cmd_check_dataset(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset

    grid = spacing = None
    if args.config:
        from .config import load_config

        cfg = load_config(args.config)
        grid, spacing = cfg.data.grid_size, cfg.data.spacing
    report = check_dataset(args.data, grid, spacing, deep=not args.quick)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.format_text())
    return 0 if report.ok else 2


def cmd_train_vae(args: argparse.Namespace) -> int:
    from ..interface.errors import InputError
    from .config import load_config, with_overrides
    from .vae_trainer import train_vae

    _refuse_overwrite(args)
    cfg = load_config(args.config, {"vae": {"init_from": args.init_from}})
    if args.perceptual_weights:
        if cfg.vae.perceptual.network == "none":
            raise InputError(
                f"--perceptual-weights was given but config {cfg.source} has vae.perceptual.network 'none'; "
                "set the network (e.g. medicalnet_resnet50) in a config file, or drop --perceptual-weights"
            )
        cfg = with_overrides(cfg, "vae", **{"perceptual.weights": args.perceptual_weights})
    out = train_vae(
        cfg,
        args.data,
        args.out,
        max_steps=args.max_steps,
        resume=args.resume,
        device=args.device,
        progress=args.progress,
    )
    if args.progress != "json" and _is_main_rank():
        print(f"wrote VAE model directory {out} (U-Net untrained; next: land train-ldm --vae {out})")
    return 0


def cmd_train_ldm(args: argparse.Namespace) -> int:
    from .config import load_config, with_overrides
    from .ldm_trainer import train_ldm

    _refuse_overwrite(args)
    cfg = load_config(args.config)
    if args.no_latent_cache:
        cfg = with_overrides(cfg, "ldm", cache_latents=False)
    if args.init_from:
        cfg = with_overrides(cfg, "ldm", init_from=args.init_from)
    out = train_ldm(
        cfg,
        args.data,
        args.vae,
        args.out,
        max_steps=args.max_steps,
        resume=args.resume,
        device=args.device,
        progress=args.progress,
        cache_dir=args.cache_dir,
    )
    if args.progress != "json" and _is_main_rank():
        print(f"wrote trained model directory {out}")
    return 0


def cmd_train_pipeline(args: argparse.Namespace) -> int:
    """Run the stages; exit 0 when all are done (or were), 130 when stopped, else the failed stage's code
    (2 for a missing earlier stage or unusable data, the stage's own land exit code otherwise)."""
    import signal
    import sys

    from ..interface.contract import EXIT_BUG, EXIT_CANCELLED, EXIT_OK
    from ..interface.events import DoneEvent, ErrorEvent, ProgressEvent, write_event
    from .pipeline import PipelineRunner
    from .pipeline_run import PENDING, TrainingOptions, TrainingRun, parse_stages

    stages = parse_stages(args.stage)
    options = TrainingOptions.from_namespace(args)
    _refuse_overwrite(args, "lung_weights", "feature_weights")
    json_events = args.progress == "json"
    log_stream = sys.stderr if json_events else sys.stdout
    shown: dict[str, tuple[Any, ...]] = {}

    quiet = args.quiet or args.progress == "none"

    def on_log(stage: str, stream: str, line: str) -> None:
        if not quiet or stream in ("info", "error"):
            print(f"[{stage}] {line}", file=log_stream, flush=True)

    def on_update(run: TrainingRun) -> None:  # one progress event per change of a stage's state or step
        for number, stage in enumerate(run.stages, 1):
            status = run.statuses[stage]
            key = (status.state, status.step, status.total)
            if status.state == PENDING or shown.get(stage) == key:
                continue
            shown[stage] = key
            details = {"state": status.state, "stage_number": number, "stages": len(run.stages)}
            write_event(ProgressEvent(stage, status.step, status.total, status.eta_seconds, details))

    runner = PipelineRunner(args.python, on_log=on_log, on_update=on_update if json_events else None)

    def on_signal(signum: int, _frame: Any) -> None:
        if runner.current is not None and runner.current.stop_requested:
            raise KeyboardInterrupt  # a second signal: kill the stage's process tree now
        print(f"signal {signum}: stopping the current stage", file=sys.stderr, flush=True)
        runner.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    run = runner.run(options, stages, resume=args.resume)
    if json_events:
        on_update(run)
    print(run.summary(), file=log_stream, flush=True)
    model = run.model_directory
    if run.state == TrainingRun.SUCCEEDED:
        if model is not None:
            print(f"model directory: {model}", file=log_stream, flush=True)
        if json_events:
            write_event(
                DoneEvent(True, {"out": str(run.layout.out), "model": None if model is None else str(model)})
            )
        return EXIT_OK
    code = EXIT_CANCELLED if run.state == TrainingRun.STOPPED else run.error_code or EXIT_BUG
    if json_events:
        write_event(ErrorEvent(run.error or "training stopped (run again with --resume to continue)", code))
    return code
