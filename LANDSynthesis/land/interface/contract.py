"""The engine <-> Slicer contract: option rules both sides use, importable without torch or SimpleITK.

The Slicer modules import these instead of re-declaring them (so one change reaches both sides).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from .errors import InputError

MODES: tuple[str, ...] = ("none", "nodule", "nodule+lung", "nodule+lung+texture")  # conditioning modes
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmpp2m", "unipc")
DEFAULT_STEPS: dict[str, int] = {"ddpm": 1000, "ddim": 50, "dpmpp2m": 25, "unipc": 12}
# unipc at 12 steps (warped log-SNR spacing from t = 999 to 14): closer than dpmpp2m at 25 both to the exact
# ODE solution (analytic test) and to 200-step references of the demo model on every measure (10 seeds;
# README, Benchmarks)
DEFAULT_SAMPLER = "unipc"
SAMPLER_TITLES: dict[str, str] = {  # one line per sampler, in the order the Slicer panel lists them
    "unipc": "UniPC, 3rd-order predictor-corrector: best at few steps",
    "dpmpp2m": "DPM-Solver++(2M): good at 25 steps",
    "ddim": "DDIM: deterministic, first order",
    "ddpm": "DDPM: ancestral (random at every step), 1000 steps as in training",
}


def sampler_help() -> str:
    """``--sampler`` help text (every command that samples)."""
    return (
        "; ".join(f"{name}: {title}" for name, title in SAMPLER_TITLES.items())
        + f" (default: {DEFAULT_SAMPLER})"
    )


def steps_help() -> str:
    """``--steps`` help text: the default step count of each sampler."""
    return "sampling steps (default: " + ", ".join(f"{s} {n}" for s, n in DEFAULT_STEPS.items()) + ")"


# The exit-code contract of every `land` command (the Slicer modules read it from --progress json's
# {"error": ..., "exit_code": N} line or the process status)
EXIT_OK, EXIT_BUG, EXIT_INPUT, EXIT_MODEL, EXIT_CANCELLED, EXIT_BROKEN_PIPE = 0, 1, 2, 3, 130, 141
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_BUG: "a bug in LAND (a Python traceback; please report it)",
    EXIT_INPUT: "bad input, an output that would overwrite an input or cannot be written (a folder not "
    "writable, a read-only file system, a file where a folder belongs: refused before any work), an output "
    "whose write failed (the message names the problem and the fix; nothing is left at the output path)",
    EXIT_MODEL: "a model problem (missing, corrupt or non-finite weights, incompatible model.json) or "
    "training that diverged (the last good checkpoint is kept)",
    EXIT_CANCELLED: "cancelled by Ctrl-C / SIGINT / SIGTERM (training first checkpoints the current step); a "
    "signal up to the moment an output is renamed into place, the final write included, leaves nothing "
    "there; one after it ends the command normally with a note that the output is complete",
    EXIT_BROKEN_PIPE: "the reader of the output went away (e.g. | head); stopped quietly",
}


def format_duration(seconds: float | None) -> str:
    """A duration as people read it (``42 s``, ``3 min 05 s``, ``2 h 07 min``; ``unknown`` for None)."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s:02d} s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min"


