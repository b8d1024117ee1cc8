"""Options of a generation and of a teaching set as the panel sets them, checked before any process starts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from land.interface.contract import (
    DEFAULT_SAMPLER,
    DEVICES,  # noqa: F401 - the panel's device choices (land.interface.contract)
    SAMPLER_TITLES,
    GenerateOptions,
    TeachingSetOptions,
    options_from_mapping,
    parse_diameters,
    parse_textures,
)
from land.interface.errors import InputError
from land.resources import DEMO_MODEL_NAME

MODULE_NAME = "LANDSynthesis"
BUNDLED_MODEL_NAME = DEMO_MODEL_NAME
SAMPLERS = tuple(SAMPLER_TITLES)  # the panel's order (land.interface.contract)
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
    """``python -m land ...`` from an engine option object (``land.interface.contract``'s ``to_argv``); its
    refusal
    becomes LANDInputError, shown to the user before any process starts."""
    try:
        argv = options.to_argv()
    except InputError as e:
        raise LANDInputError(str(e)) from None
    return [python, "-m", "land", *argv]


# ---------------------------------------------------------------------------------------------- parameters
@dataclass
class GenerationParameters:
    """Options of one generation. ``seed`` None draws a random seed; ``steps`` None uses the sampler's
    default; ``mode`` None uses the model's. ``device``: auto, cuda or cpu. Matched pair (the contract's
    ``pair``): ``pairSegmentId`` names a nodule segment, turned into its engine label when the masks are
    prepared, or ``pairNodule`` gives the engine label itself; the twin without it is loaded beside the CT."""

    modelDirectory: str | None = None  # None: the bundled demo model
    mode: str | None = None
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None
    seed: int | None = 0
    device: str = "auto"
    fit: str = "crop"  # contract.FITS: crop the chest at the model's voxel size, or scale it to fit
    replacePrevious: bool = False
    strict: bool = False
    outputName: str | None = None
    guidanceFromModel: bool = True  # True: the model's recommended guidance; else guidanceScale/Mode
    guidanceScale: float = 3.0
    guidanceMode: str = "nodules"
    pairNodule: int | None = None  # matched pair: also generate the CT without this nodule (engine label)
    pairSegmentId: str | None = None  # ... or without this nodule segment (its label found at preparation)
    extraArguments: list[str] = field(default_factory=list)

    @classmethod
    def fromAny(cls, parameters: GenerationParameters | Mapping[str, Any] | None) -> GenerationParameters:
        return options_from_mapping(cls, parameters, "generation parameter", LANDInputError)

    def engineOptions(self, out: str, **job: Any) -> GenerateOptions:
        """The ``land generate`` options these parameters stand for, writing ``out``; ``job``: the
        options a generation adds (model, seed drawn, mask inputs)."""
        options = GenerateOptions(
            out=out,
            sampler=self.sampler,
            steps=self.steps or None,
            seed=0 if self.seed is None else self.seed,
            device=(self.device or "auto").lower(),
            mode=self.mode or None,
            guidance=None if self.guidanceFromModel else self.guidanceScale,
            guidance_mode=None if self.guidanceFromModel else self.guidanceMode,
            strict=self.strict,
            fit=self.fit,
            pair=self.pairNodule,
            compress=False,  # a raw NRRD loads several times faster on the GUI thread
            progress="json",
            extra=[str(a) for a in self.extraArguments],
        )
        return dataclasses.replace(options, **job)

    def check(self) -> None:
        """The engine's own rules (land.interface.contract), before any process starts; LANDInputError says
        why."""
        try:
            self.engineOptions("check.nrrd").validate()
        except InputError as e:
            raise LANDInputError(str(e)) from None


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
    pairRate: float | None = None  # share of the cases with nodules that also get a matched twin
    extraArguments: list[str] = field(default_factory=list)

    @classmethod
    def fromAny(cls, parameters: TeachingSetParameters | Mapping[str, Any]) -> TeachingSetParameters:
        return options_from_mapping(cls, parameters, "teaching-set parameter", LANDInputError)

    def texturesText(self) -> str | None:
        """``textures`` as the engine's ``"1,3,5"`` (land.interface.contract.parse_textures' rule)."""
        if self.textures is None or self.textures == "":
            return None
        try:
            return ",".join(str(t) for t in parse_textures(self.textures))
        except InputError as e:
            raise LANDInputError(str(e)) from None

    def diametersText(self) -> str | None:
        """``diameters`` as the engine's ``"4-25"`` (land.interface.contract.parse_diameters' rule)."""
        if self.diameters is None or self.diameters == "":
            return None
        try:
            return "-".join(f"{x:g}" for x in parse_diameters(self.diameters))
        except InputError as e:
            raise LANDInputError(str(e)) from None

    def engineOptions(self) -> TeachingSetOptions:
        """The ``land teaching-set`` options these parameters stand for (not yet checked)."""
        return TeachingSetOptions(
            out=str(Path(self.outputDirectory).expanduser().resolve()),
            cases=self.cases,
            model=str(self.modelDirectory) if self.modelDirectory else None,
            nodule_rate=self.noduleRate,
            pair_rate=self.pairRate or None,
            textures=self.texturesText(),
            diameters=self.diametersText(),
            steps=self.steps,
            seed=self.seed,
            guidance=None if self.guidanceFromModel else self.guidanceScale,
            guidance_mode=None if self.guidanceFromModel else self.guidanceMode,
            progress="json",
            extra=[str(a) for a in self.extraArguments],
        )

    def check(self) -> TeachingSetOptions:
        """The panel's own rules, then the engine's (land.interface.contract); returns the checked engine
        options."""
        if not self.outputDirectory:
            raise LANDInputError("Choose an output folder for the teaching set.")
        parent = Path(self.outputDirectory).expanduser().resolve().parent
        if not parent.is_dir():
            raise LANDInputError(f"The folder {parent} (where the teaching set folder goes) does not exist.")
        if not (isinstance(self.cases, int) and 1 <= self.cases <= 10000):
            raise LANDInputError(f"the number of cases must be a whole number 1..10000, got {self.cases!r}")
        try:
            return self.engineOptions().validate()
        except InputError as e:
            raise LANDInputError(str(e)) from None
