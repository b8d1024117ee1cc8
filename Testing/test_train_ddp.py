"""DDP: ``torchrun --nproc_per_node 2`` on gloo (CPU) leaves identical weights on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import train_tiny_vae
from safetensors.torch import load_file
from test_dataset import write_dataset

from land.train.config import load_config
from land.train.loop import state_sha256


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ddp") / "ds", n=4)


@pytest.fixture(scope="module")
def vae_dir(data, tmp_path_factory) -> Path:
    return train_tiny_vae(data, tmp_path_factory.mktemp("vae") / "vae", steps=2)


@pytest.mark.parametrize("command", ["train-ldm", "train-vae", "train-vae-decoder"])
def test_two_gloo_ranks_hold_identical_weights(command, data, vae_dir, tmp_path):
    """``train-vae-decoder``: 1 patch step, then 2 decoder-only steps (gradients all-reduced by hand)."""
    out, debug = tmp_path / "out", tmp_path / "hashes"
    config = "tiny"
    if command == "train-vae-decoder":
        raw = load_config("tiny").raw
        raw["vae"] = {**raw["vae"], "steps": 1, "decoder_steps": 2}
        config = str(tmp_path / "decoder.json")
        Path(config).write_text(json.dumps(raw), encoding="utf-8")
        command = "train-vae"
    args = [
        command,
        "--data",
        str(data),
        "--config",
        config,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--max-steps",
        "3",
        "--progress",
        "none",
    ]
    if command == "train-ldm":
        args += ["--vae", str(vae_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAND_TRAIN_DEBUG_DIR": str(debug)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "land",
    ]
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=180, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((debug / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["step"] == ranks[1]["step"] == 3
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    # rank 0 alone wrote the outputs: the saved weights are the ones both ranks hold
    if command == "train-ldm":
        assert state_sha256(load_file(str(out / "unet.safetensors"))) == ranks[0]["sha256"]["ema"]
    else:
        assert state_sha256(load_file(str(out / "vae.safetensors"))) == ranks[0]["sha256"]["vae"]
    lines = [json.loads(x) for x in (out / "progress.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines[0]["world_size"] == 2
    assert [e["step"] for e in lines if e["event"] == "step"] == [1, 2, 3]
    provenance = json.loads((out / "model.json").read_text(encoding="utf-8"))["provenance"]
    assert provenance["world_size"] == 2
    if config != "tiny":
        assert provenance["decoder_only_steps"] == 2
        assert any("decoder-only steps 2-3" in e["message"] for e in lines if e["event"] == "notice")
