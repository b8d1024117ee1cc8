"""Options of a generation and of a teaching set as the panel sets them, checked before any process starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from land.contract import (
    DEFAULT_SAMPLER,
    SAMPLER_TITLES,
    check_guidance,
    check_mode,
    check_sampler,
    check_steps,
)
from land.errors import InputError

from .parameters import dataclassFrom

MODULE_NAME = "LANDSynthesis"
BUNDLED_MODEL_NAME = "land-demo-phantom"
SAMPLERS = tuple(SAMPLER_TITLES)  # the panel's order (land.contract)
DEVICES = ("auto", "cuda", "cpu")
LUNG_WINDOW, LUNG_LEVEL = 1500.0, -600.0
DENOISE_SHARE = 0.9  # share of the progress bar for denoising; decoding gets the rest
RESULT_ATTRIBUTE = "LAND.Result"
MAX_SEED = 2**31 - 1  # the panel's seed spin box is a Qt int; the engine takes 0..land.contract.MAX_SEED


class LANDSynthesisError(RuntimeError):
    """A message to show the user as it is; ``exitCode``: the engine's exit code if it came from there."""

    def __init__(self, message: str, exitCode: int | None = None) -> None:
        super().__init__(message)
        self.exitCode = exitCode


class LANDInputError(LANDSynthesisError):
    """The masks or options cannot be used (the message says what to change)."""


class GenerationCancelled(LANDSynthesisError):
    """The user cancelled the generation."""


def engineCommand(python: str, options) -> list[str]:
    """``python -m land ...`` from an engine option object (``land.contract``'s ``to_argv``); its refusal
    becomes LANDInputError, shown to the user before any process starts."""
    try:
        argv = options.to_argv()
    except InputError as e:
        raise LANDInputError(str(e)) from None
    return [python, "-m", "land", *argv]


def guidanceArguments(fromModel: bool, scale: Any, mode: Any) -> list[str]:
    """``--guidance W --guidance-mode M`` checked by the engine's rules (LANDInputError says why), or none
    when ``fromModel`` (the engine then uses the model's recommended guidance from its model.json)."""
    if fromModel:
        return []
    try:
        scale, mode = check_guidance(scale, mode)
    except InputError as e:
        raise LANDInputError(str(e)) from None
    return ["--guidance", f"{scale:g}", "--guidance-mode", mode]


# ---------------------------------------------------------------------------------------------- parameters
@dataclass
class GenerationParameters:
    """Options of one generation. ``seed`` None draws a random seed; ``steps`` None uses the sampler's
    default; ``mode`` None uses the model's. ``device``: auto, cuda or cpu."""

    modelDirectory: str | None = None  # None: the bundled demo model
    mode: str | None = None
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None
    seed: int | None = 0
    device: str = "auto"
    replacePrevious: bool = False
    strict: bool = False
    outputName: str | None = None
    guidanceFromModel: bool = True  # True: the model's recommended guidance; else guidanceScale/Mode
    guidanceScale: float = 3.0
    guidanceMode: str = "nodules"
    extraArguments: list[str] = field(default_factory=list)

    @classmethod
    def fromAny(cls, parameters: GenerationParameters | Mapping[str, Any] | None) -> GenerationParameters:
        return dataclassFrom(cls, parameters, "generation", LANDInputError)

    def check(self) -> None:
        try:  # the engine's own rules (land.contract), before any process starts
            check_mode(self.mode)
            check_sampler(self.sampler)
            check_steps(self.steps)
        except InputError as e:
            raise LANDInputError(str(e)) from None
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise LANDInputError(f"seed must be a whole number 0..{MAX_SEED}, got {self.seed!r}")
        device = (self.device or "auto").lower()
        if device not in DEVICES and not device.startswith("cuda:"):
            raise LANDInputError(f"unknown device {self.device!r}; choose auto, cuda (GPU) or cpu")
        guidanceArguments(self.guidanceFromModel, self.guidanceScale, self.guidanceMode)


@dataclass
class TeachingSetParameters:
    """Options of ``land teaching-set`` (issue 8). None: the command's default (``modelDirectory`` None:
    the bundled model). ``textures``: "1,3,5" or a list; ``diameters``: "4-25", (min, max) or one number."""

    outputDirectory: str = ""
    cases: int = 10
    modelDirectory: str | None = None
    noduleRate: float | None = None
    textures: str | list[int] | tuple[int, ...] | None = None
    diameters: str | tuple[float, float] | float | None = None
    steps: int | None = None
    seed: int | None = None
    guidanceFromModel: bool = True  # as in GenerationParameters
    guidanceScale: float = 3.0
    guidanceMode: str = "nodules"
    extraArguments: list[str] = field(default_factory=list)

    @classmethod
    def fromAny(cls, parameters: TeachingSetParameters | Mapping[str, Any]) -> TeachingSetParameters:
        return dataclassFrom(cls, parameters, "teaching-set", LANDInputError)

    def texturesText(self) -> str | None:
        if self.textures is None or self.textures == "":
            return None
        items = self.textures.replace(" ", "").split(",") if isinstance(self.textures, str) else self.textures
        values = []
        for item in items:
            text = str(item).strip()
            if not text.isdigit() or not 1 <= int(text) <= 5:
                raise LANDInputError(
                    "textures must be whole numbers 1..5 separated by commas (e.g. 1,3,5), "
                    f"got {self.textures!r}"
                )
            values.append(int(text))
        if not values:
            raise LANDInputError("give at least one texture 1..5 (e.g. 1,3,5)")
        return ",".join(str(v) for v in sorted(set(values)))

    def diametersText(self) -> str | None:
        d = self.diameters
        if d is None or d == "":
            return None
        try:
            if isinstance(d, str):
                parts = [float(x) for x in d.replace(" ", "").split("-")] if "-" in d else [float(d)] * 2
            elif isinstance(d, (int, float)):
                parts = [float(d)] * 2
            else:
                parts = [float(x) for x in d]
        except ValueError:
            parts = []
        if len(parts) != 2 or not 0 < parts[0] <= parts[1] <= 100:
            raise LANDInputError(f"diameters must be a range in mm like 4-25 (0 < min <= max), got {d!r}")
        return "-".join(f"{x:g}" for x in parts)

    def check(self) -> None:
        if not self.outputDirectory:
            raise LANDInputError("Choose an output folder for the teaching set.")
        parent = Path(self.outputDirectory).expanduser().resolve().parent
        if not parent.is_dir():
            raise LANDInputError(f"The folder {parent} (where the teaching set folder goes) does not exist.")
        if not (isinstance(self.cases, int) and 1 <= self.cases <= 10000):
            raise LANDInputError(f"the number of cases must be a whole number 1..10000, got {self.cases!r}")
        if self.noduleRate is not None and not 0.0 <= float(self.noduleRate) <= 1.0:
            raise LANDInputError(f"the nodule rate is a share of cases, 0..1, got {self.noduleRate!r}")
        try:
            check_steps(self.steps)
        except InputError as e:
            raise LANDInputError(str(e)) from None
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED):
            raise LANDInputError(f"seed must be a whole number 0..{MAX_SEED}, got {self.seed!r}")
        self.texturesText()
        self.diametersText()
        guidanceArguments(self.guidanceFromModel, self.guidanceScale, self.guidanceMode)
