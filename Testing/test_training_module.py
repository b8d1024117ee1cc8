"""LANDTraining: the Logic on Slicer's real MRML (slicer-core) with real ``land`` child processes, and the
headless script (``LANDTraining/Scripts/train.py``) under plain Python.

The training runs use the ``tiny`` config on a 3-case phantom dataset at 32³ and a handful of steps, so each
child takes a few seconds (mostly importing torch).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from slicer_fixtures import *  # noqa: F403
from slicer_fixtures import REPO

from land.interface.contract import DEFAULT_SAMPLER, DEFAULT_STEPS
from land.train.checkpoint import load_checkpoint

TRAINING_DIR = REPO / "LANDTraining"
SCRIPT = TRAINING_DIR / "Scripts" / "train.py"
if str(TRAINING_DIR) not in sys.path:
    sys.path.insert(0, str(TRAINING_DIR))

from land.train import pipeline_run as pipeline  # noqa: E402
from land.train.config_files import bundled_configs, config_summary  # noqa: E402
from land.train.pipeline import PipelineRunner, stage_arguments  # noqa: E402
from land.train.pipeline_run import (  # noqa: E402
    DONE,
    SKIPPED,
    STAGES,
    STOPPED,
    TrainingOptions,
    TrainingRun,
)

TINY_CONFIG = REPO / "LANDSynthesis" / "land" / "resources" / "configs" / "tiny.json"  # the checkout's own


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # the children share this machine with other work
    return env


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """A 3-case dataset (``land phantoms``) at the tiny config's grid: 32³ at 8 mm."""
    from land.cli import main

    out = tmp_path_factory.mktemp("data") / "phantoms"
    assert main(["phantoms", "--n", "3", "--size", "32", "--spacing", "8", "--out", str(out)]) == 0
    return out


@pytest.fixture
def training_logic(mrml):
    from LANDTrainingLib.logic import LANDTrainingLogic

    logic = LANDTrainingLogic()
    logic.pythonExecutable = sys.executable
    logic.environment = child_env()
    yield logic
    logic.cleanup()


