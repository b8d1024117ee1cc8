"""Nothing the user made is lost and no input is silently reinterpreted (issue 26, the second hostile
battery): every case runs the real command or reader on real files written to ``tmp_path``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from conftest import make_masks

from land.cli import main
from land.io import write_seg_nrrd

REFUSED = "would overwrite your input"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def seg(tmp_path: Path) -> Path:
    path = tmp_path / "o" / "self.nrrd"
    path.parent.mkdir()
    write_seg_nrrd(path, make_masks())
    return path


# ------------------------------------------------------------------ 1. an output never resolves to an input
@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "inside the model folder"])
def test_generate_refuses_an_output_that_is_an_input(how, seg, tiny_model_dir, tmp_path, capsys):
    before = digest(seg)
    model_before = tree_state(tiny_model_dir)
    out = {"same path": seg, "symlink": tmp_path / "link.nrrd", "hard link": tmp_path / "hard.nrrd",
           "inside the model folder": tiny_model_dir / "ct.nrrd"}[how]  # fmt: skip
    if how == "symlink":
        out.symlink_to(seg)
    elif how == "hard link":
        os.link(seg, out)
    code = main(["generate", "--model", str(tiny_model_dir), "--mask", str(seg), "--steps", "1",
                 "--device", "cpu", "--progress", "none", "--out", str(out)])  # fmt: skip
    assert code == 2
    assert REFUSED in capsys.readouterr().err
    assert digest(seg) == before and tree_state(tiny_model_dir) == model_before


def test_generate_refuses_a_nifti_sidecar_that_is_an_input(tiny_model_dir, tmp_path, capsys):
    """ct.nii.gz writes ct.json beside it: that name must not be an input either."""
    model = tmp_path / "ct"
    model.mkdir()
    (model / "model.json").write_text("{}")
    code = main(["generate", "--model", str(tmp_path / "ct"), "--out", str(tmp_path / "ct.nii.gz"),
                 "--mask", str(tmp_path / "ct.json")])  # fmt: skip
    assert code == 2 and REFUSED in capsys.readouterr().err


def _dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.csv").write_text("case_id\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "command",
    [
        "teaching-set", "sample-set", "evaluate", "prepare-lidc", "train-vae", "train-ldm", "train-pipeline",
    ],
)  # fmt: skip
def test_every_writing_command_refuses_an_output_in_its_inputs(command, tiny_model_dir, tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    before = tree_state(data)
    inside = str(data / "out")
    argv = {
        "teaching-set": ["--cases", "1", "--lung-masks", str(data), "--model", str(tiny_model_dir),
                         "--out", inside],
        "sample-set": ["--model", str(tiny_model_dir), "--masks", str(data), "--n", "1", "--out", str(data)],
        "evaluate": ["--real", str(data), "--generated", str(tmp_path), "--no-fid", "--out", inside],
        "prepare-lidc": ["--dicom-root", str(data), "--out", str(data)],
        "train-vae": ["--data", str(data), "--config", "tiny", "--out", inside],
        "train-ldm": ["--data", str(tmp_path), "--config", "tiny", "--vae", str(data), "--out", str(data)],
        "train-pipeline": ["--data", str(data), "--config", "tiny", "--out", inside],
    }[command]  # fmt: skip
    code = main([command, "--progress", "none", *argv] if command != "evaluate" else [command, *argv])
    assert code == 2
    assert REFUSED in capsys.readouterr().err
    assert tree_state(data) == before and not (data / "out").exists()
