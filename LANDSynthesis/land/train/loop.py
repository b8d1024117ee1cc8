"""Pieces shared by both trainers: per-step seeding, AMP, output folder checks, loss averaging, debug hooks.

Debug environment variables (used by the tests):

- ``LAND_TRAIN_KILL_AT_STEP=k``: SIGKILL the process right after the checkpoint of step ``k`` is written.
- ``LAND_TRAIN_DEBUG_DIR=DIR``: at the end every rank writes ``DIR/rank<r>.json`` with the sha256 of its
  model state dict(s), to check that DDP ranks hold identical weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.sampling import step_seed
from ..interface.errors import Cancelled, InputError, TrainingDiverged
from .checkpoint import CHECKPOINT_FILE, FALLBACK_KEY, PREVIOUS_FILE, rng_state, save_checkpoint
from .distributed import DistContext, barrier

KILL_ENV = "LAND_TRAIN_KILL_AT_STEP"
DEBUG_DIR_ENV = "LAND_TRAIN_DEBUG_DIR"


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed python, numpy and torch (all devices) from (seed, step, rank): a step's randomness (e.g. the
    VAE's posterior sample) does not depend on what ran before it, so resuming reproduces it."""
    s = step_seed(seed, step, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def prepare_out(out: Path, resume: bool, ctx: DistContext) -> Path:
    """Create ``out``; refuse to overwrite an existing training run unless resuming."""
    out = Path(out)
    ckpt = out / CHECKPOINT_FILE
    if resume and not ckpt.is_file() and not (out / PREVIOUS_FILE).is_file():
        raise InputError(f"--resume: {ckpt} does not exist; start without --resume")
    if not resume and ckpt.is_file():
        raise InputError(
            f"{out} already holds a training run ({CHECKPOINT_FILE}); pass --resume to continue it or choose "
            "another --out"
        )
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(ctx)
    return out


def amp_setup(
    device: torch.device, enabled: bool
) -> tuple[Callable[[], contextlib.AbstractContextManager], torch.amp.GradScaler, str]:
    """(autocast factory, grad scaler, description). AMP runs on CUDA only: bf16 when supported, else
    fp16 with loss scaling; on CPU everything stays float32."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext, torch.amp.GradScaler("cuda", enabled=False), "off (float32)"
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=dtype)

    return autocast, scaler, f"on ({str(dtype).removeprefix('torch.')})"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def resume_notices(ckpt: dict[str, Any], config: dict[str, Any], world_size: int) -> list[str]:
    """Warnings when a resumed run differs from the checkpointed one (config keys, number of ranks)."""
    notes = [ckpt[FALLBACK_KEY]] if ckpt.get(FALLBACK_KEY) else []
    old, new = _flatten(ckpt.get("config", {})), _flatten(config)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and not k.startswith("_"))
    if changed:
        notes.append(
            f"resuming with a config that differs from the checkpoint's in {', '.join(changed[:8])}"
            + (" ..." if len(changed) > 8 else "")
            + "; the result will not equal an uninterrupted run"
        )
    if int(ckpt.get("world_size", world_size)) != world_size:
        notes.append(
            f"resuming on {world_size} rank(s), the checkpoint was written by {ckpt.get('world_size')}: "
            "the data order changes from here on"
        )
    return notes


def constant_with_warmup(warmup: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then constant (independent of --max-steps)."""

    def factor(step: int) -> float:
        return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)

    return factor


def check_finite_losses(losses: dict[str, float], step: int, out: Path) -> dict[str, float]:
    """``losses``, or :class:`TrainingDiverged` (exit 3) when one is NaN or infinite: the step's update is
    not checkpointed, the last good checkpoint in ``out`` stays."""
    bad = {k: v for k, v in losses.items() if not np.isfinite(v)}
    if bad:
        what = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise TrainingDiverged(
            f"training diverged at step {step}: {what}; nothing after the last checkpoint in {out} was "
            "saved; fix: lower the learning rate or check the data (land check-dataset), then continue "
            "with --resume"
        )
    return losses


class LossMeter:
    """Averages named scalar losses between two logged steps."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last: dict[str, float] = {}

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def pop(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        self.last = out
        return out


def due(step: int, every: int, total: int) -> bool:
    """True at every ``every``-th completed step and at the last one (``every`` 0: only the last)."""
    return step == total or (every > 0 and step % every == 0)


def maybe_kill(step: int, ctx: DistContext) -> None:
    """Debug: SIGKILL this process after the checkpoint of step ``$LAND_TRAIN_KILL_AT_STEP``."""
    target = os.environ.get(KILL_ENV)
    if target and int(target) == step:
        barrier(ctx)
        os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_if_due(
    kind: str,
    step: int,
    every: int,
    total: int,
    out: Path,
    config: Any,
    seed: int,
    ctx: DistContext,
    state: Callable[[], dict[str, Any]],
    log: Any,
    elapsed_s: float,
) -> None:
    """Every ``every`` steps (and at the end): rank 0 writes the checkpoint atomically and logs it."""
    if not due(step, every, total):
        return
    if ctx.is_main:
        save_checkpoint(
            out / CHECKPOINT_FILE,
            kind,
            step,
            config=config,
            rng=rng_state(seed, step),
            elapsed_s=elapsed_s,
            world_size=ctx.world_size,
            **state(),
        )
        log.event("checkpoint", step, path=str(out / CHECKPOINT_FILE))
    maybe_kill(step, ctx)


class StopFlag:
    """Set by the first SIGINT/SIGTERM: the trainer finishes its step, checkpoints it and exits 130."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def requested(self, ctx: DistContext) -> bool:
        """Whether this rank, or with DDP any rank, was asked to stop (all ranks stop at the same step)."""
        flag = self.signal_name is not None
        if ctx.world_size > 1:
            import torch.distributed as dist

            t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """SIGINT/SIGTERM set the yielded :class:`StopFlag` (a second one interrupts at once); the previous
    handlers come back afterwards. Outside the main thread nothing is installed."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_signal(signum: int, _frame: Any) -> None:
        if flag.signal_name is not None:
            raise KeyboardInterrupt
        flag.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_if_requested(stop: StopFlag, ctx: DistContext, step: int, saved: bool, save: Callable[[], None],
                      out: Path) -> None:  # fmt: skip
    """After a step: if a stop was requested, checkpoint the step (unless ``saved`` already) and raise
    :class:`Cancelled` (exit 130) saying how to continue."""
    if not stop.requested(ctx):
        return
    if not saved:
        save()
    raise Cancelled(
        f"training stopped by {stop.signal_name or 'a signal to another rank'} after step {step}; its "
        f"checkpoint is in {out}; continue with the same command and --resume"
    )


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_debug_hashes(ctx: DistContext, step: int, states: dict[str, dict[str, torch.Tensor]]) -> None:
    """Debug: ``$LAND_TRAIN_DEBUG_DIR/rank<r>.json`` with the sha256 of each state dict."""
    d = os.environ.get(DEBUG_DIR_ENV)
    if not d:
        return
    Path(d).mkdir(parents=True, exist_ok=True)
    record = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "step": step,
        "sha256": {k: state_sha256(v) for k, v in states.items()},
    }
    (Path(d) / f"rank{ctx.rank}.json").write_text(json.dumps(record), encoding="utf-8")


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Temporarily switch modules to eval mode (restoring their previous mode)."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
