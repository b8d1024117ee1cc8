"""Training checkpoints: one ``checkpoint.pt`` written atomically, loadable with ``weights_only=True``.

Contents: ``format``, ``kind`` ('vae' / 'ldm'), ``step`` (completed optimizer steps), ``config`` (raw JSON),
``models``, ``optimizers``, ``schedulers``, ``ema``, ``scaler`` (state dicts), ``rng`` (python, numpy,
torch CPU, CUDA and the data sampler's (seed, step)) and ``elapsed_s``. Only tensors, numbers, strings,
lists, tuples, dicts and None are stored, so no arbitrary object is ever unpickled.

Integrity: each checkpoint has a ``<file>.sha256`` written with it, and the previous checkpoint is kept as
``checkpoint.prev.pt``. Loading checks the hash and that every weight is finite; a damaged checkpoint makes
``--resume`` fall back to the previous one (saying so). A checkpoint with non-finite weights is never written.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..imaging.atomic import atomic_path, atomic_write_text
from ..interface.errors import InputError, TrainingDiverged
from ..models.model_dir import non_finite, sha256_file

FORMAT = "land-train-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_FILE = "checkpoint.prev.pt"
FALLBACK_KEY = "_loaded_instead"  # set by load_checkpoint when it fell back to the previous checkpoint


def rng_state(sampler_seed: int, step: int) -> dict[str, Any]:
    """Every RNG state of this process, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [int(version), torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # the data order is a pure function of (seed, step): see land.data.sampling
        "sampler": {"seed": int(sampler_seed), "step": int(step)},
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when the device count matches)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal.tolist()), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
            "has_gauss": int(n["has_gauss"]),
            "gauss": float(n["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` and fsync it."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def hash_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _non_finite_weights(parts: dict[str, Any]) -> list[str]:
    bad = []
    for group in ("models", "ema"):
        for name, state in (parts.get(group) or {}).items():
            if isinstance(state, dict):
                tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
                bad += [f"{group}.{name}.{k}" for k in non_finite(tensors)]
    return bad


def save_checkpoint(path: str | os.PathLike, kind: str, step: int, **parts: Any) -> None:
    """Write the checkpoint atomically with its sha256, keeping the one it replaces as ``checkpoint.prev.pt``.
    Non-finite weights raise :class:`TrainingDiverged` and leave the existing checkpoints untouched."""
    path = Path(path)
    bad = _non_finite_weights(parts)
    if bad:
        raise TrainingDiverged(
            f"training diverged by step {step}: {len(bad)} weight tensor(s) hold NaN or infinity (e.g. "
            f"{bad[0]}); this checkpoint was not written and the last good one in {path.parent} is kept; "
            "fix: lower the learning rate (or raise grad_clip protection) and resume with --resume"
        )
    with atomic_path(path) as tmp:
        _torch_save({"format": FORMAT, "kind": kind, "step": int(step), **parts}, tmp)
        digest = sha256_file(tmp)
        previous = path.with_name(PREVIOUS_FILE)
        if path.is_file():
            os.replace(path, previous)
            if hash_path(path).is_file():
                os.replace(hash_path(path), hash_path(previous))
            else:
                hash_path(previous).unlink(missing_ok=True)
        atomic_write_text(hash_path(path), digest + "\n")


def _load_one(path: Path, kind: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    expected = hash_path(path).read_text(encoding="utf-8").strip() if hash_path(path).is_file() else None
    if expected is not None and sha256_file(path) != expected:
        raise InputError(f"{path} is damaged: its sha256 differs from the one written with it")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling / zip error means an unusable file
        raise InputError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a LAND training checkpoint ({FORMAT})")
    if ckpt.get("kind") != kind:
        raise InputError(f"{path} is a {ckpt.get('kind')} checkpoint; this command resumes '{kind}' training")
    bad = _non_finite_weights(ckpt)
    if bad:
        raise InputError(f"{path} holds non-finite weights (NaN or infinity, e.g. {bad[0]})")
    return ckpt


def load_checkpoint(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, checking its sha256 and weights; if it is damaged or
    missing, the previous checkpoint (``checkpoint.prev.pt``) is loaded instead and ``ckpt[FALLBACK_KEY]``
    says why. InputError when neither is usable."""
    path = Path(path)
    previous = path.with_name(PREVIOUS_FILE)
    try:
        return _load_one(path, kind)
    except InputError as e:
        if not previous.is_file():
            if not path.is_file():
                raise InputError(
                    f"no checkpoint to resume from: {path} does not exist; run without --resume to start"
                ) from None
            raise
        first = str(e)
    try:
        ckpt = _load_one(previous, kind)
    except InputError as e:
        raise InputError(
            f"cannot resume: {first}; the previous checkpoint is unusable too ({e}); fix: start a new run "
            "without --resume (or into another --out)"
        ) from None
    ckpt[FALLBACK_KEY] = (
        f"{first}; resuming from the previous checkpoint {previous.name} (step {ckpt['step']})"
    )
    return ckpt
