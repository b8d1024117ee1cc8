"""Matched pairs in teaching sets (issue 25): a case with nodules and its twin without one of them, identical
beyond a margin around it, exported as ordinary SYNTHETIC cases in random order; the key names the pair and
scoring counts a mark in the twin where the nodule was as a false positive."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi
from test_teaching import run_cli

from land.imaging.io import read_masks
from land.pipeline import LANDPipeline
from land.teaching.answers import read_pairs
from land.teaching.build import full_settings
from land.teaching.font import text_bitmap
from land.teaching.plan import (
    TeachingSettings,
    case_ids,
    case_layout,
    nodule_case_indices,
    pair_case_indices,
    plan_case,
)
from land.teaching.score import score_files

STEPS = 2
ARGS = ["--cases", "3", "--nodule-rate", "0.67", "--pair-rate", "1", "--textures", "3,5", "--diameters",
        "10-20", "--steps", str(STEPS), "--seed", "5", "--progress", "json"]  # fmt: skip
SETTINGS = TeachingSettings(cases=3, nodule_rate=0.67, textures=(3, 5), diameters=(10.0, 20.0), seed=5,
                            pair_rate=1.0)  # fmt: skip


HEADER_TEXT = ("SeriesDescription", "StudyDescription", "ImageComments", "DerivationDescription", "PatientID")


def read_hu(folder: Path) -> np.ndarray:
    slices = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])


@pytest.fixture(scope="module")
def pair_set(tiny_model_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """3 cases, 2 with nodules, each of those with its matched twin: 5 cases (burn-in on)."""
    out = tmp_path_factory.mktemp("pairs") / "set"
    code, text = run_cli(["teaching-set", "--model", str(tiny_model_dir), "--out", str(out), *ARGS])
    assert code == 0, text
    return out, [json.loads(line) for line in text.splitlines()]


def test_layout_deals_twins_among_the_cases_and_keeps_plain_sets_as_they_were():
    plain = TeachingSettings(cases=10, nodule_rate=0.6, seed=1)
    assert case_layout(plain).base == case_ids(10) and not case_layout(plain).twin
    assert pair_case_indices(plain) == [] and "pair_rate" not in plain.to_json()  # earlier set ids unchanged
    positions = set()
    for seed in range(12):
        s = TeachingSettings(cases=10, nodule_rate=0.6, seed=seed, pair_rate=0.5)
        pairs = pair_case_indices(s)
        assert len(pairs) == 3 and set(pairs) <= nodule_case_indices(s)  # round(0.5 * 6)
        layout = case_layout(s)
        assert layout == case_layout(s) and layout.total == 13
        assert sorted([*layout.base, *layout.twin.values()]) == case_ids(13)  # every id once
        positions |= {case_ids(13).index(t) for t in layout.twin.values()}
        assert layout.cases_of(pairs[0]) == [layout.base[pairs[0]], layout.twin[pairs[0]]]
    assert len(positions) > 6  # twins land anywhere, not after their originals or at the end
    with pytest.raises(Exception, match="pair-rate"):
        TeachingSettings(cases=2, pair_rate=1.5).validate()


def test_pair_set_progress_key_and_manifest(pair_set, tiny_model_dir):
    out, lines = pair_set
    done = lines[-1]
    assert done["done"] and done["complete"] and done["pairs"] == 2 and done["generated"] == 5
    steps = [e["step"] for e in lines if e.get("stage") == "case"]
    assert steps == [0, 1, 2, 3, 4, 5] and all(e["total"] == 5 for e in lines if e.get("stage") == "case")
    layout = case_layout(SETTINGS)
    twins = {layout.base[i]: t for i, t in layout.twin.items()}
    assert len(twins) == 2
    doc = json.loads((out / "key" / "answers.json").read_text(encoding="utf-8"))
    assert [c["case"] for c in doc["cases"]] == case_ids(5)
    assert doc["settings"]["pair_rate"] == 1.0
    marker = json.loads((out / "teaching.json").read_text(encoding="utf-8"))
    assert marker["settings"]["pair_rate"] == 1.0
    cases = {c["case"]: c for c in doc["cases"]}
    assert {(p["with_nodule"], p["without_nodule"]) for p in doc["pairs"]} == set(twins.items())
    for p in doc["pairs"]:
        with_ids = [n["nodule"] for n in cases[p["with_nodule"]]["nodules"]]
        without_ids = [n["nodule"] for n in cases[p["without_nodule"]]["nodules"]]
        assert p["nodule"] in with_ids and without_ids == [k for k in with_ids if k != p["nodule"]]
        assert cases[p["with_nodule"]]["pair"] == cases[p["without_nodule"]]["pair"] == p
        assert p["max_abs_hu_beyond_margin"] == 0 and p["identical_beyond_mm"] > 0
        seg = read_masks(out / "key" / "segmentations" / f"{p['without_nodule']}.seg.nrrd")
        # the twin's segments keep the original's names ("Nodule 3" stays "Nodule 3"; label values are 1..K)
        assert sorted(seg.names.values()) == sorted(f"Nodule {k}" for k in without_ids)
    with (out / "key" / "pairs.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["with_nodule"], r["without_nodule"], int(r["nodule"])) for r in rows] == [
        (p["with_nodule"], p["without_nodule"], p["nodule"]) for p in doc["pairs"]
    ]
    assert [(k.with_case, k.without_case) for k in read_pairs(out)] == [
        (r["with_nodule"], r["without_nodule"]) for r in rows
    ]
    assert "matched pair" in (out / "key" / "index.html").read_text(encoding="utf-8")
    # the same command again: every case (pairs included) is finished and skipped
    code, text = run_cli(["teaching-set", "--model", str(tiny_model_dir), "--out", str(out), *ARGS])
    again = json.loads(text.splitlines()[-1])
    assert code == 0 and again["complete"] and (again["generated"], again["skipped"]) == (0, 5)


def test_twin_equals_its_original_beyond_the_margin(pair_set, tiny_model_dir):
    out, _ = pair_set
    doc = json.loads((out / "key" / "answers.json").read_text(encoding="utf-8"))
    for p in doc["pairs"]:
        with_hu, without_hu = (
            read_hu(out / "dicom" / p["with_nodule"]),
            read_hu(out / "dicom" / p["without_nodule"]),
        )
        labels = read_masks(out / "key" / "segmentations" / f"{p['with_nodule']}.seg.nrrd").nodules.array
        # the margin is counted in latent voxels (4 image voxels of 4 mm) from those the nodule touches, whose
        # edge lies up to 3 voxels past the nodule: chessboard distance from the nodule + 16 mm
        mm = ndi.distance_transform_cdt(labels != p["nodule"], metric="chessboard") * 4.0
        near = mm <= p["identical_beyond_mm"] + 4 * 4.0
        diff = np.abs(with_hu - without_hu)
        beyond = float(diff[~near].max())
        assert beyond == 0.0, f"{p['without_nodule']} differs from {p['with_nodule']} by {beyond} HU far away"
        assert diff[near].max() > 0  # and the nodule's neighbourhood was drawn anew
        print(
            f"pair {p['with_nodule']}/{p['without_nodule']}: max |dHU| beyond the margin {beyond:g}, "
            f"near the nodule {diff[near].max():g}"
        )
    # the original of a pair is exactly the case a set without pairs would hold
    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    layout = case_layout(SETTINGS)
    i = next(iter(layout.twin))
    plan = plan_case(SETTINGS, i, pipe.config.grid_size, pipe.config.spacing, case=layout.base[i])
    ct = pipe.generate(plan.masks(), steps=STEPS, seed=plan.seed, device="cpu")
    hu = read_hu(out / "dicom" / layout.base[i])
    glyph = text_bitmap("SYNTHETIC")
    corner = np.zeros(hu.shape[1:], bool)
    corner[: glyph.shape[0] + 4, : glyph.shape[1] + 4] = True
    assert np.abs(hu[:, ~corner] - ct.array[:, ~corner]).max() <= 0.5


def test_twins_are_labelled_like_every_case_and_do_not_give_themselves_away(pair_set):
    out, _ = pair_set
    doc = json.loads((out / "key" / "answers.json").read_text(encoding="utf-8"))
    for case in case_ids(5):
        for f in sorted((out / "dicom" / case).glob("*.dcm"))[::16]:
            ds = pydicom.dcmread(f)
            assert str(ds.PatientName) == f"SYNTHETIC^LAND^{case}" and "SYNTHETIC" in ds.SeriesDescription
            assert ds.BurnedInAnnotation == "YES"
            text = " ".join(str(ds.get(k, "")) for k in HEADER_TEXT).lower()
            assert "without" not in text and "pair" not in text and "seed" not in text
    twin = doc["pairs"][0]["without_nodule"]
    image = sitk.ReadImage(str(out / "key" / "thumbnails" / f"{twin}.png"))
    rgb = sitk.GetArrayFromImage(image)
    assert np.all(rgb == (0, 200, 255), axis=-1).any()  # where the nodule was, outlined in cyan


def test_scoring_a_mark_where_the_twin_has_no_nodule(pair_set, tmp_path):
    out, _ = pair_set
    doc = json.loads((out / "key" / "answers.json").read_text(encoding="utf-8"))
    first, second = doc["pairs"]
    x, y, z = first["centre_mm"]
    reads = tmp_path / "reads.csv"
    with_case, without_case = first["with_nodule"], first["without_nodule"]
    reads.write_text(
        f"case,x,y,z\n{with_case},{x},{y},{z}\n{without_case},{x + 1},{y},{z}\n", encoding="utf-8"
    )
    r = score_files(out, reads)
    assert r["false_positives"] == 1 and r["false_positives_per_case"] == {first["without_nodule"]: 1}
    assert r["detected"] == 1 and r["cases"] == 5
    assert r["matched_pairs"] == [
        {"with_nodule": with_case, "without_nodule": without_case, "nodule": first["nodule"],
         "detected_with": True, "marked_without": True},
        {"with_nodule": second["with_nodule"], "without_nodule": second["without_nodule"],
         "nodule": second["nodule"], "detected_with": False, "marked_without": False},
    ]  # fmt: skip
    assert (r["pairs_detected_with"], r["pairs_marked_without"]) == (1, 1)
    code, text = run_cli(["teaching-score", "--answers", str(out), "--reads", str(reads)])
    assert code == 0 and "matched pairs    2" in text


def test_pair_rate_enters_the_set_id_only_when_on(tiny_model_dir, tmp_path):
    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    plain = TeachingSettings(cases=2, nodule_rate=1.0, seed=1)
    assert "pair_rate" not in full_settings(plain, pipe, 2, True)
    paired = full_settings(TeachingSettings(cases=2, nodule_rate=1.0, seed=1, pair_rate=0.5), pipe, 2, True)
    assert paired == {**full_settings(plain, pipe, 2, True), "pair_rate": 0.5}
    code, text = run_cli(["teaching-set", "--model", str(tiny_model_dir), "--cases", "2", "--out",
                          str(tmp_path / "x"), "--pair-rate", "1.5", "--progress", "json"])  # fmt: skip
    assert code == 2 and "pair-rate" in json.loads(text.splitlines()[-1])["error"]
