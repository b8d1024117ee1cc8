"""Headless LAND training from Slicer: forwards its arguments to the engine's ``land train-pipeline``.

    Slicer --no-main-window --python-script LANDTraining/Scripts/train.py -- \\
        --data DIR --out DIR --stage prepare|vae|ldm|sample|evaluate|all [--config C] [--resume]

Also runs under plain Python (``python LANDTraining/Scripts/train.py ...``). Every option is
``land train-pipeline``'s (``--help`` lists them); in the Slicer application the stages run with
``PythonSlicer``. Exit codes are the engine's: 0 all stages done (or already done), 2 bad arguments or a
stage that cannot run (the message says which earlier stage to run), a failed stage's own exit code
(3 model, 1 bug), 130 stopped (SIGINT/SIGTERM stops the stage's process tree; run again with --resume).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]  # LANDTraining/ (repository) or qt-scripted-modules/
for folder in (MODULE_DIR, MODULE_DIR.parent / "LANDSynthesis"):
    if (folder / "land").is_dir() and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def in_slicer_application() -> bool:
    try:
        import slicer
    except ImportError:
        return False
    return hasattr(slicer, "app")


def land_arguments(argv: Sequence[str], in_slicer: bool) -> list[str]:
    """``land`` arguments for this script's ``argv`` (Slicer's ``--`` separator dropped; in the Slicer
    application the stages run with PythonSlicer unless ``--python`` says otherwise)."""
    from land.interface.childproc import python_executable

    argv = list(argv)
    if argv and argv[0] == "--":  # Slicer --python-script FILE -- ARGS
        argv = argv[1:]
    if in_slicer and "--python" not in argv:
        argv += ["--python", python_executable(True)]
    return ["train-pipeline", *argv]


def main(argv: Sequence[str]) -> int:
    from land.cli import main as land_main

    try:
        return land_main(land_arguments(argv, in_slicer_application()))
    except SystemExit as e:  # argparse: --help (0) or bad arguments (2)
        return int(e.code or 0)


def _exit(code: int) -> None:
    if in_slicer_application():
        import slicer

        slicer.util.exit(code)  # leave the Slicer application with this status
    else:
        sys.exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))
