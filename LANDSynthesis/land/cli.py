"""The ``land`` command line (also ``python -m land`` and ``PythonSlicer -m land``).

Exit codes: 0 ok; 2 bad input; 3 model problem; 130 cancelled (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import codecs
import importlib
import importlib.util
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import resources
from .interface.contract import (
    EXIT_INPUT,
    WARNING_UNTRAINED_MODEL,
    GenerateOptions,
    add_option_arguments,
    options_from_namespace,
    sampler_help,
    steps_help,
)
from .interface.errors import Cancelled, InputError, LANDError, ModelError
from .interface.events import ErrorEvent, Reporter, write_event

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}
# Modules that add sub-commands: each has ``register(subparsers, command)`` which adds its parsers and
# registers its handlers with the ``command(name)`` decorator.
COMMAND_MODULES: tuple[str, ...] = (
    "land.eval.benchmark",
    "land.world.phantom",
    "land.imaging.lungseg",
    "land.train.cli",
    "land.data.prepare_cli",
    "land.eval.cli",
    "land.teaching.cli",
    "land.world.demo",
)


def model_dir_or_default(model: str | Path | None) -> Path:
    """``--model``, or the bundled demo model: the one rule of every command that takes ``--model``
    (ModelError with the fix when this installation has no demo model)."""
    if model:
        return Path(model)
    if not resources.has_demo_model():
        raise ModelError(
            f"no trained default model is bundled with this installation ({resources.demo_model_dir()} "
            "has no model.json); pass --model DIR with a LAND model directory (train one with land "
            "train-ldm, or make an untrained test model with land init-model --config small --out DIR)"
        )
    return resources.demo_model_dir()


def parse_memory(text: str) -> int:
    """'2G', '1536M', '500000000' -> bytes; an argparse ``type`` (land.interface.contract.parse_memory's
    rule)."""
    from .interface.contract import parse_memory as parse

    try:
        return parse(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def stop_on_signals() -> dict[int, Any] | None:
    """From the start of every command until it installs its own handling (:func:`cancel_on_signals`, the
    trainers'), SIGINT and SIGTERM stop it with :class:`KeyboardInterrupt`: exit 130 with one line, also
    while imports run, masks are read or a model is loaded (SIGTERM's default ended the process with 143 and
    no message). Returns the previous handlers (None off the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}


def cancel_on_signals() -> threading.Event:
    """An event set by the first SIGINT/SIGTERM (a clean cancel); a second one raises KeyboardInterrupt."""
    cancel = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return cancel


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


# ---------------------------------------------------------------------------------------------- commands
@command("init-model")
def cmd_init_model(args: argparse.Namespace) -> int:
    from .imaging.atomic import preflight_outputs
    from .pipeline import LANDPipeline

    preflight_outputs({}, folders={"--out": args.out})
    pipe = LANDPipeline.from_config(args.config, seed=args.seed)
    if args.name:
        pipe.config.name = args.name
    pipe.config.provenance = {"created_by": "land init-model", "config": args.config, "seed": args.seed}
    pipe.config.card = "Random weights (untrained): for tests, benchmarks and as the start of training only."
    out = pipe.save_pretrained(args.out)
    counts = pipe.parameter_counts()
    print(f"wrote untrained {args.config} model to {out}")
    print(f"parameters: U-Net {counts['unet']:,}, VAE {counts['vae']:,}")
    return 0


def _load_masks(args: GenerateOptions):
    from .imaging.io import read_masks
    from .imaging.maskset import parse_texture_overrides

    overrides = parse_texture_overrides(args.texture) if args.texture else None
    if args.mask is None and args.nodules is None:
        if args.mode == "none":
            if overrides:
                raise InputError("--texture was given with --mode none; drop --texture or the mode")
            return None
        demo = resources.demo_masks_path()
        if not demo.is_file():
            raise InputError(
                f"no --mask given and the bundled demo masks ({demo}) are missing; pass --mask, or "
                "--mode none for an unconditional CT"
            )
        print(f"note: no --mask given; using the bundled demo masks {demo}", file=sys.stderr)
        return read_masks(demo, None, overrides)
    if args.mask is None:
        raise InputError(
            "--nodules needs --mask (the lung mask image, or a .seg.nrrd with lungs and nodules)"
        )
    return read_masks(args.mask, args.nodules, overrides)


@command("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    from .imaging.atomic import preflight_outputs
    from .imaging.io import sidecar_path, write_volume
    from .pipeline import LANDPipeline

    opts = options_from_namespace(GenerateOptions, args).validate()
    reporter = Reporter(opts.progress)
    reporter.show_warnings()
    out = Path(opts.out)
    if not out.name.endswith((".nii.gz", ".nii", ".nrrd")):
        raise InputError(f"--out {out} must end in .nii.gz, .nii or .nrrd")
    model_dir = model_dir_or_default(opts.model)
    mask = opts.mask if opts.mask is not None or opts.nodules is not None else resources.demo_masks_path()
    sidecar = sidecar_path(out) if not out.name.endswith(".nrrd") else None
    pair_out = Path(opts.pair_out()) if opts.pair is not None else None
    pair_sidecar = sidecar_path(pair_out) if pair_out is not None and sidecar is not None else None
    preflight_outputs(
        {"--mask": mask, "--nodules": opts.nodules, "--model": model_dir},
        files={
            "--out": out,
            "--out's JSON sidecar": sidecar,
            "--pair's output": pair_out,
            "--pair's JSON sidecar": pair_sidecar,
        },  # fmt: skip
    )

    masks = _load_masks(opts)
    pipe = LANDPipeline.from_pretrained(model_dir)
    if not pipe.config.trained:
        reporter.warning(
            f"model {pipe.config.name} is UNTRAINED (random weights): the output is noise",
            WARNING_UNTRAINED_MODEL,
        )

    cancel = cancel_on_signals()
    pair = None
    try:
        if opts.pair is not None:
            from .sampling.matched_pairs import generate_pair

            ct, pair_ct, figures = generate_pair(pipe, masks, opts.pair, progress=reporter, cancel=cancel,
                                                 **opts.pipeline_arguments())  # fmt: skip
            pair = (pair_out, pair_ct, figures)
        else:
            ct = pipe.generate(masks, progress=reporter, cancel=cancel, **opts.pipeline_arguments())
    except KeyboardInterrupt:
        from .interface.errors import Cancelled

        raise Cancelled("generation cancelled") from None
    finally:
        reporter.close()
    if pair is not None:  # the pair first: a complete --out means a complete pair
        write_volume(pair[0], pair[1], pair[1].metadata, compress=opts.compress, cancel=cancel)
    write_volume(
        out, ct, ct.metadata, compress=opts.compress, cancel=cancel
    )  # a signal until the rename: 130
    if cancel.is_set():
        print(f"note: interrupted after the CT was written; {out} is complete", file=sys.stderr, flush=True)
    reporter.done(out=str(out))
    if opts.progress != "json":
        print(f"wrote SYNTHETIC CT {out} ({ct.metadata['description']})")
        if pair is not None:
            f = pair[2]
            print(f"wrote its matched pair {pair[0]} without nodule {f['nodule']}: identical beyond "
                  f"{f['margin_mm']:g} mm of it (decoded, before blending, they differed there by at most "
                  f"{f['max_abs_hu_beyond_margin_decoded']:g} HU)")  # fmt: skip
    return 0


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from .interface.contract import guidance_text
    from .models.model_dir import ModelConfig, read_model_json
    from .pipeline import LANDPipeline

    model_dir = model_dir_or_default(args.model)
    meta = read_model_json(model_dir)
    cfg = ModelConfig.from_json(meta)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    counts = LANDPipeline.from_config(cfg).parameter_counts()
    lines = [
        f"model       {cfg.name} ({model_dir})",
        f"trained     {'yes' if cfg.trained else 'NO (random weights)'}",
        f"grid        {'x'.join(map(str, cfg.grid_size))} voxels at {'x'.join(map(str, cfg.spacing))} mm",
        f"latent      {cfg.unet.latent_channels}x{'x'.join(map(str, cfg.latent_size))}",
        f"mode        {cfg.mode}",
        f"guidance    {guidance_text(**cfg.guidance)} (recommended; --guidance/--guidance-mode override it)",
        f"intensity   HU [{cfg.intensity['hu_min']:g}, {cfg.intensity['hu_max']:g}] <-> [0, 1]",
        f"parameters  U-Net {counts['unet']:,}, VAE {counts['vae']:,}",
        f"U-Net       channels {list(cfg.unet.channels)}, attention {list(cfg.unet.attention_levels)}, "
        f"mask injection {cfg.unet.cond_injection} ({cfg.unet.cond_features})",
        f"VAE         channels {list(cfg.vae.channels)}, latent scale {cfg.latent_scale:g}, "
        f"mask decoder {cfg.vae.mask_decoder}"
        + (" (the mask enters every decoder level)" if cfg.vae.mask_decoder != "none" else " (plain)"),
    ]
    for key, value in cfg.provenance.items():
        lines.append(f"provenance  {key}: {value}")
    for name, sha in meta.get("weights", {}).items():
        lines.append(f"sha256      {name} {sha}")
    print("\n".join(lines))
    if cfg.card:
        print("\n" + cfg.card)
    return 0


STUDIO_INSTALL = 'pip install -e ".[studio]"'


@command("studio")
def cmd_studio(args: argparse.Namespace) -> int:
    """LAND Studio lives outside the engine (LANDStudio/land_studio in a checkout): imported only here."""
    checkout = Path(__file__).resolve().parents[2] / "LANDStudio"
    if importlib.util.find_spec("land_studio") is None and (checkout / "land_studio").is_dir():
        sys.path.insert(0, str(checkout))
    missing = ["land_studio"] if importlib.util.find_spec("land_studio") is None else []
    if not missing:
        missing = importlib.import_module("land_studio").missing_requirements()
    if missing:
        print(f"error: LAND Studio needs {', '.join(missing)}: run {STUDIO_INSTALL} in a LAND checkout",
              file=sys.stderr, flush=True)  # fmt: skip
        return EXIT_INPUT
    return importlib.import_module("land_studio").main(args)


# ---------------------------------------------------------------------------------------------- parser
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout (examples, exit codes) and shows each option's default where it has one (not
    for a switch such as --no-compress, whose "default: True" would read as if it were on)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and "default" not in text
            and not isinstance(action, (argparse._VersionAction, argparse._StoreFalseAction))
        ):
            text += " (default: %(default)s)"
        return text


