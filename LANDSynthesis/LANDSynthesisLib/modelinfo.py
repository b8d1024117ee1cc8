"""What the panel shows about a model (model.json read without torch), the bundled model, time notes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from land.interface.contract import (
    DEFAULT_STEPS,
    GUIDANCE_DEFAULTS,
    parse_guidance,
)
from land.interface.contract import format_duration as formatDuration  # noqa: F401 - the panels' one formatter
from land.resources import demo_model_dir, has_demo_model

from .options import BUNDLED_MODEL_NAME, LANDSynthesisError


@dataclass
class ModelInfo:
    """What the module needs from a model directory's ``model.json`` (read without torch)."""

    path: Path
    name: str
    trained: bool
    gridSize: tuple[int, int, int]
    spacing: tuple[float, float, float]
    mode: str
    card: str = ""
    guidance: tuple[float, str] = (1.0, "none")  # recommended (scale, mode); scale 1 = no guidance

    @property
    def extentMm(self) -> tuple[float, float, float]:
        return tuple(n * s for n, s in zip(self.gridSize, self.spacing, strict=True))  # type: ignore[return-value]

    def summary(self) -> str:
        grid = "x".join(str(n) for n in self.gridSize)
        spacing = "x".join(f"{s:g}" for s in self.spacing)
        state = "trained" if self.trained else "UNTRAINED (random weights: the output is noise)"
        return f"{self.name}: {grid} voxels at {spacing} mm, mode {self.mode}, {state}"


def readModelInfo(modelDirectory: str | os.PathLike) -> ModelInfo:
    """Read ``model.json`` of a LAND model directory; LANDSynthesisError names the problem."""
    path = Path(modelDirectory)
    if not path.is_dir():
        raise LANDSynthesisError(f"model directory {path} does not exist; choose a LAND model directory")
    meta_path = path / "model.json"
    if not meta_path.is_file():
        raise LANDSynthesisError(
            f"{path} is not a LAND model directory (no model.json); a model directory holds model.json, "
            "vae.safetensors and unet.safetensors"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        guidance = parse_guidance(meta.get("guidance", GUIDANCE_DEFAULTS))
        return ModelInfo(
            path=path,
            name=str(meta.get("name") or path.name),
            trained=bool(meta.get("trained", False)),
            gridSize=tuple(int(n) for n in meta["grid"]["size"]),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in meta["grid"]["spacing"]),  # type: ignore[arg-type]
            mode=str(meta["conditioning"]["mode"]),
            card=str(meta.get("card", "")),
            guidance=(guidance["scale"], guidance["mode"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LANDSynthesisError(f"{meta_path} is not a valid LAND model description: {e}") from e


def bundledModelDirectory() -> Path | None:
    """The bundled demo model's directory (``land.resources``), or None when this installation lacks it."""
    return demo_model_dir() if has_demo_model() else None


def bundledModelMissingMessage() -> str:
    return (
        f"The bundled demo model ({BUNDLED_MODEL_NAME}) is not installed with this version of LAND yet. "
        "Choose 'Model directory' and select a LAND model directory (with model.json), e.g. one trained "
        "with LANDTraining, or an untrained test model made with: land init-model --config small --out DIR"
    )


def engineDirectory() -> Path | None:
    """The folder holding the engine package ``land`` (next to this module in Slicer and the repository)."""
    here = Path(__file__).resolve().parent.parent
    if (here / "land" / "__init__.py").is_file():
        return here
    import importlib.util

    spec = importlib.util.find_spec("land")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent
    return None


def timeNote(device: str, steps: int | None, sampler: str, modelInfo: ModelInfo | None) -> str:
    """A rough expectation of the run time, for the device selector."""
    steps = steps or DEFAULT_STEPS.get(sampler, 25)
    voxels = int(np.prod(modelInfo.gridSize)) if modelInfo else 256**3
    size = f"{round(voxels ** (1 / 3))}³"
    gpu = f"GPU: usually 1–3 min for a {size} CT at {steps} steps (about 8 GB of GPU memory at 256³)."
    share = voxels / 256**3  # measured at 256³ (README): 15 s/step with bfloat16, 27 s without; decode ~2 min
    fast, slow = (formatDuration((per_step * steps + 120) * share + 10) for per_step in (15, 27))
    cpu = (
        f"CPU: slow — 15–27 s per step for the full-size (256³) model (the lower on CPUs with bfloat16) "
        f"plus ~2 min of decoding, so {steps} steps take ~{fast}–{slow}; smaller models are faster."
    )
    if device == "cpu":
        return cpu
    if device.startswith("cuda"):
        return gpu + " Needs an NVIDIA GPU with CUDA."
    return "Auto uses the GPU when PyTorch finds one, else the CPU. " + gpu + " " + cpu


# ---------------------------------------------------------------------------------------------- masks
