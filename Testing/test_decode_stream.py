"""Streaming decoding (land.decoding.streamed): equals full decoding, each layer once, spill files removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_decoding import make_vae, structured_latent

from land.decoding import streamed as ds
from land.decoding.streamed import decode_stream, plan_stream, streamable
from land.decoding.tiled import CPU_OVERHEAD_BYTES, choose_method, decode_full, decode_tiled

EXACT_ABS = 1e-5  # the bar: max |stream - full|


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def case() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    vae = make_vae((16, 32, 32), groups=8)
    z = structured_latent((1, 4, 9, 10, 7), seed=2)
    return vae, z, decode_full(vae, z)


def _budget_spilling(vae: torch.nn.Module, z: torch.Tensor) -> int:
    """A max_memory that keeps the small tensors in memory but spills the full-resolution ones."""
    plan = plan_stream(vae, z.shape, max_memory=2**40)
    return CPU_OVERHEAD_BYTES + plan.weight_bytes + 3 * 2**20


@pytest.mark.parametrize("slab_rows", [None, 1, 3, 8])
def test_equals_full_decode(case, slab_rows: int | None) -> None:
    vae, z, ref = case
    out = decode_stream(vae, z, slab_rows=slab_rows)
    assert out.shape == ref.shape == (1, 1, 36, 40, 28) and out.dtype == torch.float32
    assert float((out - ref).abs().max()) <= EXACT_ABS


def test_spills_to_disk_within_budget_and_cleans_up(case, tmp_path: Path) -> None:
    vae, z, ref = case
    budget = _budget_spilling(vae, z)
    plan = plan_stream(vae, z.shape, max_memory=budget)
    assert any(s.on_disk for s in plan.segments) and not all(s.on_disk for s in plan.segments)
    assert plan.peak_disk_bytes > 0 and "disk" in plan.describe()
    assert max(s.num_slabs for s in plan.segments) > 1
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(sum(len(files) for _, _, files in os.walk(tmp_path)))

    out = decode_stream(vae, z, max_memory=budget, progress=progress, spill_dir=tmp_path)
    assert max(seen) >= 1  # spill files existed while decoding
    assert list(tmp_path.iterdir()) == []  # and are gone
    assert len(seen) == plan.total_slabs
    assert float((out - ref).abs().max()) <= EXACT_ABS


def test_batch_and_residual_blocks() -> None:
    vae = make_vae((8, 16, 16), groups=4, num_res_blocks=2)
    z = torch.cat([structured_latent((1, 4, 7, 6, 9), seed=s) for s in (0, 1)])
    ref = decode_full(vae, z)
    out = decode_stream(vae, z, slab_rows=2)
    assert float((out - ref).abs().max()) <= EXACT_ABS
    assert float((out[0] - out[1]).abs().max()) > 1e-2


def test_cancel_removes_files_and_leaves_the_model(case, tmp_path: Path) -> None:
    vae, z, ref = case
    before = {k: v.clone() for k, v in vae.state_dict().items()}

    class Stop(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done == total // 2:
            raise Stop

    with pytest.raises(Stop):
        decode_stream(vae, z, max_memory=_budget_spilling(vae, z), progress=progress, spill_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    for k, v in vae.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert float((decode_stream(vae, z) - ref).abs().max()) <= EXACT_ABS


def test_tests_can_fail(case, monkeypatch: pytest.MonkeyPatch) -> None:
    """GroupNorm statistics that miss one slab (as a tiling bug would) are far outside EXACT_ABS."""
    vae, z, ref = case
    write = ds._Stored.write

    def forgetful(self: ds._Stored, row: int, x: torch.Tensor) -> None:
        keep = self.want_stats
        self.want_stats = keep and row > 0
        write(self, row, x)
        self.want_stats = keep

    monkeypatch.setattr(ds._Stored, "write", forgetful)
    out = decode_stream(vae, z, slab_rows=4)
    assert float((out - ref).abs().max()) > 100 * EXACT_ABS


def test_auto_chooses_stream_only_when_it_must() -> None:
    vae = make_vae((16, 32, 32), groups=8)
    shape = (1, 4, 9, 10, 7)
    cpu = torch.device("cpu")
    assert choose_method(vae, shape, None, cpu) == "passes"  # fits: decoded whole
    assert choose_method(vae, shape, CPU_OVERHEAD_BYTES + 2**20, cpu) == "stream"
    assert choose_method(vae, shape, CPU_OVERHEAD_BYTES + 2**20, cpu, tile_size=3) == "passes"
    attn = make_vae(
        (8, 16, 16), groups=4, attention_levels=(False, False, True), with_decoder_nonlocal_attn=True
    )
    assert not streamable(attn)
    assert choose_method(attn, shape, CPU_OVERHEAD_BYTES + 2**20, cpu) == "passes"
    z = structured_latent(shape, seed=4)
    out = decode_tiled(attn, z, max_memory=CPU_OVERHEAD_BYTES + 2**20)  # falls back and stays exact
    assert float((out - decode_full(attn, z)).abs().max()) <= 1e-4


def test_unsupported_layers_are_named() -> None:
    with pytest.raises(ds.UnsupportedDecoder, match="AutoencoderKL"):
        plan_stream(torch.nn.Conv3d(4, 4, 1), (1, 4, 4, 4, 4))
    tconv = make_vae((8, 16, 16), groups=4, use_convtranspose=True)
    assert not streamable(tconv)


def test_unusable_spill_folder_is_a_clear_input_error(case, tmp_path: Path) -> None:
    from land.interface.errors import InputError

    vae, z, _ = case
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match=r"temporary files .* GiB free there; fix: free disk space"):
        decode_stream(vae, z, max_memory=_budget_spilling(vae, z), spill_dir=not_a_folder)


def test_disk_space_is_checked_before_any_work(case, tmp_path: Path) -> None:
    """A spill folder without room for the plan's files is refused up front (the pipeline does this before
    denoising), with the space needed and the fix."""
    from land.interface.errors import InputError

    vae, z, _ = case
    plan = plan_stream(vae, z.shape, max_memory=_budget_spilling(vae, z))
    ds.check_disk_space(plan, tmp_path)  # this disk has room
    with pytest.raises(InputError, match=r"needs .* GiB of temporary disk space .* fix: free disk space"):
        ds.check_disk_space(plan, tmp_path, free=plan.peak_disk_bytes // 2)
    ds.check_disk_space(plan_stream(vae, z.shape, max_memory=2**40), tmp_path, free=0)  # nothing spilled


def test_generate_puts_the_decoders_files_in_temp_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``land generate --temp-dir`` (GenerateOptions.temp_dir): a CT that does not fit --max-memory is
    decoded with its spill files in that folder, which is empty again afterwards."""
    from land.interface.contract import GenerateOptions
    from land.pipeline import LANDPipeline

    pipe = LANDPipeline.from_pretrained(tiny_model_dir)
    latent = (1, 4, *pipe.config.latent_size[::-1])
    budget = _budget_spilling(pipe.vae, torch.zeros(latent))
    assert choose_method(pipe.vae, latent, budget, torch.device("cpu")) == "stream"
    spill = tmp_path / "spill"
    spill.mkdir()
    opts = GenerateOptions(out=str(tmp_path / "ct.nrrd"), steps=1, mode="none", temp_dir=str(spill))
    opts.max_memory = str(budget)
    files: list[int] = []

    def progress(event: dict) -> None:
        if event["stage"] == "decode":
            files.append(sum(len(f) for _, _, f in os.walk(spill)))

    pipe.generate(None, progress=progress, **opts.validate().pipeline_arguments())
    assert files and max(files) >= 1  # the decoder's layer files were in --temp-dir while decoding
    assert list(spill.iterdir()) == []