GENERATE_EXAMPLES = """examples:
  land generate --out ct.nii.gz                        # the bundled model and its demo masks
  land generate --mask case.seg.nrrd --out ct.nrrd     # masks painted in 3D Slicer
  land generate --mask lung.nii.gz --nodules nodules.nii.gz --texture 1=5,2=1 --seed 7 --out ct.nii.gz
  land generate --model MODEL_DIR --mask case.seg.nrrd --guidance 2 --guidance-mode nodules --out ct.nii.gz
"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line under ``--progress json`` also ends with the JSON error line."""

    def error(self, message: str) -> NoReturn:
        argv = sys.argv[1:] if _ARGV is None else _ARGV
        pairs = zip(argv, argv[1:], strict=False)
        if "--progress=json" in argv or any(a == "--progress" and b == "json" for a, b in pairs):
            self.print_usage(sys.stderr)
            print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
            write_event(ErrorEvent(message, EXIT_INPUT))
            raise SystemExit(EXIT_INPUT)
        super().error(message)


_ARGV: list[str] | None = None  # the argv main() parses (None: sys.argv)


COMMON_HELP = {  # options several commands share, for those that declare them without a help text
    "sampler": sampler_help(),
    "steps": steps_help(),
    "device": "auto (CUDA if available, else CPU), cpu, cuda or cuda:N",
    "progress": "bar: a progress bar on stderr; json: one JSON object per line on stdout; none",
    "decode": "tiled: exact, in bounded memory; full: the plain decoder in one piece",
}