def alive(psutil, pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def load_script():
    spec = importlib.util.spec_from_file_location("land_train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------- static
def test_module_imports_without_qt(mrml):
    import LANDTraining

    assert not LANDTraining.HAVE_QT
    assert "qt" not in sys.modules and "ctk" not in sys.modules
    import LANDTrainingLib.logic as training_logic_module

    from land.train import pipeline as engine_pipeline

    assert training_logic_module.PipelineRunner is engine_pipeline.PipelineRunner  # the engine's, not a copy


def test_configs_found():
    configs = bundled_configs()
    assert {"paper", "small", "demo", "tiny"} <= set(configs)
    assert pipeline.resolve_config("tiny") == (TINY_CONFIG).resolve()
    with pytest.raises(pipeline.TrainingInputError, match="paper"):
        pipeline.resolve_config("nonexistent")
    assert "32x32x32" in config_summary("tiny")


def train_pipeline_parser():
    from land.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices["train-pipeline"]


def test_options_parser_is_built_from_the_option_fields():
    """``land train-pipeline``'s options come from TrainingOptions' fields: every field has its flag, the
    defaults are the fields', and to_argv() parses back to the same options (round trip)."""
    from dataclasses import fields

    parser = train_pipeline_parser()
    flags = {a.dest: a.option_strings for a in parser._actions}
    for f in fields(TrainingOptions):
        assert flags[f.name] == ["--" + f.name.replace("_", "-")], f.name
    defaults = TrainingOptions.from_namespace(parser.parse_args(["--data", "D", "--out", "O"]))
    assert defaults == TrainingOptions(data="D", out="O")
    options = TrainingOptions(
        data="D", out="O", config="paper", device="cpu", workers=3, limit=4, lung_weights="r231.pth",
        vae_steps=5, ldm_steps=6, samples=2, sample_steps=20, sampler="ddim", seed=7, unconditional=True,
        feature_weights="f.pth",
    )  # fmt: skip
    assert TrainingOptions.from_namespace(parser.parse_args(options.to_argv())) == options
    assert TrainingOptions(data="D", out="O").to_argv() == ["--data", "D", "--out", "O"]
    for bad in (["--out", "O"], ["--data", "D"], ["--data", "D", "--out", "O", "--vae-steps", "x"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(bad)
        assert e.value.code == 2
    with pytest.raises(pipeline.TrainingInputError, match="unknown training option"):
        TrainingOptions.from_any({"data": "D", "vaeSteps": 5})


def test_stage_order_and_the_script_forwards_to_the_engine():
    assert pipeline.parse_stages("all") == list(STAGES) == ["prepare", "vae", "ldm", "sample", "evaluate"]
    assert pipeline.parse_stages("evaluate,vae") == ["vae", "evaluate"]  # pipeline order, whatever given
    for stage in STAGES:
        assert pipeline.parse_stages(stage) == [stage]
    with pytest.raises(pipeline.TrainingInputError, match="unknown stage 'train'"):
        pipeline.parse_stages("prepare,train")
    script = load_script()
    forwarded = script.land_arguments(["--", "--data", "D", "--out", "O", "--resume"], in_slicer=False)
    assert forwarded == ["train-pipeline", "--data", "D", "--out", "O", "--resume"]
    in_slicer = script.land_arguments(["--data", "D", "--out", "O"], in_slicer=True)
    assert in_slicer[:5] == forwarded[:5] and in_slicer[-2] == "--python"
    assert script.land_arguments(["--python", "py"], in_slicer=True).count("--python") == 1
    assert script.main(["--data", "D", "--out", "O", "--stage", "bogus"]) == 2
    assert script.main(["--out", "O"]) == 2


def test_stage_commands(phantoms, tmp_path):
    params = TrainingOptions(data=str(phantoms), out=str(tmp_path / "run"), config="tiny", device="cpu")
    run = TrainingRun(params, STAGES, resume=True)
    out = (tmp_path / "run").resolve()
    args = {s: stage_arguments(s, run) for s in STAGES}
    assert args["prepare"][:5] == ["prepare-lidc", "--dicom-root", str(phantoms), "--out", str(phantoms)]
    assert args["vae"][:2] == ["train-vae", "--data"] and "--resume" not in args["vae"]
    assert args["vae"][args["vae"].index("--config") + 1] == str(TINY_CONFIG)
    assert args["ldm"][args["ldm"].index("--vae") + 1] == str(out / "vae")
    assert args["sample"] == [
        "sample-set", "--model", str(out / "ldm"), "--masks", str(phantoms), "--n", "8", "--out",
        str(out / "samples"), "--steps", str(DEFAULT_STEPS[DEFAULT_SAMPLER]), "--device", "cpu",
        "--progress", "json",
    ]  # fmt: skip
    assert args["evaluate"] == [
        "evaluate", "--real", str(phantoms), "--generated", str(out / "samples"), "--masks", str(phantoms),
        "--device", "cpu", "--out", str(out / "evaluation"),
    ]  # fmt: skip
    (out / "vae").mkdir(parents=True)
    (out / "vae" / "checkpoint.pt").write_bytes(b"")
    assert stage_arguments("vae", run)[-1] == "--resume"
    unconditional = TrainingRun(TrainingOptions(**{**params.__dict__, "unconditional": True}), STAGES, True)
    assert "--unconditional" in stage_arguments("sample", unconditional)


def test_parameter_node_round_trip(training_logic):
    node = training_logic.getParameterNode()
    assert node.GetParameter("Config") == "small" and node.GetParameter("Stages") == ",".join(STAGES)
    params = TrainingOptions(data="/d", out="/o", config="tiny", vae_steps=7, limit=None, unconditional=True)
    training_logic.setParametersToNode(node, params)
    assert training_logic.parametersFromNode(node) == params
    node.SetParameter("VaeSteps", "x")
    with pytest.raises(pipeline.TrainingInputError, match="VaeSteps"):
        training_logic.parametersFromNode(node)


def test_progress_tail_follows_a_rewritten_file(tmp_path):
    path = tmp_path / "progress.jsonl"
    tail = pipeline.ProgressTail(path)
    assert tail.read() == []
    path.write_text(
        '{"event": "start", "total": 4}\n{"event": "step", "step": 1}\n{"event": "st', encoding="utf-8"
    )
    assert [e["event"] for e in tail.read()] == ["start", "step"]  # the cut line waits
    with path.open("a", encoding="utf-8") as f:
        f.write('ep", "step": 2}\n')
    assert tail.read() == [{"event": "step", "step": 2}]
    path.write_text(
        '{"event": "start", "start_step": 1}\n', encoding="utf-8"
    )  # a resumed run truncates the file
    assert tail.read() == [{"event": "start", "start_step": 1}] and tail.restarted


# ---------------------------------------------------------------------------------------------- real runs
def test_sequence_stop_resume_and_hand_over(training_logic, phantoms, tmp_path, mrml):
    """prepare (skipped: prepared data) -> vae, stopped mid-way (process tree gone) -> Start refuses, Resume
    continues from the checkpoint -> ldm -> loss table/chart nodes -> a rerun skips everything -> the model
    goes to LANDSynthesis's parameter node."""
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "run"
    params = {"data": str(phantoms), "out": str(out), "config": "tiny", "device": "cpu", "ldm_steps": 2}
    logs: list[tuple[str, str, str]] = []

    # 1. run until the VAE has logged a few steps, then Stop
    run = training_logic.start(
        {**params, "vae_steps": 2000}, "prepare,vae,ldm", onLog=lambda *a: logs.append(a)
    )
    pids: set[int] = set()
    deadline = time.monotonic() + 120
    while training_logic.poll():
        assert time.monotonic() < deadline, run.summary()
        if run.child is not None:
            pids.update(run.child.descendant_pids())
        if run.statuses["vae"].step >= 3 and not run.stop_requested:
            training_logic.stop()
        time.sleep(0.05)
    assert run.state == TrainingRun.STOPPED, run.summary()
    assert [run.statuses[s].state for s in run.stages] == [SKIPPED, STOPPED, STOPPED]
    assert pids and not [p for p in pids if alive(psutil, p)]
    events = [
        json.loads(x)
        for x in (out / "vae" / "progress.jsonl").read_text(encoding="utf-8").splitlines()
        if x.strip()
    ]
    logged_step = max(e["step"] for e in events if e["event"] == "checkpoint")
    # Resume starts from the checkpoint file; Stop may kill the child after it wrote the file (atomically)
    # but before it logged the event, so the log can trail the file by one checkpoint.
    checkpoint_step = int(load_checkpoint(out / "vae" / "checkpoint.pt", "vae")["step"])
    assert 2 <= logged_step <= checkpoint_step < 2000 and not pipeline.training_finished(out / "vae")
    assert any(stage == "prepare" and "skipped" in line for stage, _, line in logs)
    assert (out / "logs" / "vae.log").is_file()

    # 2. Start (not Resume) refuses to overwrite the interrupted run; no child is started
    run = training_logic.run({**params, "vae_steps": 2000}, "vae,ldm", pollInterval=0.05)
    assert run.state == TrainingRun.FAILED and "Resume" in run.statuses["vae"].message
    assert run.statuses["vae"].return_code is None

    # 3. Resume: the VAE continues from its checkpoint to a shorter total, then the LDM trains
    vae_steps = checkpoint_step + 3
    run = training_logic.run(
        {**params, "vae_steps": vae_steps}, "prepare,vae,ldm", resume=True, pollInterval=0.05
    )
    assert run.state == TrainingRun.SUCCEEDED, run.summary()
    assert [run.statuses[s].state for s in run.stages] == [SKIPPED, DONE, DONE]
    assert "--resume" in run.statuses["vae"].arguments and "--resume" not in run.statuses["ldm"].arguments
    starts = [
        json.loads(x)
        for x in (out / "vae" / "progress.jsonl").read_text(encoding="utf-8").splitlines()
        if '"start"' in x
    ]
    assert starts[-1]["start_step"] == checkpoint_step and starts[-1]["total"] == vae_steps
    assert run.model_directory == (out / "ldm").resolve()
    assert json.loads((out / "ldm" / "model.json").read_text(encoding="utf-8"))["trained"] is True

    # 4. the loss curves: every logged VAE step (before and after the stop) in the table and the chart
    table, chart = training_logic.lossNodes("vae")
    columns = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert columns[0] == "step" and "l1" in columns
    steps = mrml.slicer.util.arrayFromTableColumn(table, "step")
    assert np.array_equal(steps, np.arange(1, vae_steps + 1))
    assert np.all(np.isfinite(mrml.slicer.util.arrayFromTableColumn(table, "l1")))
    assert chart.GetNumberOfPlotSeriesNodes() == len(columns) - 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNodeID() == table.GetID() and series.GetXColumnName() == "step"
    _, ldm_chart = training_logic.lossNodes("ldm")
    assert ldm_chart.GetNumberOfPlotSeriesNodes() >= 1

    # 5. a rerun skips the finished stages without starting a child
    run = training_logic.run(params, "vae,ldm", pollInterval=0.05)
    assert run.state == TrainingRun.SUCCEEDED
    assert [run.statuses[s].message for s in ("vae", "ldm")] == ["already trained"] * 2

    # 6. the new model is offered to LANDSynthesis
    node = training_logic.offerModelToSynthesis(run.model_directory)
    assert node.GetSingletonTag() == "LANDSynthesis"
    assert node.GetParameter("ModelDirectory") == str(run.model_directory)
    assert node.GetParameter("ModelSource") == "directory"
    from LANDSynthesisLib.logic import LANDSynthesisLogic

    assert LANDSynthesisLogic().getParameterNode().GetParameter("ModelDirectory") == str(run.model_directory)
    with pytest.raises(pipeline.TrainingError, match="not a finished"):
        training_logic.offerModelToSynthesis(out / "vae.missing")


def test_other_data_or_config_in_the_same_output_is_refused(training_logic, phantoms, tmp_path):
    out = tmp_path / "run"
    params = {"data": str(phantoms), "out": str(out), "config": "tiny", "device": "cpu"}
    run = training_logic.run(params, "prepare")
    assert run.state == TrainingRun.SUCCEEDED and run.statuses["prepare"].state == SKIPPED
    with pytest.raises(pipeline.TrainingInputError, match="another output folder"):
        training_logic.start({**params, "config": "small"}, "prepare")


def test_headless_script_exit_codes(phantoms, tmp_path):
    """The script runs `land train-pipeline`; its exit codes are the engine's contract
    (land.interface.contract)."""
    # a prepared dataset: prepare is skipped, exit 0
    ok = run_script("--data", str(phantoms), "--out", str(tmp_path / "a"), "--stage", "prepare")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "skipped" in ok.stdout
    # ldm before vae: the stage cannot run (input problem: which stage to run first), exit 2, no child started
    order = run_script(
        "--data", str(phantoms), "--out", str(tmp_path / "b"), "--stage", "ldm", "--config", "tiny"
    )
    assert order.returncode == 2 and "run the vae stage first" in order.stdout + order.stderr
    assert not (tmp_path / "b" / "logs" / "ldm.log").exists()
    # a folder that is neither a dataset nor LIDC-IDRI: the real `land prepare-lidc` prepares nothing, exit 2
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = run_script("--data", str(empty), "--out", str(tmp_path / "c"), "--stage", "prepare")
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "--dicom-root" in failed.stdout + failed.stderr and "nothing was written" in failed.stdout
    assert (tmp_path / "c" / "logs" / "prepare.log").is_file()
    # a child that exits non-zero (a config the engine rejects, exit 2): its code passes through, named
    config = tmp_path / "broken.json"
    config.write_text('{"name": "broken"}', encoding="utf-8")
    child = run_script(
        "--data", str(phantoms), "--out", str(tmp_path / "e"), "--stage", "vae", "--config", str(config)
    )
    assert child.returncode == 2, child.stdout + child.stderr
    assert "land train-vae exited with code 2" in child.stdout
    assert "error:" in (tmp_path / "e" / "logs" / "vae.log").read_text(encoding="utf-8")
    # bad arguments: exit 2
    assert (
        run_script("--data", str(phantoms), "--out", str(tmp_path / "d"), "--stage", "nope").returncode == 2
    )
    bad = run_script("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "d"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_train_pipeline_progress_json_is_land_events(phantoms, tmp_path):
    """`land train-pipeline --progress json`: stdout carries only land.interface.events (stage progress with
    its
    state, then done or the error with the process's exit code); the stages' output goes to stderr."""
    from land.interface.events import DoneEvent, ErrorEvent, ProgressEvent, parse_event

    land = [sys.executable, "-m", "land", "train-pipeline", "--data", str(phantoms), "--progress", "json"]
    ok = subprocess.run([*land, "--out", str(tmp_path / "a"), "--stage", "prepare"], capture_output=True,
                        text=True, env=child_env(), timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    events = [parse_event(line) for line in ok.stdout.splitlines()]
    assert None not in events, ok.stdout
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert progress and all(e.stage == "prepare" for e in progress)
    assert progress[-1].details["state"] == SKIPPED and progress[-1].fraction == 1.0
    assert events[-1] == DoneEvent(True, {"out": str(tmp_path / "a"), "model": None})
    assert "skipped" in ok.stderr  # the summary, beside the events

    config = tmp_path / "broken.json"
    config.write_text('{"name": "broken"}', encoding="utf-8")
    failed = subprocess.run([*land, "--out", str(tmp_path / "b"), "--stage", "vae", "--config", str(config)],
                            capture_output=True, text=True, env=child_env(), timeout=120)  # fmt: skip
    events = [parse_event(line) for line in failed.stdout.splitlines()]
    assert None not in events, failed.stdout
    assert [e.details["state"] for e in events if isinstance(e, ProgressEvent)][-1] == pipeline.FAILED
    assert isinstance(events[-1], ErrorEvent) and events[-1].exit_code == failed.returncode == 2
    assert "land train-vae exited with code 2" in events[-1].message


def test_sample_stage_progress_counts_samples_not_denoising_steps(tiny_model_dir, tmp_path, capsys):
    """Issue 14's measured bug: the sample stage showed 100 % after the first of N samples because each
    sample's denoise events carry step/total. It now follows sample-set's own 'sample' events."""
    from land.cli import main

    assert main(["sample-set", "--model", str(tiny_model_dir), "--n", "3", "--steps", "2", "--unconditional",
                 "--out", str(tmp_path / "s"), "--progress", "json"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    runner = PipelineRunner()
    status = pipeline.StageStatus("sample", state=pipeline.RUNNING)
    seen = []
    for line in lines:
        runner.handle_output_line(status, line)
        seen.append((status.step, status.total))
    samples = [json.loads(x) for x in lines if json.loads(x).get("stage") == "sample"]
    assert [e["step"] for e in samples] == [1, 2, 3] and all(e["total"] == 3 for e in samples)
    assert seen[-1] == (3, 3)
    first_done = next(i for i, line in enumerate(lines) if json.loads(line).get("stage") == "sample")
    assert all(step <= 1 for step, _ in seen[: first_done + 1])  # never 100 % before the last sample


def test_loss_table_grows_by_appending_rows(training_logic, mrml):
    """New log lines add rows to the loss table (the columns stay the same arrays) instead of a rewrite."""
    losses = {"l1": [(10, 0.5), (20, 0.4)], "kl": [(10, 2.0)]}
    training_logic.writeLossCurves("append-test", losses)
    table, chart = training_logic.lossNodes("append-test")
    step_column = table.GetTable().GetColumnByName("step")
    losses = {"l1": [(10, 0.5), (20, 0.4), (30, 0.3), (40, 0.2)], "kl": [(10, 2.0), (20, 1.5), (40, 1.0)]}
    training_logic.writeLossCurves("append-test", losses)
    assert table.GetTable().GetColumnByName("step") is step_column  # appended, not rebuilt
    util = mrml.slicer.util
    assert np.array_equal(util.arrayFromTableColumn(table, "step"), [10, 20, 30, 40])
    assert np.array_equal(util.arrayFromTableColumn(table, "l1"), [0.5, 0.4, 0.3, 0.2])
    kl = util.arrayFromTableColumn(table, "kl")  # the late kl of step 20 reached the row written before
    assert kl[0] == 2.0 and kl[1] == 1.5 and np.isnan(kl[2]) and kl[3] == 1.0
    losses["val"] = [(40, 0.7)]  # a new loss: the table is rebuilt with its column
    training_logic.writeLossCurves("append-test", losses)
    assert table.GetTable().GetColumnByName("step") is not step_column
    assert util.arrayFromTableColumn(table, "val")[3] == 0.7 and chart.GetNumberOfPlotSeriesNodes() == 3
