"""Matched pairs: the same CT without one nodule, identical beyond a margin around it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_masks

from land.imaging.io import read_volume
from land.interface.errors import InputError
from land.pipeline import LANDPipeline
from land.sampling.diffusion import KnownLatent, sample
from land.sampling.matched_pairs import generate_pair, without_nodule


def test_known_latent_keeps_the_recorded_trajectory_where_asked():
    def model(x, t):  # a denoiser whose output at a voxel depends on its neighbours
        return 0.3 * x + 0.1 * torch.roll(x, 1, dims=-1)

    shape = (1, 2, 6, 6, 6)
    recorded = KnownLatent.record()
    a = sample(model, shape, steps=8, generator=torch.Generator().manual_seed(1), known=recorded)
    assert len(recorded.states) == 9 and torch.equal(recorded.states[-1], a)
    where = torch.zeros(shape, dtype=torch.bool)
    where[..., :3] = True
    b = sample(lambda x, t: model(x, t) + 0.5, shape, steps=8, generator=torch.Generator().manual_seed(1),
               known=KnownLatent.keep(recorded, where))  # fmt: skip
    assert torch.equal(b[where], a[where]) and not torch.allclose(b[~where], a[~where])
    with pytest.raises(InputError, match="nothing recorded"):
        KnownLatent.keep(KnownLatent.record(), where)


def test_without_nodule_turns_its_voxels_into_lung():
    masks = make_masks(textures={1: 5, 2: 1})
    reduced = without_nodule(masks, 1)
    assert reduced.labels() == [2] and 1 not in reduced.textures and 1 not in reduced.names
    spot = masks.nodules.array == 1
    assert (reduced.lung.array[spot] > 0).all() and (reduced.nodules.array[spot] == 0).all()
    with pytest.raises(InputError, match=r"no nodule 7 \(nodules: 1, 2\)"):
        without_nodule(masks, 7)


def test_the_pair_differs_only_near_the_removed_nodule(tiny_model_dir):
    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    masks = make_masks(textures={1: 5, 2: 1})
    with_ct, without_ct, figures = generate_pair(pipe, masks, 1, steps=3, seed=4, precision="fp32")
    plain = pipe.generate(masks, steps=3, seed=4, precision="fp32")
    assert np.array_equal(with_ct.array, plain.array)  # recording does not change the sample
    grid_masks, _ = pipe.model_grid_masks(masks)
    from scipy import ndimage as ndi

    near = ndi.distance_transform_edt(grid_masks.nodules.array != 1) * 4.0 <= figures["margin_mm"] + 8 * 4.0
    diff = np.abs(with_ct.array.astype(np.int32) - without_ct.array)
    assert diff[near].max() > 0 and diff[~near].max() == 0
    assert figures["max_abs_hu_beyond_margin"] == 0 and figures["nodule"] == 1
    assert "without nodule 1" in without_ct.metadata["description"]
    assert without_ct.metadata["description"].startswith("SYNTHETIC")


def test_generate_pair_on_the_command_line(tiny_model_dir, tmp_path):
    from land.imaging.io import write_seg_nrrd

    masks = make_masks(textures={1: 5, 2: 1})
    write_seg_nrrd(tmp_path / "m.seg.nrrd", masks)
    out = tmp_path / "ct.nrrd"
    base = [sys.executable, "-m", "land", "generate", "--model", str(tiny_model_dir), "--mask",
            str(tmp_path / "m.seg.nrrd"), "--steps", "2", "--out", str(out)]  # fmt: skip
    run = subprocess.run([*base, "--pair", "2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    pair = tmp_path / "ct_without_nodule_2.nrrd"
    assert "matched pair" in run.stdout and pair.is_file() and out.is_file()
    assert read_volume(pair).array.shape == read_volume(out).array.shape
    bad = subprocess.run(
        [*base[:-1], str(tmp_path / "x.nrrd"), "--pair", "9"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "no nodule 9" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.nrrd").exists()
