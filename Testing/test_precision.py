"""--precision (issues 16, 17): fp32 is exact; bf16/fp16 autocast only the U-Net, stay close to fp32 and are
recorded in the provenance; the default auto is bf16 on a CPU with native bfloat16, else fp32. CUDA checks
(skipped without a GPU) compare devices and decoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_masks

from land.interface.contract import PRECISIONS, check_precision
from land.interface.errors import InputError
from land.pipeline import LANDPipeline, native_bf16_cpu, resolve_precision

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")


@pytest.fixture(scope="module")
def pipe(tiny_model_dir) -> LANDPipeline:
    return LANDPipeline.from_pretrained(tiny_model_dir)


def _ct(pipe, **kw) -> np.ndarray:
    ct = pipe.generate(make_masks(), steps=3, seed=4, device=kw.pop("device", "cpu"), **kw)
    return ct.array.astype(np.float32), ct.metadata


def test_auto_resolves_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16_cpu() else "fp32")
    assert resolve_precision("auto", cuda) == "fp32"  # until measured on a GPU (issue 16)
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, cpu) == resolve_precision(p, cuda) == p
    with pytest.raises(InputError, match="unknown precision"):
        resolve_precision("half", cpu)


def test_default_is_auto_and_reduced_precisions_stay_close(pipe):
    resolved = resolve_precision("auto", torch.device("cpu"))
    default, meta = _ct(pipe)
    assert meta["precision"] == resolved  # what ran, never "auto"
    plain, meta = _ct(pipe, precision="fp32")
    assert meta["precision"] == "fp32"
    assert np.array_equal(default, plain) == (resolved == "fp32")
    for precision in ("bf16", "fp16"):
        low, low_meta = _ct(pipe, precision=precision)
        assert low_meta["precision"] == precision
        diff = np.abs(low - plain)
        assert diff.max() > 0  # it really ran in reduced precision
        assert diff.mean() < 0.05 * (plain.max() - plain.min()), (precision, diff.mean())
    with pytest.raises(InputError, match="unknown precision 'fp8'"):
        pipe.generate(make_masks(), steps=1, device="cpu", precision="fp8")
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16") and check_precision("bf16") == "bf16"


def test_teaching_set_id_changes_only_for_reduced_precision(pipe):
    from land.teaching.build import full_settings
    from land.teaching.plan import TeachingSettings

    settings = TeachingSettings(cases=2)
    assert full_settings(settings, pipe, 3, True) == full_settings(settings, pipe, 3, True, precision="fp32")
    assert full_settings(settings, pipe, 3, True, precision="bf16")["precision"] == "bf16"


@CUDA
def test_cuda_matches_cpu_and_bf16_stays_close(pipe):
    cpu, _ = _ct(pipe)
    gpu, meta = _ct(pipe, device="cuda")
    assert meta["device"] == "cuda"
    assert np.abs(gpu - cpu).max() <= 2.0  # HU: float32 on both, different kernels
    bf16, _ = _ct(pipe, device="cuda", precision="bf16")
    assert np.abs(bf16 - gpu).mean() < 0.05 * (gpu.max() - gpu.min())


@CUDA
def test_tiled_decode_on_cuda_equals_full_decode(pipe):
    from land.decoding.tiled import decode_full, decode_tiled

    z = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    vae = pipe.vae.to("cuda").eval()
    with torch.inference_mode():
        full = decode_full(vae, z.cuda()).cpu()
        tiled = decode_tiled(vae, z.cuda(), max_memory=64 * 2**20, device=torch.device("cuda")).cpu()
    assert (full - tiled).abs().max() < 1e-4


@CUDA
def test_auto_device_picks_cuda():
    from land.pipeline import resolve_device

    assert resolve_device("auto").type == "cuda"