def exit_codes_text() -> str:
    """The exit codes as help text (``land COMMAND --help``)."""
    import textwrap

    lines = ["exit codes:"]
    for code, text in EXIT_CODES.items():
        lines += textwrap.wrap(text, 96, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
    return "\n".join(lines)


# Stable codes of the warnings the engine reports (--progress json: {"warning": text, "code": code}); the
# Slicer modules act on the code, never on the text
WARNING_NODULE_OUTSIDE_LUNG = "nodule_outside_lung"
WARNING_FIELD_OF_VIEW = "field_of_view"
WARNING_SEGMENTATION = "segmentation"
WARNING_UNTRAINED_MODEL = "untrained_model"
WARNING_TRAINING_NOTICE = "training_notice"  # a trainer's notice (resumed from the previous checkpoint, ...)
WARNING_OTHER = "warning"

PROGRESS_STYLES: tuple[str, ...] = ("bar", "json", "none")  # --progress of every long-running command
T = TypeVar("T")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes unsigned 64-bit seeds
GUIDANCE_MODES: tuple[str, ...] = ("none", "full", "nodules")
MAX_GUIDANCE = 20.0
GUIDANCE_DEFAULTS = {"scale": 1.0, "mode": "none"}  # model.json / ldm.guidance without a recommendation


PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
# how lungs meet the model's field of view (land.imaging.grid.fit_factor)
FITS: tuple[str, ...] = ("crop", "scale")
FIT_HELP = (
    "crop: the model's grid at its own voxel size, centred on the lungs (a chest larger than the grid is cut "
    "off); scale: larger voxels when the lungs fill more than 85%% of the grid, so the whole chest fits "
    "(resampled into the grid and back)"
)
# bf16/fp16: the U-Net under autocast; the VAE always decodes in float32. auto: bf16 on a CPU that computes
# bfloat16 natively (1.8x faster steps; the CT differs from fp32 by 0.5 HU on average, README), else fp32
# (on CUDA fp32 until bf16 is measured there, issue 16). Provenance records what auto resolved to.
DEFAULT_PRECISION = "auto"


def check_choice(value: object, choices: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``choices``, else :class:`InputError` naming ``what`` and the choices."""
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return str(value)


def check_precision(precision: object) -> str:
    """A precision name from :data:`PRECISIONS`, or :class:`InputError`."""
    return check_choice(precision, PRECISIONS, "precision")


def check_fit(fit: object) -> str:
    """A field-of-view rule from :data:`FITS`, or :class:`InputError`."""
    return check_choice(fit, FITS, "--fit")


def add_precision_argument(parser) -> None:
    """``--precision`` for every command that generates (an argparse parser)."""
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION, help=PRECISION_HELP)


def check_guidance(scale: object, mode: object) -> tuple[float, str]:
    """Validate a guidance scale and mode; return them as ``(float, str)`` or raise :class:`InputError`."""
    if mode not in GUIDANCE_MODES:
        raise InputError(f"unknown guidance mode {mode!r}; choose one of: {', '.join(GUIDANCE_MODES)}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(float(scale)):
        raise InputError(
            f"guidance {scale!r} is not a number; use a value from 0 to {MAX_GUIDANCE:g} (1 = none)"
        )
    if not 0.0 <= float(scale) <= MAX_GUIDANCE:
        raise InputError(
            f"guidance {float(scale):g} is out of range; use a value from 0 to {MAX_GUIDANCE:g} "
            "(1 = plain conditional sampling, larger = follow the mask more strongly)"
        )
    return float(scale), str(mode)


def is_guided(scale: float, mode: str) -> bool:
    """True when guidance changes the result (mode other than ``none`` and a scale other than 1)."""
    return mode != "none" and float(scale) != 1.0


def parse_guidance(section: object) -> dict[str, float | str]:
    """A ``{"scale": W, "mode": M}`` section (model.json ``guidance``, config ``ldm.guidance``), validated;
    missing keys take :data:`GUIDANCE_DEFAULTS`."""
    if not isinstance(section, dict) or set(section) - set(GUIDANCE_DEFAULTS):
        raise InputError(
            f'guidance must be an object {{"scale": W, "mode": M}} with M one of {", ".join(GUIDANCE_MODES)}'
        )
    scale, mode = check_guidance(section.get("scale", 1.0), section.get("mode", "none"))
    return {"scale": scale, "mode": mode}


def guidance_text(scale: float, mode: str) -> str:
    """``"2 (nodules)"``, or ``"none"`` when guidance changes nothing (provenance, reports, ``land info``)."""
    return f"{float(scale):g} ({mode})" if is_guided(scale, mode) else "none"


def check_seed(seed: object) -> int:
    """Return ``seed`` if it is a whole number 0..MAX_SEED, else raise :class:`InputError` with the range."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= MAX_SEED:
        raise InputError(f"seed {seed!r} is out of range; use a whole number from 0 to {MAX_SEED} (2**64-1)")
    return int(seed)


def check_sampler(sampler: object) -> str:
    """A sampler name from :data:`SAMPLERS`, or :class:`InputError` listing them."""
    return check_choice(sampler, SAMPLERS, "sampler")


def check_mode(mode: object) -> str | None:
    """``None`` (the model's mode) or a conditioning mode from :data:`MODES`, else :class:`InputError`."""
    if mode is not None and mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


DEVICES: tuple[str, ...] = ("auto", "cuda", "cpu")  # and cuda:N


def check_device(device: object) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (lower-cased), else :class:`InputError` (whether a GPU is
    there is checked where the device is used)."""
    text = str(device or "auto").lower()
    if text not in DEVICES and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N (N = GPU index)")
    return text


TEXTURES: tuple[int, ...] = (1, 2, 3, 4, 5)  # nodule texture scores (1 non-solid ... 5 solid)
MAX_DIAMETER_MM = 100.0  # the largest nodule diameter a teaching set may plan


def parse_textures(text: object) -> tuple[int, ...]:
    """``"1,3,5"`` (or a sequence of scores) -> (1, 3, 5), sorted, without repeats; InputError otherwise."""
    items = str(text).replace(" ", "").split(",") if isinstance(text, str) else list(text or ())  # type: ignore[call-overload]
    try:
        values = tuple(sorted({int(str(t)) for t in items if str(t)}))
    except ValueError:
        values = ()
    if not values or any(t not in TEXTURES for t in values):
        raise InputError(f"textures are whole numbers 1..5 separated by commas (e.g. 1,3,5), got {text!r}")
    return values


def parse_diameters(text: object) -> tuple[float, float]:
    """``"4-25"`` -> (4.0, 25.0), ``"8"`` or 8 -> (8.0, 8.0), (4, 25) -> (4.0, 25.0); InputError unless
    0 < min <= max <= :data:`MAX_DIAMETER_MM`."""
    try:
        if isinstance(text, str):
            lo, sep, hi = text.strip().partition("-")
            d = (float(lo), float(hi if sep else lo))
        elif isinstance(text, numbers.Real):
            d = (float(text), float(text))
        else:
            lo, hi = text  # type: ignore[misc]
            d = (float(lo), float(hi))
    except (TypeError, ValueError):
        d = (0.0, 0.0)
    if not 0.0 < d[0] <= d[1] <= MAX_DIAMETER_MM:
        raise InputError(
            f"diameters are a range in mm like 4-25 (0 < min <= max <= {MAX_DIAMETER_MM:g}), got {text!r}"
        )
    return d


# Count-like options have an upper bound: a plan (case ids, seeds, a permutation) is held in memory and the
# work is proportional, so an absurd count is refused at once instead of filling memory or disk for hours.
MAX_TEACHING_CASES = 10_000  # a course needs tens to hundreds; 10,000 cases take days to generate
MAX_SAMPLES = 100_000  # an evaluation set (the protocol uses 1,000)
MAX_PHANTOM_CASES = 100_000
MAX_FIDELITY_CASES = 1_000
MAX_GRID_SIDE = 1024  # voxels per side of a phantom, demo mask set or benchmark grid (1024³: 4 GiB float32)
MAX_WORKERS = 256


def check_count(option: str, value: object, least: int, most: int, fix: str = "") -> int:
    """``value`` as an int when it is a whole number in ``least..most``, else :class:`InputError` naming
    ``option``, the range and ``fix`` (how to do more: e.g. several runs)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not least <= int(value) <= most:
        raise InputError(
            f"{option} {value!r} is out of range: use a whole number from {least:,} to {most:,}"
            + (f"; fix: {fix}" if fix else "")
        )
    return int(value)


def count_argument(option: str, least: int, most: int, fix: str = "") -> Any:
    """An argparse ``type`` for a count option (:func:`check_count`; a bad value exits 2 with usage)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        try:
            return check_count(option, value, least, most, fix)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def check_teaching_cases(cases: object) -> int:
    """A teaching set's number of cases, 1..:data:`MAX_TEACHING_CASES` (:class:`InputError` otherwise)."""
    return check_count(
        "the number of cases --cases", cases, 1, MAX_TEACHING_CASES, "make several sets with different --seed"
    )


def check_steps(steps: object) -> int | None:
    """``None`` (the sampler's default) or a whole number of steps 1..1000, else :class:`InputError`."""
    if steps is None:
        return None
    try:
        return check_count("the step count", steps, 1, 1000, "use fewer steps, or the sampler's default")
    except InputError:
        raise InputError(
            f"invalid step count {steps!r}: use a whole number from 1 to 1000 (or the default)"
        ) from None


def _check_guidance_and_progress(scale: float | None, mode: str | None, progress: str) -> None:
    """The option classes' shared rules: a guidance scale and mode in range (either may be None: the
    model's recommendation fills it in); a known progress style."""
    check_guidance(1.0 if scale is None else scale, mode or "full")
    if progress not in PROGRESS_STYLES:
        raise InputError(f"unknown progress style {progress!r}; choose bar, json or none")


def parse_memory(text: str) -> int:
    """'2G', '1536M', '500000000' -> bytes (:class:`InputError` for anything else)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    try:
        value = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"memory size {text!r} not understood; use e.g. 2G or 1500M")
    return value


# ---------------------------------------------------------------------------------------------- options
def option(
    default: object = None,
    help: str = "",
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    kind: type | None = None,
    metavar: str | None = None,
    action: str | None = None,
    required: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option: :func:`add_option_arguments` builds the
    parser's argument from it, :func:`options_to_argv` writes it back. ``flag`` defaults to ``--field-name``;
    ``action`` ``store_true``/``store_false`` makes a switch (``store_false``: a ``--no-...`` flag)."""
    cli = {"help": help, "flag": flag, "choices": choices, "kind": kind, "metavar": metavar}
    cli.update(action=action, required=required)
    return field(default=default, metadata={"cli": cli})


def _cli_fields(cls_or_obj: object) -> list[tuple[Any, dict[str, Any], str]]:
    return [
        (f, f.metadata["cli"], f.metadata["cli"]["flag"] or "--" + f.name.replace("_", "-"))
        for f in fields(cls_or_obj)  # type: ignore[arg-type]
        if "cli" in f.metadata
    ]


def add_option_arguments(parser: Any, cls: type) -> None:
    """Add one argparse argument per :func:`option` field of the dataclass ``cls`` (dest: the field name)."""
    for f, cli, flag in _cli_fields(cls):
        kwargs: dict[str, Any] = {"dest": f.name, "help": cli["help"]}
        if cli["action"]:
            kwargs["action"] = cli["action"]
        else:
            kwargs["type"] = cli["kind"] or str
            for key in ("choices", "metavar"):
                if cli[key]:
                    kwargs[key] = cli[key]
            if cli["required"]:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default
        parser.add_argument(flag, **kwargs)


def options_from_mapping(
    cls: type[T], options: T | Mapping[str, Any] | None, what: str, error: type[Exception] = InputError
) -> T:
    """``options`` as the dataclass ``cls``: None gives the defaults, an instance is returned as is, a
    mapping must name only fields of ``cls`` (else ``error`` lists the unknown ones, e.g. "unknown training
    option(s): ..." for ``what`` "training option")."""
    if options is None:
        return cls()
    if isinstance(options, cls):
        return options
    unknown = sorted(set(options) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise error(f"unknown {what}(s): {', '.join(unknown)}")
    return cls(**dict(options))  # type: ignore[arg-type]


def options_from_namespace(cls: type[T], args: Any) -> T:
    """The dataclass ``cls`` from parsed arguments (its :func:`option` fields; the others keep defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f, _, _ in _cli_fields(cls)})


def options_to_argv(options: object) -> list[str]:
    """The :func:`option` fields of ``options`` as arguments (defaults left out; the parser's inverse)."""
    argv: list[str] = []
    for f, cli, flag in _cli_fields(options):
        value = getattr(options, f.name)
        if cli["action"] == "store_true":
            argv += [flag] if value else []
        elif cli["action"] == "store_false":
            argv += [] if value else [flag]
        elif value is not None and (cli["required"] or value != f.default):
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


GUIDANCE_HELP = f"classifier-free guidance scale 0..{MAX_GUIDANCE:g} (1 = none; default: the model's)"
GUIDANCE_MODE_HELP = (
    "what guidance contrasts with: nodules (same lungs without nodules), full (no mask), none (default: the "
    "model's recommended)"
)
PRECISION_HELP = (
    "arithmetic of the denoising U-Net: fp32 exact; bf16/fp16 autocast (faster on GPUs and on CPUs with bf16 "
    "support; the CT differs by a few HU, see the README); auto: bf16 on a CPU with native bfloat16, else "
    "fp32; decoding stays fp32"
)


@dataclass
class GenerateOptions:
    """The options of ``land generate``: the command's parser is built from these fields, its handler reads
    them back, and a client (the Slicer module) builds its command line with :meth:`to_argv` after
    :meth:`validate`. ``None`` leaves an option to the engine's default (the model's mode and guidance, the
    sampler's steps)."""

    model: str | None = option(None, "model directory (default: the bundled demo model)")
    mask: str | None = option(
        None,
        "Slicer .seg.nrrd (segments named Lung* are the lungs, every other segment a nodule, texture in its "
        "tag LAND.Texture) or a lung mask image (.nii.gz/.nii/.nrrd/.mha); default: the demo masks",
    )
    nodules: str | None = option(None, "nodule label image (0 none, 1..K nodules), with a lung --mask")
    texture: str | None = option(
        None,
        "texture per nodule label, e.g. 1=5,2=3 (1 non-solid/ground glass .. 3 part-solid .. 5 solid); "
        "overrides the .seg.nrrd tags",
    )
    mode: str | None = option(None, "conditioning mode (default: the model's)", choices=MODES)
    steps: int | None = option(None, steps_help(), kind=int)
    sampler: str = option(DEFAULT_SAMPLER, sampler_help(), choices=SAMPLERS)
    seed: int = option(0, "random seed 0..2**64-1: the same seed, masks and model give the same CT", kind=int)
    device: str = option("auto", "auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    progress: str = option(
        "bar",
        "bar: a progress bar on stderr; json: one JSON object per line on stdout (for programs); none",
        choices=PROGRESS_STYLES,
    )
    strict: bool = option(False, "nodules outside the lungs are an error, not a warning", action="store_true")
    decode: str = option(
        "tiled",
        "tiled: exact, in bounded memory (--max-memory); full: the plain decoder in one piece (needs about "
        "14 GB for 256^3)",
        choices=("tiled", "full"),
    )
    max_memory: str | None = option(None, "memory budget for decoding, e.g. 2G (CPU default 2G)")
    temp_dir: str | None = option(
        None,
        "folder for the decoder's temporary files when a CT does not fit --max-memory (a 256^3 CT needs "
        "about 8 GiB there; default: the system temporary folder, TMPDIR)",
    )
    match_input: bool = option(False, "resample the CT back into the mask's geometry", action="store_true")
    fit: str = option("crop", FIT_HELP, choices=FITS)
    pair: int | None = option(
        None,
        "matched pair: also write the same CT without nodule N (identical beyond a margin around it) as "
        "OUT_without_nodule_N",
        kind=int,
        metavar="N",
    )
    guidance: float | None = option(None, GUIDANCE_HELP, kind=float, metavar="W")
    guidance_mode: str | None = option(None, GUIDANCE_MODE_HELP, choices=GUIDANCE_MODES)
    precision: str = option(DEFAULT_PRECISION, PRECISION_HELP, choices=PRECISIONS)
    compress: bool = option(
        True, "raw NRRD data (faster to load into Slicer)", flag="--no-compress", action="store_false"
    )
    out: str = option(
        "",
        "output file: .nii.gz, .nii (provenance in a .json sidecar) or .nrrd (provenance in the header)",
        required=True,
    )
    extra: list[str] = field(default_factory=list)  # appended as given (expert use; not a parser option)

    def validate(self) -> GenerateOptions:
        """Raise :class:`InputError` naming the first bad option; returns ``self``."""
        if not self.out:
            raise InputError("choose an output file (--out) ending in .nii.gz, .nii or .nrrd")
        check_device(self.device)
        check_sampler(self.sampler)
        check_steps(self.steps)
        check_seed(self.seed)
        check_precision(self.precision)
        check_mode(self.mode)
        check_fit(self.fit)
        if self.pair is not None and (isinstance(self.pair, bool) or self.pair < 1):
            raise InputError(f"--pair takes a nodule label (1, 2, ...), got {self.pair}")
        if self.max_memory is not None:
            parse_memory(self.max_memory)
        if self.temp_dir is not None and not os.path.isdir(self.temp_dir):
            raise InputError(f"--temp-dir {self.temp_dir} is not a folder; create it or choose another")
        _check_guidance_and_progress(self.guidance, self.guidance_mode, self.progress)
        return self

    def pair_out(self) -> str | None:
        """The matched pair's output file (``ct_without_nodule_2.nii.gz`` beside ``ct.nii.gz``), or None."""
        if self.pair is None:
            return None
        name = os.path.basename(self.out)
        ext = next((e for e in (".nii.gz", ".nii", ".nrrd") if name.endswith(e)), "")
        stem = name[: len(name) - len(ext)] if ext else name
        return os.path.join(os.path.dirname(self.out), f"{stem}_without_nodule_{self.pair}{ext}")

    def to_argv(self) -> list[str]:
        """``generate ...``, checked by :meth:`validate` first."""
        self.validate()
        return ["generate", *options_to_argv(self), *[str(a) for a in self.extra]]

    def pipeline_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``LANDPipeline.generate`` these options set (every field but the inputs,
        the model, the output and how progress is shown, which are the command's own)."""
        own = {"model", "mask", "nodules", "texture", "progress", "compress", "out", "extra", "pair"}
        arguments = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in own}
        arguments["max_memory"] = parse_memory(self.max_memory) if self.max_memory else None
        return arguments


@dataclass
class TeachingSetOptions:
    """The options of ``land teaching-set``, its parser built from these fields (see
    :class:`GenerateOptions`): ``textures`` like ``"1,3,5"``, ``diameters`` like ``"4-25"`` (mm); a client's
    ``None`` leaves an option to the command's default."""

    model: str | None = option(None, "model directory (default: the bundled demo model)")
    cases: int = option(0, "number of cases", kind=int, required=True)
    out: str = option("", "output folder (rerun with the same settings to resume)", required=True)
    nodule_rate: float | None = option(0.7, "share of cases with nodules (default 0.7)", kind=float)
    pair_rate: float | None = option(
        0.0,
        "matched pairs: share of the cases with nodules (0..1, default 0) that also get a twin, the same "
        "CT without one of their nodules (identical beyond a margin around it), as an extra case in random "
        "order; the answer key lists the pairs",
        kind=float,
    )
    textures: str | None = option("1,3,5", "nodule textures to draw from, 1..5 (default 1,3,5)")
    diameters: str | None = option("4-25", "nodule diameter range in mm (default 4-25)")
    steps: int | None = option(
        None,
        f"sampling steps of the {DEFAULT_SAMPLER} sampler (default {DEFAULT_STEPS[DEFAULT_SAMPLER]})",
        kind=int,
    )
    seed: int | None = option(0, "seed of the whole set (plan and generation)", kind=int)
    lung_masks: str | None = option(None, "folder of lung masks to use instead of phantom lungs")
    burn_in: bool = option(
        True, "do not burn 'SYNTHETIC' into the pixels", flag="--no-burn-in", action="store_false"
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N (torchrun: one GPU per rank)")
    guidance: float | None = option(None, GUIDANCE_HELP, kind=float, metavar="W")
    guidance_mode: str | None = option(None, GUIDANCE_MODE_HELP, choices=GUIDANCE_MODES)
    precision: str = option(DEFAULT_PRECISION, PRECISION_HELP, choices=PRECISIONS)
    progress: str = option("bar", "bar, json (one JSON object per line, for programs) or none",
                           choices=PROGRESS_STYLES)  # fmt: skip
    extra: list[str] = field(default_factory=list)  # appended as given (expert use; not a parser option)

    def validate(self) -> TeachingSetOptions:
        """Raise :class:`InputError` naming the first bad option; returns ``self``."""
        check_teaching_cases(self.cases)
        if self.nodule_rate is not None and not 0.0 <= float(self.nodule_rate) <= 1.0:
            raise InputError(
                f"the nodule rate (--nodule-rate) is a share of cases, 0..1, got {self.nodule_rate!r}"
            )
        if self.pair_rate is not None and not 0.0 <= float(self.pair_rate) <= 1.0:
            raise InputError(
                "the pair rate (--pair-rate) is a share of the cases with nodules, 0..1, got "
                f"{self.pair_rate!r}"
            )
        if self.textures is not None:
            parse_textures(self.textures)
        if self.diameters is not None:
            parse_diameters(self.diameters)
        check_steps(self.steps)
        if self.seed is not None:
            check_seed(self.seed)
        check_device(self.device)
        check_precision(self.precision)
        _check_guidance_and_progress(self.guidance, self.guidance_mode, self.progress)
        return self

    def to_argv(self) -> list[str]:
        """``teaching-set ...``, checked by :meth:`validate` first."""
        self.validate()
        return ["teaching-set", *options_to_argv(self), *[str(a) for a in self.extra]]


@dataclass
class SampleSetOptions:
    """The options of ``land sample-set``, its parser built from these fields (see :class:`GenerateOptions`):
    ``masks`` a mask dataset whose cases are reused in turn, or ``unconditional``."""

    model: str | None = option(None, "model directory (default: the bundled demo model)")
    masks: str | None = option(
        None, "folder dataset of masks (manifest.csv + case folders, e.g. land phantoms)"
    )
    unconditional: bool = option(False, "no masks", action="store_true")
    n: int = option(0, "number of samples (mask cases are reused in turn)", kind=int, required=True)
    out: str = option("", "output folder", required=True)
    steps: int | None = option(None, steps_help(), kind=int)
    sampler: str = option(DEFAULT_SAMPLER, sampler_help(), choices=SAMPLERS)
    seed: int = option(0, "sample i uses seed + i", kind=int)
    mode: str | None = option(None, "conditioning mode (default: the model's)", choices=MODES)
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    max_memory: str | None = option(None, "decode memory budget, e.g. 2G")
    progress: str = option("bar", "bar, json (one JSON object per line, for programs) or none",
                           choices=PROGRESS_STYLES)  # fmt: skip
    guidance: float | None = option(None, GUIDANCE_HELP, kind=float, metavar="W")
    guidance_mode: str | None = option(None, GUIDANCE_MODE_HELP, choices=GUIDANCE_MODES)
    precision: str = option(DEFAULT_PRECISION, PRECISION_HELP, choices=PRECISIONS)

    def validate(self) -> SampleSetOptions:
        """Raise :class:`InputError` naming the first bad option; returns ``self``."""
        check_count(
            "the number of samples --n",
            self.n,
            1,
            MAX_SAMPLES,
            "split the set into several --out folders with other --seed",
        )
        if (self.masks is None) == (not self.unconditional):
            raise InputError("give a mask dataset (--masks DIR) or --unconditional, not both and not neither")
        check_device(self.device)
        check_sampler(self.sampler)
        check_steps(self.steps)
        check_seed(self.seed)
        check_mode(self.mode)
        check_precision(self.precision)
        if self.max_memory is not None:
            parse_memory(self.max_memory)
        _check_guidance_and_progress(self.guidance, self.guidance_mode, self.progress)
        return self

    def to_argv(self) -> list[str]:
        """``sample-set --model M ...``, checked by :meth:`validate` first."""
        self.validate()
        return ["sample-set", *options_to_argv(self)]
