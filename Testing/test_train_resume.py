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
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["event"] == "start" and lines[0]["start_step"] == 3
    assert [e["step"] for e in lines if e["event"] == "step"] == [4, 5]

    for name in ("vae.safetensors", "unet.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(cut / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert_same(a, b, "checkpoint")  # models, optimizers, schedulers, EMA, RNG states, step
    logged = [json.loads(x) for x in (cut / "progress.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["step"] for e in logged if e["event"] == "step"] == [1, 2, 3, 4, 5]
