"""Headless LAND training: the LANDTraining module's stages with the same Logic, then exit.

    Slicer --no-main-window --python-script LANDTraining/Scripts/train.py -- \
        --data DIR --out DIR --stage prepare|vae|ldm|sample|evaluate|all [--config C] [--resume]

Also runs under plain Python with the ``slicer-core`` wheel (``python LANDTraining/Scripts/train.py ...``).
``--stage`` takes one stage, ``all``, or a comma-separated list. Exit codes: 0 all stages done (or already
done), 1 a stage failed, 2 bad arguments, 130 stopped (SIGINT/SIGTERM stops the stage's process tree; run
again with --resume).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]  # LANDTraining/ (repository) or qt-scripted-modules/
for folder in (MODULE_DIR, MODULE_DIR.parent / "LANDSynthesis"):
    if (folder / "LANDTrainingLib").is_dir() or (folder / "LANDSynthesisLib").is_dir():
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    from land.contract import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, sampler_help, steps_help

    p = argparse.ArgumentParser(
        prog="train.py",
        description="Run LAND's training stages (prepare, vae, ldm, sample, evaluate) as in the LANDTraining "
        "module. Each stage is a 'land' child process; finished stages are skipped.",
    )
    p.add_argument("--data", required=True, help="LIDC-IDRI DICOM root, or a prepared dataset (manifest.csv)")
    p.add_argument("--out", required=True, help="output folder of the run (dataset/, vae/, ldm/, ...)")
    p.add_argument("--stage", default="all", help="prepare, vae, ldm, sample, evaluate, all, or a comma list")
    p.add_argument("--config", default="small", help="paper, small, demo, tiny or a JSON file")
    p.add_argument("--resume", action="store_true", help="continue interrupted training from its checkpoints")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=1, help="prepare: parallel processes")
    p.add_argument("--limit", type=int, help="prepare: only the first N scans")
    p.add_argument("--lung-weights", help="prepare: lungmask R231 weights file")
    p.add_argument("--perceptual-weights", help="vae: MedicalNet weights file for the perceptual loss")
    p.add_argument("--vae-steps", type=int, help="vae: train up to this step (default: the config's)")
    p.add_argument("--ldm-steps", type=int, help="ldm: train up to this step (default: the config's)")
    p.add_argument("--samples", type=int, default=8, help="sample: number of CTs to generate")
    p.add_argument(
        "--sample-steps", type=int, default=DEFAULT_STEPS[DEFAULT_SAMPLER], help="sample: " + steps_help()
    )
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER, help="sample: " + sampler_help())
    p.add_argument("--seed", type=int, default=0, help="sample: first seed")
    p.add_argument("--unconditional", action="store_true", help="sample: without masks")
    p.add_argument("--feature-weights", help="evaluate: MedicalNet weights file for FID features")
    p.add_argument("--python", help="Python for the child processes (default: PythonSlicer / this Python)")
    p.add_argument("--quiet", action="store_true", help="only stage summaries, not the children's output")
    return p


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str], dict]:
    """(arguments, stages in run order, TrainingParameters fields); argparse exits 2 on bad arguments."""
    from LANDTrainingLib.pipeline import TrainingInputError, parseStages

    argv = list(argv)
    if argv and argv[0] == "--":  # Slicer --python-script FILE -- ARGS
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        stages = parseStages(args.stage)
    except TrainingInputError as e:
        parser.error(str(e))
    parameters = {
        "data": args.data,
        "out": args.out,
        "config": args.config,
        "device": args.device,
        "workers": args.workers,
        "limit": args.limit,
        "lungWeights": args.lung_weights,
        "perceptualWeights": args.perceptual_weights,
        "vaeSteps": args.vae_steps,
        "ldmSteps": args.ldm_steps,
        "samples": args.samples,
        "sampleSteps": args.sample_steps,
        "sampler": args.sampler,
        "seed": args.seed,
        "unconditional": args.unconditional,
        "featureWeights": args.feature_weights,
    }
    return args, stages, parameters


def ensure_scene() -> None:
    """Plain Python with slicer-core has no scene: give the Logic one (loss tables and charts go there)."""
    import slicer

    if getattr(slicer, "mrmlScene", None) is None:
        slicer.mrmlScene = slicer.vtkMRMLScene()


def main(argv: Sequence[str]) -> int:
    try:
        args, stages, parameters = parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or bad arguments (2)
        return int(e.code or 0)
    from LANDTrainingLib.logic import LANDTrainingLogic
    from LANDTrainingLib.pipeline import TrainingError, TrainingRun

    ensure_scene()
    logic = LANDTrainingLogic()
    if args.python:
        logic.pythonExecutable = args.python

    def on_log(stage: str, stream: str, line: str) -> None:
        if not args.quiet or stream in ("info", "error"):
            print(f"[{stage}] {line}", flush=True)

    def on_signal(signum, frame) -> None:
        print(f"signal {signum}: stopping the current stage", file=sys.stderr, flush=True)
        logic.stop()

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread
            pass
    try:
        run = logic.run(parameters, stages, resume=args.resume, onLog=on_log)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(run.summary(), flush=True)
    if run.state == TrainingRun.SUCCEEDED:
        model = run.modelDirectory
        if model is not None:
            print(f"model directory: {model}", flush=True)
        return EXIT_OK
    return EXIT_STOPPED if run.state == TrainingRun.STOPPED else EXIT_FAILED


def _exit(code: int) -> None:
    try:
        import slicer
    except ImportError:
        slicer = None
    if slicer is not None and hasattr(slicer, "app"):
        slicer.util.exit(code)  # leave the Slicer application with this status
    else:
        sys.exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))