def build_parser() -> argparse.ArgumentParser:

    parser = ArgumentParser(prog="land", description="LAND: synthetic 3D chest CT from lung/nodule masks")
    parser.add_argument("--version", action="version", version=f"land {__import__('land').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init-model", help="write a model directory with random weights (trained: false)")
    p.add_argument("--config", choices=["paper", "small"], required=True, help="architecture size")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    p.add_argument("--name", help="model name stored in model.json")

    p = sub.add_parser(
        "generate",
        help="synthesize a CT from masks (or unconditionally)",
        description="Synthesize a 3D chest CT (int16 HU, marked SYNTHETIC) from a lung mask and nodule masks "
        "with a LAND model. Without --mask the bundled demo masks are used (two lungs, three nodules of "
        "textures 1, 3 and 5).",
        epilog=GENERATE_EXAMPLES,
    )
    add_option_arguments(p, GenerateOptions)  # one argument per option field (land.interface.contract)

    p = sub.add_parser("info", help="print a model's card")
    p.add_argument("--model", help="model directory (default: the bundled demo model)")
    p.add_argument("--json", action="store_true", help="print model.json")

    p = sub.add_parser(
        "studio",
        help="LAND Studio: paint masks and generate in a web browser (needs the studio extra)",
        description="Serve LAND Studio, the LANDSynthesis panel in a browser (trame-slicer): load a CT or "
        'the demo masks, paint lungs and nodules, set textures, Generate. Needs pip install -e ".[studio]".',
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument("--token", help="access code the page asks for before anything else")
    p.add_argument("--ct", help="a CT (file or DICOM folder) to open at start")
    p.add_argument("--demo", action="store_true", help="open the bundled demo masks at start")
    p.add_argument("--work-dir", help="folder for uploads, jobs and results (default: a new temporary one)")
    p.add_argument("--max-upload-mb", type=int, default=512, help="largest upload accepted")
    p.add_argument("--verbose", action="store_true", help="log the studio's actions")
    p.add_argument("--teaching-set", metavar="DIR",
                   help="run a teaching session on this teaching set (land teaching-set's folder): trainees "
                   "read and mark its cases, each in their own page; answers go to --work-dir "
                   "(default DIR/studio). A new or empty DIR: the instructor makes the set from the "
                   "instructor page")
    p.add_argument("--instructor-token", help="token of the instructor's page (default: a new one, printed)")
    p.add_argument("--max-sessions", type=int, default=8,
                   help="most pages at once (a page per browser, or per trainee; each its own process)")
    p.add_argument("--keep-jobs", action="store_true",
                   help="keep each successful generation's folder (the engine's inputs and command.json) in "
                   "--work-dir")
    p.add_argument("--gpu-slots", type=int, default=0,
                   help="generation jobs at once (default: one per GPU torch sees, one on a CPU)")
    p.add_argument("--margin-mm", type=float, default=5.0,
                   help="grading: a mark hits within nodule radius + this")
    # the launcher's child, one per trainee (not for users)
    p.add_argument("--trainee", help=argparse.SUPPRESS)
    p.add_argument("--secret-file", help=argparse.SUPPRESS)
    p.add_argument("--idle-exit", type=int, default=600, help=argparse.SUPPRESS)
    p.add_argument("--page", action="store_true", help=argparse.SUPPRESS)  # one browser's page (a child)
    p.add_argument("--queue-dir", metavar="DIR",
                   help="the class's generation queue folder (default WORK/queue); give two land studio "
                   "servers the same one to share it")

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if not (e.name and (module_name + ".").startswith(e.name + ".")):
                raise
            continue  # an optional part of the engine that this installation does not have
        module.register(sub, command)
    from .interface.contract import exit_codes_text

    summaries = {a.dest: a.help for a in sub._choices_actions}
    for name, sp in sub.choices.items():  # every command: a description, defaults shown, the exit codes
        sp.description = sp.description or (summaries.get(name) or "").capitalize() or None
        for action in sp._actions:
            if not action.help and action.dest in COMMON_HELP:
                action.help = COMMON_HELP[action.dest]
        sp.formatter_class = HelpFormatter
        sp.epilog = ((sp.epilog or "") + "\n" + exit_codes_text()).strip() + "\n"
        sp.prog = f"land {name}"
    return parser


def _escape_unencodable(err: UnicodeError) -> tuple[str, int]:
    """Console error handler: undecodable bytes back as bytes, other characters as ``\\uXXXX``."""
    try:
        return codecs.lookup_error("surrogateescape")(err)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(err)


codecs.register_error("land-console", _escape_unencodable)


def tolerant_console() -> None:
    """Keep printing (``±``, ``–``, non-ASCII paths) on a console that is not UTF-8, e.g. a C locale."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="land-console")


BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a reader that went away


def main(argv: Sequence[str] | None = None) -> int:
    tolerant_console()
    previous = stop_on_signals()
    args = argparse.Namespace()
    try:
        try:
            parser = build_parser()
            global _ARGV
            _ARGV = None if argv is None else list(argv)
            args = parser.parse_args(argv)
            return _COMMANDS[args.command](args)
        except PermissionError as e:  # a file or folder this user may not read (writes say so themselves)
            raise InputError(
                f"cannot open {e.filename}: permission denied; fix: make it readable for you, or run as a "
                "user who may read it"
            ) from None
    except LANDError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if getattr(args, "progress", None) == "json":
            write_event(ErrorEvent(str(e), e.exit_code))
        return e.exit_code
    except KeyboardInterrupt as e:  # a signal before the command's own handling, or a second one after it
        by = f" by {e.args[0]}" if e.args and str(e.args[0]).startswith("SIG") else ""
        message = (
            f"cancelled{by}; outputs being written were discarded (checkpoints already written are intact)"
        )
        print(f"error: {message}", file=sys.stderr, flush=True)
        if getattr(args, "progress", None) == "json":
            write_event(ErrorEvent(message, Cancelled.exit_code))
        return Cancelled.exit_code
    except BrokenPipeError:
        # whoever read our output went away (e.g. `| head -3`): stop quietly, as a SIGPIPE would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_EXIT
    finally:
        for sig, handler in (previous or {}).items():  # an in-process caller (tests) gets its own back
            if handler is not None:
                signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
