"""``land sample-set`` (resumable, rank shares), ``land evaluate`` end to end, ``land benchmark --size``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from land.cli import main
from land.data import hu_to_unit
from land.eval.features import WEIGHTS_FILE, medicalnet_resnet50
from land.eval.report import HISTOGRAM_NOTE, EvalOptions, evaluate, feature_stats
from land.eval.sample_set import plan_jobs, run_sample_set
from land.eval.sets import list_volumes, wdm_unit
from land.imaging.io import read_provenance, read_volume, sidecar_path, write_volume
from land.interface.errors import InputError
from land.world.phantom import write_phantom_dataset


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, 3, seed=0, size=64, spacing=4.0, n_nodules=(1, 2))
    return root


def test_plan_jobs_names_seeds_and_cases(tmp_path):
    jobs = plan_jobs(5, tmp_path, seed=10, cases=["a", "b/c"])
    assert [j.seed for j in jobs] == [10, 11, 12, 13, 14]
    assert [j.case for j in jobs] == ["a", "b/c", "a", "b/c", "a"]
    assert jobs[1].out.name == "sample_0001_b_c_seed11.nii.gz"
    assert plan_jobs(1, tmp_path)[0].out.name == "sample_0000_seed0.nii.gz"


def test_sample_set_resumes_and_splits_ranks(tiny_model_dir, phantoms, tmp_path):
    out = tmp_path / "samples"
    args = ["sample-set", "--model", str(tiny_model_dir), "--masks", str(phantoms), "--steps", "2",
            "--out", str(out), "--progress", "none"]  # fmt: skip
    assert main([*args, "--n", "2"]) == 0
    first = sorted(out.glob("*.nii.gz"))
    assert [p.name for p in first] == [
        "sample_0000_case_0000_seed0.nii.gz",
        "sample_0001_case_0001_seed1.nii.gz",
    ]
    prov = read_provenance(first[1])
    assert prov["seed"] == "1" and prov["case"] == "case_0001" and float(prov["peak_memory_gb"]) > 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in first}
    sidecar_path(first[1]).unlink()  # an unfinished sample (no sidecar) is redone
    assert main([*args, "--n", "3"]) == 0
    files = sorted(out.glob("*.nii.gz"))
    assert len(files) == 3 and files[0].stat().st_mtime_ns == mtimes[first[0].name]
    assert files[1].stat().st_mtime_ns != mtimes[first[1].name] and sidecar_path(files[1]).is_file()

    split = tmp_path / "split"
    done = [run_sample_set(tiny_model_dir, split, 3, None, steps=2, rank=r, world=2) for r in (1, 0)]
    assert [d["written"] for d in done] == [1, 2]
    assert sorted(p.name for p in split.glob("*.nii.gz")) == [
        f"sample_000{i}_seed{i}.nii.gz" for i in range(3)
    ]


def test_sample_set_guidance_reaches_every_sample(tiny_model_dir, phantoms, tmp_path):
    base = ["sample-set", "--model", str(tiny_model_dir), "--masks", str(phantoms), "--steps", "2",
            "--n", "1", "--progress", "none"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "g"), "--guidance", "3", "--guidance-mode", "full"]) == 0
    plain, guided = (next((tmp_path / d).glob("*.nii.gz")) for d in ("plain", "g"))
    assert read_provenance(plain)["guidance"] == "none" and read_provenance(guided)["guidance"] == "3 (full)"
    assert not np.array_equal(read_volume(plain).array, read_volume(guided).array)
    assert main([*base, "--out", str(tmp_path / "bad"), "--guidance", "-1"]) == 2


def test_sample_set_needs_masks_or_unconditional(tiny_model_dir, tmp_path, capsys):
    base = ["sample-set", "--model", str(tiny_model_dir), "--n", "1", "--out", str(tmp_path)]
    for extra in ([], ["--masks", str(tmp_path), "--unconditional"]):
        assert main(base + extra) == 2
        assert "give a mask dataset (--masks DIR) or --unconditional" in capsys.readouterr().err
    code = main(["sample-set", "--model", str(tiny_model_dir), "--masks", str(tmp_path / "none"), "--n", "1",
                 "--out", str(tmp_path / "o"), "--progress", "none"])  # fmt: skip
    assert code == 2


def test_evaluate_end_to_end(tiny_model_dir, phantoms, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAND_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    gen = tmp_path / "gen"
    assert run_sample_set(tiny_model_dir, gen, 3, phantoms, steps=2)["written"] == 3
    torch.manual_seed(0)
    weights = tmp_path / WEIGHTS_FILE  # random weights in MedicalNet's file format
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in medicalnet_resnet50().state_dict().items()}}, weights
    )
    out = tmp_path / "report"
    base = ["evaluate", "--real", str(phantoms), "--generated", str(gen), "--masks", str(phantoms), "--quiet"]
    assert main([*base, "--feature-weights", str(weights), "--ms-ssim-kernel", "3", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["fid"]["available"] and report["fid"]["fid"] > 0 and not report["fid"]["real_stats_cached"]
    assert report["fid"]["fid_x1e3"] == pytest.approx(report["fid"]["fid"] * 1e3)
    assert report["ms_ssim"]["available"] and report["ms_ssim"]["pairs"] == 3
    assert report["memory"]["available"] and report["memory"]["peak_gb"] > 0
    fid_real = report["fidelity_real"]
    assert report["fidelity"]["cases"] == 3 and fid_real["lung_dice_mean"] > 0.9  # phantoms obey their masks
    for name in ("montage.png", "hu_histograms.png", "nodule_hu_by_texture.png", "report.md"):
        assert (out / name).stat().st_size > 1000
    md = (out / "report.md").read_text(encoding="utf-8")
    assert report["command"] in md and "| model | FID | FID (x10^3) | MS-SSIM | memory (GB) |" in md
    assert " over 3 pairs of generated samples" in md and HISTOGRAM_NOTE in md
    if report["fidelity"]["texture_hu_spearman_rho"] is not None and report["fidelity"]["nodules"] < 10:
        assert "a small sample, the rho is unreliable" in md

    # the real set's statistics are cached per set content and extractor (a small pluggable extractor here)
    small = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 5, stride=4), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten()
    )
    real2 = tmp_path / "real2"
    shutil.copytree(gen, real2)
    opts = EvalOptions(
        real=real2, generated=gen, out=tmp_path / "r1", cache_dir=tmp_path / "c", ms_ssim_kernel=3
    )
    first = evaluate(opts, extractor=small, log=lambda _m: None)["fid"]
    assert not first["real_stats_cached"] and first["fid"] == pytest.approx(0.0, abs=1e-6)  # same volumes
    assert evaluate(opts, extractor=small, log=lambda _m: None)["fid"]["real_stats_cached"]
    case = next(real2.glob("*.nii.gz"))
    vol = read_volume(case)
    edited = vol.array.copy()  # not an affine HU change: the default wdm scaling (min-max) undoes those
    edited[: edited.shape[0] // 2] = -1000
    write_volume(case, vol.with_array(edited), vol.metadata)
    changed = evaluate(opts, extractor=small, log=lambda _m: None)["fid"]
    assert not changed["real_stats_cached"] and changed["fid"] > 1e-6

    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "r2")]) == 0
    r2 = json.loads((tmp_path / "r2" / "report.json").read_text(encoding="utf-8"))
    assert not r2["fid"]["available"] and WEIGHTS_FILE in r2["fid"]["reason"] and "fid" not in r2["fid"]
    assert not r2["ms_ssim"]["available"] and "112" in r2["ms_ssim"]["reason"]  # 64^3 < 112^3 for kernel 7
    assert "FID unavailable" in capsys.readouterr().out
    assert main([*base, "--feature-weights", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "r3")]) == 2


class MeanOfInput(torch.nn.Module):
    """A feature 'network' whose one feature is the mean of the [0, 1] volume it is given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1, keepdim=True)


