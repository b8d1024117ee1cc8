"""Exact resume: a CLI training run SIGKILLed after a checkpoint and resumed equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import train_tiny_vae
from safetensors.torch import load_file
from test_dataset import write_dataset

from land.interface.events import DoneEvent, ProgressEvent, WarningEvent, parse_event

LAND = [sys.executable, "-m", "land"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # a shared 2-core machine: one thread per process is fastest


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("resume") / "ds", n=3)


@pytest.fixture(scope="module")
def vae_dir(data, tmp_path_factory) -> Path:
    return train_tiny_vae(data, tmp_path_factory.mktemp("vae") / "vae", steps=3)


def run(args: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = dict(ENV)
    if kill_at is not None:
        env["LAND_TRAIN_KILL_AT_STEP"] = str(kill_at)
    return subprocess.run([*LAND, *args], capture_output=True, text=True, timeout=300, env=env)


def assert_same(a, b, where: str = "") -> None:
    """Recursive equality; tensors with torch.equal. Wall time is the only thing allowed to differ."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = set(a) - {"elapsed_s"}
        assert keys == set(b) - {"elapsed_s"}, where
        for k in keys:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("command", ["train-vae", "train-ldm"])
def test_resume_after_sigkill_is_exact(command, data, vae_dir, tmp_path):
    args = [command, "--data", str(data), "--config", "tiny", "--device", "cpu", "--max-steps", "5"]
    if command == "train-ldm":
        args += ["--vae", str(vae_dir)]
    full, cut = tmp_path / "full", tmp_path / "cut"
    result = run([*args, "--out", str(full), "--progress", "none"])
    assert result.returncode == 0, result.stderr
    # killed right after the checkpoint of step 3 (after the tiny VAE's adversarial warm-up of 2 steps)
    result = run([*args, "--out", str(cut), "--progress", "none"], kill_at=3)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["step"] == 3
    assert not (cut / "model.json").exists()
    result = run([*args, "--out", str(cut), "--progress", "json", "--resume"])
    assert result.returncode == 0, result.stderr
    events = [parse_event(line) for line in result.stdout.splitlines()]
    assert all(e is not None for e in events), result.stdout  # only land.interface.events on stdout
    progress = [(e.stage, e.step, e.total) for e in events if isinstance(e, ProgressEvent)]
    assert progress == [(command, 3, 5), (command, 4, 5), (command, 5, 5)]  # starts from the checkpoint
    assert isinstance(events[-1], DoneEvent) and events[-1].details["out"] == str(cut)

    for name in ("vae.safetensors", "unet.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(cut / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert_same(a, b, "checkpoint")  # models, optimizers, schedulers, EMA, RNG states, step
    logged = [json.loads(x) for x in (cut / "progress.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["step"] for e in logged if e["event"] == "step"] == [1, 2, 3, 4, 5]


def _config_file(tmp_path: Path, section: str, **changes) -> Path:
    from land.train.config import load_config

    raw = json.loads(json.dumps(load_config("tiny").raw))
    raw[section].update(changes)
    path = tmp_path / f"{section}.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_damaged_checkpoint_falls_back_to_the_previous_one_exactly(data, vae_dir, tmp_path):
    """Random bytes in the middle of checkpoint.pt: --resume detects it by its sha256, says so, resumes
    from checkpoint.prev.pt and still ends bit-identical to an uninterrupted run."""
    config = _config_file(tmp_path, "ldm", checkpoint_every=1)
    args = ["train-ldm", "--data", str(data), "--vae", str(vae_dir), "--config", str(config),
            "--device", "cpu", "--max-steps", "4", "--progress", "none"]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run([*args, "--out", str(full)]).returncode == 0
    assert run([*args, "--out", str(cut)], kill_at=3).returncode == -signal.SIGKILL
    assert torch.load(cut / "checkpoint.prev.pt", weights_only=True)["step"] == 2
    ckpt = cut / "checkpoint.pt"
    raw = bytearray(ckpt.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4096] = os.urandom(4096)
    ckpt.write_bytes(bytes(raw))
    result = run([*args[:-2], "--progress", "json", "--out", str(cut), "--resume"])
    assert result.returncode == 0, result.stderr
    notices = [e.message for e in map(parse_event, result.stdout.splitlines()) if isinstance(e, WarningEvent)]
    assert any("checkpoint.pt is damaged" in m and "checkpoint.prev.pt (step 2)" in m for m in notices)
    a, b = load_file(str(full / "unet.safetensors")), load_file(str(cut / "unet.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):  # both damaged: a clear error, exit 2
        (cut / name).write_bytes(b"\0" * 100)
    both = run([*args, "--out", str(cut), "--resume"])
    assert both.returncode == 2 and "previous checkpoint is unusable too" in both.stderr
    assert "Traceback" not in both.stderr


def test_divergence_exits_3_and_keeps_the_last_good_checkpoint(data, tmp_path):
    config = _config_file(tmp_path, "vae", lr=1e30, checkpoint_every=1)
    out = tmp_path / "vae"
    result = run(["train-vae", "--data", str(data), "--config", str(config), "--device", "cpu", "--max-steps",
                  "6", "--out", str(out), "--progress", "none"])  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "training diverged at step" in result.stderr and "lower the learning rate" in result.stderr
    assert "Traceback" not in result.stderr and not (out / "model.json").exists()
    from land.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out / "checkpoint.pt", "vae")  # hash and weights check out
    assert 1 <= ckpt["step"] < 6


@pytest.mark.parametrize(("command", "sig"), [("train-vae", signal.SIGTERM), ("train-ldm", signal.SIGINT)])
def test_signal_stops_after_the_step_with_a_checkpoint_and_exit_130(command, sig, data, vae_dir, tmp_path):
    """Issue 15 item 7: SIGINT/SIGTERM during training finish the step, checkpoint it, exit 130 with a
    message (no traceback); --resume then ends bit-identical to an uninterrupted run."""
    args = [command, "--data", str(data), "--config", "tiny", "--device", "cpu"]
    if command == "train-ldm":
        args += ["--vae", str(vae_dir)]
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*LAND, *args, "--max-steps", "400", "--out", str(cut), "--progress", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if isinstance(event := parse_event(line), ProgressEvent) and event.step >= 1:
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert f"training stopped by {sig.name} after step" in err and "Traceback" not in err
    step = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= step < 400 and f"after step {step};" in err
    assert not (cut / "model.json").exists()
    end = str(step + 2)
    resumed = run([*args, "--max-steps", end, "--out", str(cut), "--progress", "none", "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    full = tmp_path / "full"
    assert run([*args, "--max-steps", end, "--out", str(full), "--progress", "none"]).returncode == 0
    name = "vae.safetensors" if command == "train-vae" else "unet.safetensors"
    a, b = load_file(str(full / name)), load_file(str(cut / name))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_warnings_reach_stderr_with_progress_none(tmp_path, capsys):
    """Issue 26 item 14: 'checkpoint damaged, resuming from the previous one' reaches stderr too."""
    from land.train.progress import TrainingLog

    log = TrainingLog(tmp_path, "train-ldm", 4, 2, {}, style="none", tensorboard=False)
    log.notice("checkpoint.pt is damaged; resuming from checkpoint.prev.pt (step 2)", warning=True)
    log.notice("an ordinary notice")
    err = capsys.readouterr().err
    assert "train-ldm: warning: checkpoint.pt is damaged" in err and "ordinary" not in err
    assert "checkpoint.pt is damaged" in (tmp_path / "progress.jsonl").read_text(encoding="utf-8")
    log.close()
