"""Training checkpoints: one ``checkpoint.pt`` written atomically, loadable with ``weights_only=True``.

Contents: ``format``, ``kind`` ('vae' / 'ldm'), ``step`` (completed optimizer steps), ``config`` (raw JSON),
``models``, ``optimizers``, ``schedulers``, ``ema``, ``scaler`` (state dicts), ``rng`` (python, numpy,
torch CPU, CUDA and the data sampler's (seed, step)) and ``elapsed_s``. Only tensors, numbers, strings,
lists, tuples, dicts and None are stored, so no arbitrary object is ever unpickled.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError

FORMAT = "land-train-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"


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


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: str | os.PathLike, kind: str, step: int, **parts: Any) -> None:
    atomic_torch_save({"format": FORMAT, "kind": kind, "step": int(step), **parts}, path)


def load_checkpoint(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (InputError when missing, corrupt or of another kind)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"no checkpoint to resume from: {path} does not exist; run without --resume to start"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling / zip error means an unusable file
        raise InputError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a LAND training checkpoint ({FORMAT})")
    if ckpt.get("kind") != kind:
        raise InputError(f"{path} is a {ckpt.get('kind')} checkpoint; this command resumes '{kind}' training")
    return ckpt