def test_fid_features_see_the_chosen_intensity_protocol(phantoms, tmp_path):
    vset = list_volumes(phantoms)
    arrays = [read_volume(f).array for f in vset.files]
    means = {}
    for protocol, scale in (("wdm", wdm_unit), ("fixed-window", hu_to_unit)):
        opts = EvalOptions(
            real=phantoms,
            generated=phantoms,
            out=tmp_path,
            cache_dir=tmp_path / "c",
            intensity_protocol=protocol,
        )
        stats, cached = feature_stats(vset, MeanOfInput(), opts, log=lambda _m: None)
        assert not cached  # one cache entry per protocol: wdm statistics are never reused for fixed-window
        want = np.mean([scale(a).mean() for a in arrays])
        assert stats.mu[0] == pytest.approx(want, rel=1e-5)
        means[protocol] = stats.mu[0]
    assert abs(means["wdm"] - means["fixed-window"]) > 0.01


def test_evaluate_intensity_protocol_option(phantoms, tmp_path, capsys):
    base = ["evaluate", "--real", str(phantoms), "--generated", str(phantoms), "--no-fid", "--quiet",
            "--ms-ssim-kernel", "3", "--cache", str(tmp_path / "cache")]  # fmt: skip
    ms = {}
    for protocol in ("wdm", "fixed-window", None):
        out = tmp_path / f"r-{protocol}"
        extra = [] if protocol is None else ["--intensity-protocol", protocol]
        assert main([*base, *extra, "--out", str(out)]) == 0
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        md = (out / "report.md").read_text(encoding="utf-8")
        used = protocol or "wdm"  # the default
        assert report["protocol"]["intensity_protocol"] == used
        assert f"--intensity-protocol {used}" in report["command"]
        ms[protocol] = report["ms_ssim"]["mean"]
        if used == "wdm":
            assert report["protocol"]["hu_window"] is None
            assert (
                "Intensity protocol: wdm (HU clipped to [-1000, per-volume 99.9th percentile], min-max to "
                "[0,1] per volume)" in md
            )
        else:
            assert report["protocol"]["hu_window"] == [-1000.0, 1000.0]
            assert "Intensity protocol: fixed-window (HU clipped to [-1000, 1000], mapped linearly" in md
    assert ms[None] == ms["wdm"] != ms["fixed-window"]  # MS-SSIM reads volumes scaled by the same protocol

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--intensity-protocol", "zscore", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "--intensity-protocol" in err and "invalid choice: 'zscore'" in err and "'wdm', 'fixed-window'" in err
    )
    assert not (tmp_path / "bad").exists()
    with pytest.raises(InputError, match="--intensity-protocol wdm or fixed-window"):
        evaluate(
            EvalOptions(real=phantoms, generated=phantoms, out=tmp_path / "bad", intensity_protocol="hu")
        )


def test_benchmark_size_and_json(tiny_model_dir, capsys):
    assert main(["benchmark", "--model", str(tiny_model_dir), "--size", "128", "--steps", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (
        r["grid"] == [128, 128, 128]
        and r["latent"] == [32, 32, 32]
        and r["threads"] >= 1
        and r["peak_rss_gb"] > 0
    )
    assert main(["benchmark", "--model", str(tiny_model_dir), "--size", "96", "--steps", "2"]) == 2
