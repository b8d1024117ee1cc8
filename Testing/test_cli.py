"""The ``land`` CLI end to end, in child processes, as a user (or the Slicer module) runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import make_masks

from land.imaging.io import read_provenance, write_seg_nrrd
from land.interface.contract import DEFAULT_SAMPLER

LAND = [sys.executable, "-m", "land"]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*LAND, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    for name in ("init-model", "generate", "info"):
        assert name in result.stdout
    assert "--sampler" in run("generate", "--help").stdout


def test_init_model_and_info(tmp_path):
    result = run("init-model", "--config", "small", "--out", str(tmp_path / "m"), "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "U-Net 15,436,132" in result.stdout
    meta = json.loads((tmp_path / "m" / "model.json").read_text(encoding="utf-8"))
    assert meta["trained"] is False and meta["grid"]["size"] == [128, 128, 128]
    info = run("info", "--model", str(tmp_path / "m"))
    assert info.returncode == 0 and "NO (random weights)" in info.stdout and "sha256" in info.stdout


def test_generate_from_seg_nrrd_writes_synthetic_nifti(tiny_model_dir, tmp_path):
    masks = make_masks()
    seg = tmp_path / "case.seg.nrrd"
    write_seg_nrrd(seg, masks)
    out = tmp_path / "ct.nii.gz"
    result = run("generate", "--model", str(tiny_model_dir), "--mask", str(seg), "--steps", "2",
                 "--seed", "5", "--progress", "json", "--device", "cpu", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    steps = [e for e in lines if e.get("stage") == "denoise"]
    assert [e["step"] for e in steps] == [1, 2] and all("eta_s" in e for e in steps)
    assert lines[-1] == {"done": True, "out": str(out)}
    assert "UNTRAINED" in result.stderr  # the random-weights model says so
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == (64, 64, 64) and image.GetSpacing() == (4.0, 4.0, 4.0)
    assert image.GetPixelID() == sitk.sitkInt16
    assert "SYNTHETIC" in image.GetMetaData("descrip")
    prov = read_provenance(out)
    assert prov["seed"] in ("5", 5) and prov["textures"] == "1=5,2=1"
    assert prov["sampler"] == DEFAULT_SAMPLER == "unipc"


def test_generate_from_label_images_nrrd_with_texture_override(tiny_model_dir, tmp_path):
    masks = make_masks()
    sitk.WriteImage(masks.lung.to_sitk(), str(tmp_path / "lung.nii.gz"))
    sitk.WriteImage(masks.nodules.to_sitk(), str(tmp_path / "nodules.nrrd"))
    out = tmp_path / "ct.nrrd"
    result = run("generate", "--model", str(tiny_model_dir), "--mask", str(tmp_path / "lung.nii.gz"),
                 "--nodules", str(tmp_path / "nodules.nrrd"), "--texture", "1=3,2=4", "--steps", "2",
                 "--match-input", "--progress", "none", "--no-compress", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"encoding: raw" in out.read_bytes()[:4096]
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == masks.lung.size
    assert image.GetSpacing() == pytest.approx(masks.lung.spacing)
    assert image.GetOrigin() == pytest.approx(masks.lung.origin)
    assert image.GetDirection() == pytest.approx(masks.lung.direction)
    assert image.GetMetaData("LAND.Textures") == "1=3,2=4"
    assert "SYNTHETIC" in image.GetMetaData("NRRD_content")  # the NRRD "content:" field


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--texture", "1=7"], "1..5"),
        (["--mask", "/nonexistent/lung.nii.gz"], "/nonexistent/lung.nii.gz"),
        (["--steps", "0"], "step count"),
        (["--out", "ct.png"], ".nii.gz"),
        (["--guidance", "25"], "from 0 to 20"),
        (["--guidance", "nan"], "not a number"),
        (["--guidance-mode", "lungs"], "invalid choice"),
        (["--seed", str(2**64)], "from 0 to 18446744073709551615"),
        (["--seed", "-1"], "from 0 to"),
        (["--device", "tpu"], "use auto, cpu, cuda or cuda:N"),
        (["--device", "meta"], "use auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_input_exits_2_with_a_message(tiny_model_dir, tmp_path, args, message):
    masks = make_masks()
    write_seg_nrrd(tmp_path / "m.seg.nrrd", masks)
    base = {"--mask": str(tmp_path / "m.seg.nrrd"), "--out": str(tmp_path / "ct.nii.gz")}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value if key != "--out" else str(tmp_path / value)
    flat = [x for kv in base.items() for x in kv]
    result = run("generate", "--model", str(tiny_model_dir), "--steps", "1", *flat)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "error:" in result.stderr
    assert not (tmp_path / "ct.nii.gz").exists()


def test_nodule_outside_lung_warns_and_strict_fails(tiny_model_dir, tmp_path):
    masks = make_masks()
    masks.nodules.array[2:4, 2:4, 2:4] = 2  # a few voxels of nodule 2 in the corner, outside the lungs
    write_seg_nrrd(tmp_path / "m.seg.nrrd", masks)
    common = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--mask",
        str(tmp_path / "m.seg.nrrd"),
        "--steps",
        "1",
    ]
    warned = run(*common, "--out", str(tmp_path / "a.nii.gz"), "--progress", "json")
    assert warned.returncode == 0 and "outside" in warned.stderr
    codes = [json.loads(x).get("code") for x in warned.stdout.splitlines() if "warning" in json.loads(x)]
    assert "nodule_outside_lung" in codes and "untrained_model" in codes  # stable codes, not texts
    strict = run(*common, "--strict", "--out", str(tmp_path / "b.nii.gz"))
    assert strict.returncode == 2 and "outside" in strict.stderr
    assert not (tmp_path / "b.nii.gz").exists()


@pytest.mark.parametrize("damage", ["hash", "truncate", "missing-dir", "file"])
def test_model_problems_exit_3(tiny_model_dir, tmp_path, damage):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "vae.safetensors"
    if damage == "hash":
        meta = json.loads((model / "model.json").read_text(encoding="utf-8"))
        meta["weights"]["vae.safetensors"] = "0" * 64
        (model / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "file":
        model = weights
    else:
        model = tmp_path / "absent"
    result = run("generate", "--model", str(model), "--steps", "1", "--out", str(tmp_path / "ct.nii.gz"))
    assert result.returncode == 3, result.stderr
    expected = {"hash": "sha256", "truncate": "sha256", "missing-dir": "does not exist",
                "file": "is a file, not a model directory"}[damage]  # fmt: skip
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "ct.nii.gz").exists()


MODEL_COMMANDS = {  # every command whose --model defaults to the bundled demo model, without --model
    "generate": ["--progress", "none", "--out", "ct.nii.gz"],
    "teaching-set": ["--cases", "1", "--progress", "none", "--out", "set"],
    "sample-set": ["--unconditional", "--n", "1", "--progress", "none", "--out", "samples"],
    "demo-fidelity": ["--n", "1", "--out", "fidelity"],
    "info": [],
}


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_missing_default_model_is_explained(command, tmp_path, monkeypatch, capsys):
    """One rule for --model: without it every command uses the bundled demo model, and an installation
    without one is exit 3 with the same fix, before anything is written."""
    import land.cli
    import land.resources

    monkeypatch.setattr(land.resources, "demo_model_dir", lambda: tmp_path / "no-model")
    monkeypatch.chdir(tmp_path)
    code = land.cli.main([command, *MODEL_COMMANDS[command]])
    err = capsys.readouterr().err
    assert code == 3 and "no trained default model is bundled" in err and "--model DIR" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sample_set_defaults_to_the_bundled_model(tmp_path):
    from land.resources import demo_model_dir, has_demo_model

    if not has_demo_model():
        pytest.skip("no demo model bundled in this checkout")
    out = tmp_path / "samples"
    result = run("sample-set", "--unconditional", "--n", "1", "--steps", "1", "--progress", "none",
                 "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    (sample,) = out.glob("*.nii.gz")
    prov = read_provenance(sample)
    assert prov["model"].startswith(f"{demo_model_dir().name}@") and prov["model_trained"] == "true"


def test_sigterm_cancels_cleanly_without_partial_output(tiny_model_dir, tmp_path):
    out = tmp_path / "ct.nii.gz"
    proc = subprocess.Popen(
        [
            *LAND,
            "generate",
            "--model",
            str(tiny_model_dir),
            "--sampler",
            "ddpm",
            "--progress",
            "json",
            "--out",
            str(out),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until denoising has started
        if '"denoise"' in line or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "cancelled" in stderr
    assert list(Path(tmp_path).iterdir()) == []


def _open_files(pid: int) -> list[str]:
    try:
        return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:  # the process is gone, or a descriptor closed while listing
        return []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the files a process reads")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_the_model_loads_exits_130_with_one_line(tiny_model_dir, tmp_path, sig):
    """Issue 26: a signal while the model is being loaded (before generation installs its cancel handler)
    ended the process with 143 and no message (SIGTERM's default); it is exit 130 with the one-line
    "cancelled" message, no traceback, nothing written. The weights file is padded with a 4 GiB hole so that
    verifying its sha256 takes long enough to be caught at it."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = sorted(model.glob("*.safetensors"))
    for w in weights:
        os.truncate(w, w.stat().st_size + (4 << 30))  # sparse: no disk used; the sha256 check reads it all
    out = tmp_path / "out" / "ct.nii.gz"
    out.parent.mkdir()
    proc = subprocess.Popen([*LAND, "generate", "--model", str(model), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    names = {str(w) for w in weights}
    while proc.poll() is None and time.monotonic() < deadline:
        if names & set(_open_files(proc.pid)):
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    assert names & set(_open_files(proc.pid)), "the weights were never opened"
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, stderr)
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: cancelled by {sig.name}; outputs being written were discarded "
                     "(checkpoints already written are intact)"], stderr  # fmt: skip
    assert "Traceback" not in stderr
    assert list(out.parent.iterdir()) == []


def test_progress_json_into_a_closed_pipe_exits_quietly(tiny_model_dir, tmp_path):
    """`land generate --progress json | head -1`: the reader goes away; no traceback, exit 141, no output."""
    masks = make_masks()
    write_seg_nrrd(tmp_path / "m.seg.nrrd", masks)
    proc = subprocess.Popen(
        [*LAND, "generate", "--model", str(tiny_model_dir), "--mask", str(tmp_path / "m.seg.nrrd"), "--steps",
         "100", "--progress", "json", "--out", str(tmp_path / "ct.nii.gz")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and json.loads(proc.stdout.readline())  # the first event (a warning)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert not (tmp_path / "ct.nii.gz").exists()


def _limit_file_size(limit: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_write_failures_exit_2_leave_nothing_and_stale_partials_are_cleaned(tiny_model_dir, tmp_path):
    """Issue 15 item 5: --out an existing folder, or a disk that fills up while writing (a file-size limit
    in the child: ITK's gzip writer would truncate silently) -> exit 2 "could not write", no partial file,
    nothing at the target; a partial file left by a killed run is removed by the next write."""
    masks = make_masks()
    seg = tmp_path / "m.seg.nrrd"
    write_seg_nrrd(seg, masks)
    common = ["generate", "--model", str(tiny_model_dir), "--mask", str(seg), "--steps", "1",
              "--device", "cpu"]  # fmt: skip
    folder = tmp_path / "a_folder.nii.gz"
    folder.mkdir()
    result = run(*common, "--out", str(folder))
    assert result.returncode == 2 and "it is an existing folder" in result.stderr, result.stderr
    assert list(folder.iterdir()) == []

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "ct.nii.gz"
    full = subprocess.run([*LAND, *common, "--out", str(out), "--progress", "json"], capture_output=True,
                          text=True, timeout=300, preexec_fn=_limit_file_size(20_000))  # fmt: skip
    assert full.returncode == 2, full.stderr
    assert f"could not write {out}" in full.stderr and "Traceback" not in full.stderr
    assert json.loads(full.stdout.splitlines()[-1])["exit_code"] == 2
    assert list(out_dir.iterdir()) == []  # no CT, no sidecar, no partial file

    stale = out_dir / ".ct.nii.gz.999999999-0badc0de.partial.nii.gz"  # a killed run's leftover
    stale.write_bytes(b"\0" * 10)
    live = out_dir / f".ct.nii.gz.{os.getpid()}-0badc0de.partial.nii.gz"  # a running writer's: kept
    live.write_bytes(b"\0" * 10)
    assert run(*common, "--out", str(out)).returncode == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(["ct.nii.gz", "ct.json", live.name])


def test_every_command_help_has_a_description_option_help_and_the_exit_codes():
    """Issue 15 (help): every command explains itself, each option has help, defaults and exit codes show;
    the engine's error classes use the documented codes."""
    import argparse

    from land.cli import build_parser
    from land.interface.contract import EXIT_CANCELLED, EXIT_CODES, EXIT_INPUT, EXIT_MODEL
    from land.interface.errors import Cancelled, InputError, ModelError, TrainingDiverged

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert parser.description, name
        assert all(a.help for a in parser._actions), (name, [a.dest for a in parser._actions if not a.help])
        text = parser.format_help()
        assert "exit codes:" in text and "130" in text, name
    generate = " ".join(run("generate", "--help").stdout.split())  # independent of line wrapping
    for needed in ("--seed SEED random seed", "same CT", "demo masks", ".nii (provenance",
                   "(default: unipc)", "unipc 12", "examples:", "tiled: exact"):  # fmt: skip
        assert needed in generate, needed
    assert (InputError.exit_code, ModelError.exit_code, TrainingDiverged.exit_code, Cancelled.exit_code) == (
        EXIT_INPUT, EXIT_MODEL, EXIT_MODEL, EXIT_CANCELLED)  # fmt: skip
    assert set(EXIT_CODES) == {0, 1, 2, 3, 130, 141}


def test_bad_command_line_with_progress_json_ends_with_the_json_error_line(tmp_path):
    result = run("generate", "--sampler", "foo", "--progress", "json", "--out", str(tmp_path / "ct.nii.gz"))
    assert result.returncode == 2 and "invalid choice: 'foo'" in result.stderr
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["exit_code"] == 2 and "--sampler" in last["error"]
    plain = run("generate", "--sampler", "foo", "--out", str(tmp_path / "ct.nii.gz"))
    assert plain.returncode == 2 and plain.stdout == ""


def test_generate_options_to_argv_round_trips_through_the_parser():
    """The contract's GenerateOptions (what the Slicer module runs) builds a command line the real parser
    reads back to the same values; bad options are refused before any process starts."""
    from dataclasses import fields

    from land.cli import build_parser
    from land.interface.contract import DEFAULT_PRECISION, GenerateOptions, options_from_namespace
    from land.interface.errors import InputError

    opts = GenerateOptions(out="ct.nrrd", model="m", mask="a.seg.nrrd", nodules="n.nrrd", texture="1=5",
                           steps=7, seed=3, mode="nodule", guidance=2.0, guidance_mode="nodules",
                           precision="fp32", strict=True, compress=False, decode="full", max_memory="3G",
                           match_input=True, progress="json", device="cpu", sampler="ddim",
                           fit="scale")  # fmt: skip
    a = build_parser().parse_args(opts.to_argv())
    assert a.command == "generate" and options_from_namespace(GenerateOptions, a) == opts  # every field
    assert a.compress is False and "--no-compress" in opts.to_argv()
    d = build_parser().parse_args(GenerateOptions(out="x.nii.gz").to_argv())
    assert options_from_namespace(GenerateOptions, d) == GenerateOptions(out="x.nii.gz")  # the defaults
    assert d.steps is None and d.guidance is None and d.mode is None and d.precision == DEFAULT_PRECISION
    # every option the command does not use itself reaches LANDPipeline.generate under its own name
    import inspect

    from land.pipeline import LANDPipeline

    accepted = set(inspect.signature(LANDPipeline.generate).parameters)
    assert set(opts.pipeline_arguments()) <= accepted and opts.pipeline_arguments()["max_memory"] == 3 << 30
    # the parser is built from the fields: each option field is one flag of `land generate`
    flags = {x.dest for x in build_parser()._subparsers._group_actions[0].choices["generate"]._actions}
    assert {f.name for f in fields(GenerateOptions) if "cli" in f.metadata} <= flags
    bads = ((dict(sampler="euler"), "sampler"), (dict(steps=0), "step"), (dict(seed=-1), "seed"),
            (dict(guidance_mode="strong"), "guidance mode"), (dict(mode="x"), "mode"),
            (dict(precision="fp8"), "precision"),
            (dict(guidance=99.0, guidance_mode="nodules"), "guidance"),
            (dict(max_memory="lots"), "memory"), (dict(fit="stretch"), "--fit"))  # fmt: skip
    for bad, match in bads:
        with pytest.raises(InputError, match=match):
            GenerateOptions(out="x", **bad).to_argv()
    with pytest.raises(InputError, match="--temp-dir .* is not a folder"):
        GenerateOptions(out="x", temp_dir=str(Path(__file__).with_name("no-such-folder"))).validate()


def test_teaching_set_options_round_trip_through_the_parser():
    from land.cli import build_parser
    from land.interface.contract import TeachingSetOptions, options_from_namespace
    from land.interface.errors import InputError

    opts = TeachingSetOptions(out="set", cases=4, model="m", nodule_rate=0.5, textures="1,5",
                              diameters="6-20", steps=9, seed=2, guidance=2.0, guidance_mode="nodules",
                              lung_masks="lungs", burn_in=False, device="cpu", precision="fp32",
                              progress="json", pair_rate=0.5)  # fmt: skip
    a = build_parser().parse_args(opts.to_argv())
    assert "--pair-rate" in opts.to_argv()
    assert a.command == "teaching-set" and options_from_namespace(TeachingSetOptions, a) == opts
    # a client's None: the command's default (left out of the command line)
    d = build_parser().parse_args(TeachingSetOptions(out="s", cases=1, nodule_rate=None, seed=None).to_argv())
    assert (d.nodule_rate, d.seed, d.textures, d.progress) == (0.7, 0, "1,3,5", "bar")
    bads = ((dict(cases=0), "cases"), (dict(textures="1,6"), "textures"), (dict(diameters="25-4"), "diam"),
            (dict(nodule_rate=1.5), "nodule rate"), (dict(steps=0), "step"),
            (dict(seed=-1), "seed"), (dict(pair_rate=1.5), "pair rate"))  # fmt: skip
    for bad, match in bads:
        with pytest.raises(InputError, match=match):
            TeachingSetOptions(**{"out": "set", "cases": 2, **bad}).to_argv()


@pytest.mark.parametrize(
    ("textures", "diameters", "ok"),
    [("5,3,3", "4-25.5", True), ("1,6", "4-25", False), ("", "4-25", False), ("1,x", "4-25", False),
     ("1", "25-4", False), ("1", "0-4", False), ("1", "4-150", False), ("1", "8", True)],
)  # fmt: skip
def test_textures_and_diameters_have_one_rule_for_cli_python_and_panel(textures, diameters, ok):
    """land.interface.contract.parse_textures / parse_diameters decide for `land teaching-set`, the Python
    API's
    TeachingSettings and the Slicer panel (whose list forms are normalised through the same functions)."""
    from land.interface.contract import TeachingSetOptions, parse_diameters, parse_textures
    from land.interface.errors import InputError
    from land.teaching.plan import TeachingSettings

    def verdicts() -> list[bool]:
        results = []
        checks = [
            lambda: TeachingSetOptions(out="s", cases=1, textures=textures, diameters=diameters).validate(),
            lambda: TeachingSettings(
                cases=1, textures=parse_textures(textures), diameters=parse_diameters(diameters)
            ).validate(),  # fmt: skip
        ]
        for check in checks:
            try:
                check()
                results.append(True)
            except InputError:
                results.append(False)
        return results

    assert verdicts() == [ok, ok]
    if ok:
        assert parse_textures(textures) == tuple(sorted({int(t) for t in textures.split(",")}))
        assert parse_textures([int(t) for t in textures.split(",")]) == parse_textures(textures)
    with pytest.raises(InputError, match="diameters"):
        TeachingSettings(cases=1, diameters=(4.0, 150.0)).validate()  # tuples from Python: the same bound
    with pytest.raises(InputError, match="textures"):
        TeachingSettings(cases=1, textures=(0, 3)).validate()


def test_sample_set_options_round_trip_through_the_parser():
    """land sample-set's parser is built from SampleSetOptions: to_argv() parses back to the same options."""
    from land.cli import build_parser
    from land.interface.contract import SampleSetOptions, options_from_namespace
    from land.interface.errors import InputError

    opts = SampleSetOptions(model="m", out="s", n=8, masks="d", steps=12, seed=4, mode="nodule+lung",
                            max_memory="1G", guidance=2.0, progress="json", precision="fp32")  # fmt: skip
    a = build_parser().parse_args(opts.to_argv())
    assert a.command == "sample-set" and options_from_namespace(SampleSetOptions, a) == opts
    u = SampleSetOptions(model="m", out="s", n=2, unconditional=True)
    assert options_from_namespace(SampleSetOptions, build_parser().parse_args(u.to_argv())) == u
    bads = ((dict(n=0), "samples"), (dict(sampler="x"), "sampler"), (dict(steps=2000), "step"),
            (dict(masks=None), "not neither"), (dict(unconditional=True), "not both"),
            (dict(max_memory="x"), "memory"))  # fmt: skip
    for bad, match in bads:
        with pytest.raises(InputError, match=match):
            SampleSetOptions(**{"model": "m", "out": "s", "n": 2, "masks": "d", **bad}).to_argv()
