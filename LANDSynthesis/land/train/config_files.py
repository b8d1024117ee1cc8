"""Where the training config files are and which one a ``--config`` value names.

Torch-free: the Slicer modules and ``land train-pipeline`` resolve configs without importing the networks.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..interface.errors import InputError
from ..resources import configs_dir


def bundled_configs() -> dict[str, Path]:
    """The bundled configs by name (``paper``, ``small``, ``demo``, ``tiny``, ...)."""
    d = configs_dir()
    return {p.stem: p for p in sorted(d.glob("*.json"), key=lambda p: p.stem)} if d.is_dir() else {}


def config_path(name_or_path: str | Path) -> Path:
    """The JSON file a ``--config`` value names: a file path, or a bundled config's name."""
    text = str(name_or_path)
    if not text:
        raise InputError("choose a training config: a JSON file or one of " + _choices())
    path = Path(text)
    if path.is_file():
        return path.resolve()
    bundled = bundled_configs()
    if "/" not in text and "\\" not in text and text in bundled:
        return bundled[text].resolve()
    raise InputError(f"training config {text!r} not found; give a JSON file or one of the bundled configs: "
                     f"{_choices()}")  # fmt: skip


def config_summary(name_or_path: str | Path) -> str:
    """One line about a config: grid, spacing, steps and its comment (read as JSON, not validated)."""
    try:
        raw = json.loads(config_path(name_or_path).read_text(encoding="utf-8"))
        grid = "x".join(str(n) for n in raw["data"]["grid_size"])
        spacing = "x".join(f"{s:g}" for s in raw["data"]["spacing"])
        text = (
            f"{raw.get('name', name_or_path)}: {grid} voxels at {spacing} mm; VAE "
            f"{raw['vae'].get('steps', '?')} steps, LDM {raw['ldm'].get('steps', '?')} steps"
        )
        comment = raw.get("_comment")
        return f"{text}. {comment}" if comment else text
    except (OSError, ValueError, KeyError, TypeError, InputError) as e:
        return f"cannot read config {name_or_path}: {e}"


def _choices() -> str:
    return ", ".join(bundled_configs()) or "(none found)"