def test_spill_files_use_o_direct_where_possible_with_the_same_result(tmp_path: Path, monkeypatch) -> None:
    """Rows of whole 4 KiB blocks (here the 32x32 full-resolution planes) go through O_DIRECT on Linux;
    other planes (16x16) stay buffered; forcing every file buffered gives the same bits. The upsampling
    convolutions run fused (land.models.upconv)."""
    vae = make_vae((16, 32, 32), groups=8)
    z = structured_latent((1, 4, 6, 8, 8), seed=4)
    ref = decode_full(vae, z)
    ops = {op[0] for seg in ds._compile(vae) for b in seg.branches for op in b.ops}
    assert "upconv" in ops and "up" not in ops
    budget = _budget_spilling(vae, z)
    opened: list[tuple[str, bool]] = []
    real_open = ds._open_spill

    def recording(path: str, direct: bool) -> tuple[int, bool]:
        fd, used = real_open(path, direct)
        opened.append((path, used))
        return fd, used

    monkeypatch.setattr(ds, "_open_spill", recording)
    out = decode_stream(vae, z, max_memory=budget, spill_dir=tmp_path, slab_rows=5)
    assert float((out - ref).abs().max()) <= EXACT_ABS and list(tmp_path.iterdir()) == []
    assert opened
    probe = tmp_path / "probe"
    try:
        os.close(os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT))  # type: ignore[attr-defined]
        direct_here = True
    except (AttributeError, OSError):
        direct_here = False
    probe.unlink(missing_ok=True)
    assert all(used == direct_here for _, used in opened)  # the spilled tensors: 32x32 planes
    monkeypatch.setattr(ds, "_open_spill", lambda path, direct: real_open(path, False))
    buffered = decode_stream(vae, z, max_memory=budget, spill_dir=tmp_path, slab_rows=5)
    assert torch.equal(out, buffered)
    monkeypatch.setattr(ds, "_open_spill", real_open)
    monkeypatch.delattr(os, "preadv", raising=False)  # as on macOS and Windows: seek + readinto / write
    monkeypatch.delattr(os, "pwrite", raising=False)
    assert torch.equal(decode_stream(vae, z, max_memory=budget, spill_dir=tmp_path, slab_rows=5), out)
    for plane, direct in (((32, 32), direct_here), ((16, 16), False)):  # 16x16 floats: 1 KiB, not a block
        x = torch.randn(3, 7, *plane)
        stored = ds._Stored(x.shape, str(tmp_path / f"t{plane[0]}"), want_stats=False)
        assert stored.direct == direct
        stored.write(0, x[:, :4])
        stored.write(4, x[:, 4:])
        assert torch.equal(stored.read(2, 6), x[:, 2:6]) and torch.equal(stored.read(0, 7), x)
        stored.close()
    assert list(tmp_path.iterdir()) == []
