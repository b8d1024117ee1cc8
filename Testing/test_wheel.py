"""The built wheel: what it holds, and that it generates out of the box from a fresh virtual environment.

The wheel is built offline from a copy of the build inputs (``pip wheel --no-build-isolation``, with the
setuptools of the test extra) and installed with ``--no-deps`` into a fresh ``venv`` of its own; a ``.pth``
file there names the folders that hold the installed dependencies (torch, MONAI, ...), which adds them to
``sys.path`` without their ``.pth`` files, so the checkout's editable ``land`` stays out of reach.
"""

from __future__ import annotations

import email
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import SimpleITK as sitk
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "LANDSynthesis" / "land" / "resources"
DEMO_MODEL = RESOURCES / "models" / "land-demo-phantom"
# What setuptools reads to build the wheel (there is no setup.py, setup.cfg or MANIFEST.in).
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "LANDSynthesis/land")
IGNORED = {".gitkeep", ".DS_Store"}
MiB = 1024 * 1024
SLACK = 2 * MiB  # the wheel beyond the demo model: code, configs, demo masks (about 0.4 MB today)
MAX_WHEEL = 52 * MiB  # the demo model may be up to 50 MB (test_demo), plus SLACK


def clean_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH to the checkout, one thread (a shared CPU)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def run(*cmd: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def on_disk_resources() -> set[str]:
    """The package data under land/resources on disk, as wheel paths."""
    return {
        "land/" + p.relative_to(RESOURCES.parent).as_posix()
        for p in RESOURCES.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and p.name not in IGNORED
        and "__pycache__" not in p.parts
    }  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``land_slicer-*.whl`` built from a copy of the build inputs, with caches and junk planted in it."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed (the test extra has it: pip install -e '.[test]')")
    assert not any((REPO / f).exists() for f in ("setup.py", "setup.cfg", "MANIFEST.in")), (
        "update BUILD_INPUTS"
    )
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("*.egg-info"))
        else:
            shutil.copy2(REPO / name, src / name)
    # What a developer's checkout may hold beside the package data: none of it may reach the wheel.
    for junk in (
        "land/resources/__pycache__/__init__.cpython-311.pyc",
        "land/__pycache__/cli.cpython-311.pyc",
        "land/resources/models/land-demo-phantom/.DS_Store",
        "land/resources/configs/.gitkeep",
    ):
        (src / "LANDSynthesis" / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / "LANDSynthesis" / junk).write_bytes(b"junk")
    out = tmp_path_factory.mktemp("dist")
    proc = run(sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "--no-index",
               "-q", "-w", out, cwd=src)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("land_slicer-*.whl")
    return built


def test_wheel_holds_the_engine_and_its_package_data_only(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"land", next(t for t in top if t.endswith(".dist-info"))}, top  # no Testing, no Resources
    junk = (".pyc", ".png", ".DS_Store", ".gitkeep")
    parts = [n.split("/") for n in names]
    assert not [p for p in parts if {"__pycache__", "Testing", "tests"} & set(p) or p[-1].startswith("test_")]
    assert not [n for n in names if n.endswith(junk)]
    package = REPO / "LANDSynthesis" / "land"
    code = {
        f"land/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert code <= set(names), sorted(code - set(names))
    data = {n for n in names if n.startswith("land/") and not n.endswith(".py")}
    assert data == on_disk_resources(), "pyproject's package-data and land/resources disagree"
    assert {
        f"land/resources/models/land-demo-phantom/{f}" for f in ("model.json", "unet.safetensors")
    } <= data
    model = sum(p.stat().st_size for p in DEMO_MODEL.iterdir() if p.is_file())
    size = wheel.stat().st_size
    assert size <= min(model + SLACK, MAX_WHEEL), (
        f"wheel {size / MiB:.1f} MiB, demo model {model / MiB:.1f} MiB"
    )


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (no deps) and the dependencies on its path."""
    root = tmp_path_factory.mktemp("venv")
    proc = run(sys.executable, "-m", "venv", "--without-pip", root, cwd=root)
    assert proc.returncode == 0, proc.stderr
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    proc = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q",
               wheel, cwd=root)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with zipfile.ZipFile(wheel) as z:
        meta = email.message_from_bytes(
            z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
        )
    required = [Requirement(r) for r in meta.get_all("Requires-Dist", [])]
    names = [r.name for r in required if r.marker is None]  # the extras' requirements have markers
    assert {"torch", "monai", "SimpleITK"} <= set(names)
    folders = {str(importlib.metadata.distribution(n).locate_file("")) for n in names}
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root)
    (Path(purelib.stdout.strip()) / "land_test_dependencies.pth").write_text(
        "\n".join(sorted(folders)) + "\n", encoding="utf-8"
    )
    return root


def test_wheel_installs_and_generates_out_of_the_box(venv, tmp_path):
    """From outside the checkout, with nothing but the wheel's land: land info and land generate without
    --model or --mask use the bundled demo model and masks, and write a SYNTHETIC CT."""
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    where = run(bindir / "python", "-c", "import land, land.resources as r; print(land.__file__);"
                "print(r.demo_model_dir()); from land.train.config_files import bundled_configs as b;"
                "print(','.join(b()))", cwd=tmp_path)  # fmt: skip
    assert where.returncode == 0, where.stderr
    engine, model, configs = where.stdout.split()
    for path in (engine, model):
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"{path} is not the wheel's"
    assert {"paper", "small", "tiny", "demo"} <= set(configs.split(","))

    info = run(bindir / "land", "info", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "land-demo-phantom" in info.stdout and "trained     yes" in info.stdout

    generate = run(bindir / "land", "generate", "--out", "x.nii.gz", "--progress", "none", cwd=tmp_path)
    assert generate.returncode == 0, generate.stderr
    assert "wrote SYNTHETIC CT x.nii.gz" in generate.stdout
    assert "bundled demo masks" in generate.stderr and str(venv.resolve()) in generate.stderr
    image = sitk.ReadImage(str(tmp_path / "x.nii.gz"))
    assert image.GetSize() == (128, 128, 128)
    assert image.GetMetaData("descrip").startswith("SYNTHETIC")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.nii.gz"]
