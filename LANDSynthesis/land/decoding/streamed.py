"""Exact, bounded-memory decoding of MONAI ``AutoencoderKL`` decoders in which every convolution runs once.

A decoder is a chain of local ops (convolutions, SiLU, nearest upsampling, residual sums) broken by
``GroupNorm`` layers, whose statistics are global. Here the decoder is compiled into *segments*: each segment
starts at a stored tensor (the latent, or the input of a GroupNorm), applies the GroupNorm with statistics
already known, then the local ops up to the next GroupNorm, and writes that GroupNorm's input as the next
stored tensor while gathering its per-channel statistics on the way (each slab's mean and variance in one
float32 pass, merged in float64 with Chan's formula). A segment runs slab by slab
along the first spatial axis, each slab read with the halo its convolutions need (one voxel per 3x3x3
convolution) and convolved without padding along that axis, so no voxel of any layer is computed twice.
Nearest upsampling followed by a convolution runs fused (:mod:`land.models.upconv`: 3.375x fewer
multiply-adds). The result equals ``vae.decode`` up to float rounding.

Stored tensors stay in memory while they fit the budget; larger ones go to float32 files in a temporary
spill folder (``spill_dir``, default the system temporary folder), read and written at offsets with O_DIRECT
where possible (else unbuffered), so they count neither toward the process's resident memory nor fill the
page cache. The folder is removed at the end, also when a
``progress`` callback cancels by raising. :func:`plan_stream` reports the slabs and the disk space needed
(paper VAE, 4x64^3 -> 256^3: 8 GiB at the peak).

Public API: :func:`plan_stream`, :func:`decode_stream`, :func:`streamable`, :class:`StreamPlan`.
"""

from __future__ import annotations

import io
import math
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..interface.errors import InputError
from ..models.upconv import fusable_conv, phase_weights, upsample_conv3d
from .host_memory import _TRIM_MIN_BYTES, CPU_OVERHEAD_BYTES, DEFAULT_CPU_MAX_MEMORY, release_freed_memory

__all__ = ["StreamPlan", "StreamSegment", "check_disk_space", "decode_stream", "plan_stream", "streamable"]

ProgressFn = Callable[[int, int], None]
_LIVE = 3  # activation tensors of the widest op alive at once per slab (input, result, workspace)

# ops: ("gn", GroupNorm) first in a branch only, ("silu", None), ("conv", Conv3d), ("up", 2),
# ("upconv", Conv3d): nearest x2 then a 3x3x3 convolution, fused (land.models.upconv), and
# ("spade", head name): a mask decoder's x * (1 + gamma) + beta (land.models.mask_decoder), right after "gn"
Op = tuple[str, object]


@dataclass(frozen=True)
class _Branch:
    source: int  # index of the stored tensor read
    ops: tuple[Op, ...]


@dataclass(frozen=True)
class _Segment:
    branches: tuple[_Branch, ...]  # summed; all give the same shape
    add: str | None = None  # additive mask head (land.models.mask_decoder) added to the sum


class UnsupportedDecoder(NotImplementedError):
    """The decoder has a layer the streaming decoder does not handle (use the pass-based tiled decoder)."""


# ------------------------------------------------------------------------------------------ compilation
def _conv_of(m: nn.Module) -> nn.Conv3d:
    """The Conv3d inside a MONAI ``Convolution`` (conv only), checked to be streamable."""
    conv = m
    if not isinstance(m, nn.Conv3d):
        kids = list(m.children())
        if len(kids) != 1 or type(kids[0]) is not nn.Conv3d:
            raise UnsupportedDecoder(f"{type(m).__name__} is not a plain 3D convolution")
        conv = kids[0]
    k, pad = conv.kernel_size, conv.padding
    if (
        isinstance(pad, str)
        or conv.stride != (1, 1, 1)
        or conv.dilation != (1, 1, 1)
        or conv.padding_mode != "zeros"
        or any(p != (q - 1) // 2 or q % 2 == 0 for p, q in zip(pad, k, strict=True))
    ):
        raise UnsupportedDecoder(f"convolution {conv} is not stride-1 'same' with zero padding")
    return conv


def _local_ops(m: nn.Module) -> list[Op]:
    """Ops of a block made only of local layers (a convolution, or nearest upsampling + convolution)."""
    name = type(m).__name__
    if name == "Convolution" or isinstance(m, nn.Conv3d):
        return [("conv", _conv_of(m))]
    if name == "UpSample" and isinstance(m, nn.Sequential):
        ops: list[Op] = []
        for kid in m.children():
            if isinstance(kid, nn.Upsample):
                sf = kid.scale_factor
                factors = set(sf) if isinstance(sf, tuple) else {sf}
                if kid.mode != "nearest" or factors != {2.0} or kid.size is not None:
                    raise UnsupportedDecoder(f"upsampling {kid} is not nearest x2")
                ops.append(("up", 2))
            else:
                conv = _conv_of(kid)
                if ops and ops[-1] == ("up", 2) and fusable_conv(conv) is not None:
                    ops[-1] = ("upconv", conv)  # 3.375x fewer multiply-adds, no upsampled slab
                else:
                    ops.append(("conv", conv))
        return ops
    raise UnsupportedDecoder(f"decoder block {name} is not supported by the streaming decoder")


def _check_vae(vae: nn.Module) -> dict[tuple[int, str], str]:
    """UnsupportedDecoder unless ``vae`` is MONAI's AutoencoderKL or LAND's mask-aware one; the mask heads
    by (block index, site) (empty for a plain decoder)."""
    from monai.networks.nets.autoencoderkl import AutoencoderKL, Decoder

    from ..models.mask_decoder import MaskAutoencoderKL, MaskDecoder

    pairs = {AutoencoderKL: Decoder, MaskAutoencoderKL: MaskDecoder}
    owner = next((c for c in pairs if isinstance(vae, c) and type(vae).decode is c.decode), None)
    if owner is None:
        raise UnsupportedDecoder(f"{type(vae).__name__} is not a MONAI AutoencoderKL")
    if type(vae.decoder) is not pairs[owner]:
        raise UnsupportedDecoder(f"decoder class {type(vae.decoder).__name__} is not MONAI's Decoder")
    return dict(vae.decoder.by_block) if owner is MaskAutoencoderKL else {}


def _compile(vae: nn.Module) -> list[_Segment]:
    """Segments computing ``post_quant_conv`` + ``decoder.blocks``; stored tensor 0 is the latent."""
    from monai.networks.nets.autoencoderkl import AEKLResBlock

    heads = _check_vae(vae)
    segments: list[_Segment] = []

    def emit(*branches: _Branch, add: str | None = None) -> int:
        segments.append(_Segment(tuple(branches), add))
        return len(segments)  # index of the stored tensor it writes

    def norm(i: int, site: str, gn: nn.Module) -> list[Op]:
        name = heads.get((i, site))
        return [("gn", gn)] + ([("spade", name)] if name else [])

    src, pending = 0, _local_ops(vae.post_quant_conv)

    def flush(i: int) -> int:
        """The block's input stored (with the additive mask head of block ``i``, if any)."""
        add = heads.get((i, "in"))
        if pending:
            return emit(_Branch(src, tuple(pending)), add=add)
        if add is not None:
            if src == 0 or segments[-1].add is not None:
                raise UnsupportedDecoder(f"block {i}: no stored input to add its mask features to")
            segments[-1] = _Segment(segments[-1].branches, add)
        return src

    for i, block in enumerate(vae.decoder.blocks):
        if type(block) is nn.GroupNorm:
            src, pending = flush(i), norm(i, "norm", block)
        elif type(block) is AEKLResBlock:
            src, pending = flush(i), []
            if type(block.norm1) is not nn.GroupNorm or type(block.norm2) is not nn.GroupNorm:
                raise UnsupportedDecoder("a residual block's norms are not GroupNorm")
            h = emit(
                _Branch(
                    src, (*norm(i, "norm1", block.norm1), ("silu", None), ("conv", _conv_of(block.conv1)))
                )
            )
            short = (
                []
                if isinstance(block.nin_shortcut, nn.Identity)
                else [("conv", _conv_of(block.nin_shortcut))]
            )
            main = _Branch(
                h, (*norm(i, "norm2", block.norm2), ("silu", None), ("conv", _conv_of(block.conv2)))
            )
            src = emit(_Branch(src, tuple(short)), main)
        else:
            pending.extend(_local_ops(block))
    if pending:
        emit(_Branch(src, tuple(pending)))
    return segments


def _out_shape(branch: _Branch, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    ch, sp = in_shape[0], list(in_shape[1:])
    for kind, op in branch.ops:
        if kind in ("conv", "upconv"):
            ch = int(op.out_channels)  # type: ignore[attr-defined]
        if kind == "up":
            sp = [s * int(op) for s in sp]  # type: ignore[call-overload]
        elif kind == "upconv":
            sp = [s * 2 for s in sp]
    return (ch, *sp)


def streamable(vae: nn.Module) -> bool:
    """Whether :func:`decode_stream` can decode this VAE (MONAI AutoencoderKL without attention)."""
    try:
        _compile(vae)
    except UnsupportedDecoder:
        return False
    return True


# ------------------------------------------------------------------------------------------------- rows
def _rows_needed(ops: Sequence[Op], lo: int, hi: int, rows_in: int) -> tuple[int, int]:
    """Input rows ``[a, b)`` (clipped to the tensor) that output rows ``[lo, hi)`` of ``ops`` depend on."""
    for kind, op in reversed(ops):
        if kind in ("conv", "upconv"):
            r = op.padding[0]  # type: ignore[attr-defined]
            lo, hi = lo - r, hi + r
        if kind == "up":
            lo, hi = math.floor(lo / op), math.ceil(hi / op)  # type: ignore[operator]
        elif kind == "upconv":
            lo, hi = math.floor(lo / 2), math.ceil(hi / 2)
    return max(0, lo), min(rows_in, hi)


# ---------------------------------------------------------------------------------------------- storage
_ALIGN = 4096  # O_DIRECT: offsets, lengths and buffer addresses in multiples of this


def _aligned_buffer(nbytes: int) -> mmap.mmap:
    """Page-aligned anonymous memory (an O_DIRECT transfer buffer)."""
    return mmap.mmap(-1, max(_ALIGN, -(-nbytes // _ALIGN) * _ALIGN))


def _open_spill(path: str, direct: bool) -> tuple[int, bool]:
    """A spill file opened for unbuffered I/O at offsets; with ``direct`` bypassing the page cache
    (O_DIRECT, Linux) where the file system allows it. Returns (fd, whether it is direct)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o600), True
        except OSError:  # e.g. tmpfs: no O_DIRECT; the page cache it is
            pass
    return os.open(path, flags, 0o600), False


class _Stored:
    """A (C, D, H, W) float32 tensor in memory or in a spill file, written and read in row slabs.

    Spill files are written and read with O_DIRECT where the platform and file system allow it and a row
    plane is a whole number of 4 KiB blocks: the data goes straight between the disk and two reused
    page-aligned buffers, so gigabytes of spill neither fill the page cache (memory other programs need)
    nor cost a fresh page per 4 KiB (the dominant cost of buffered spill I/O in virtual machines). A
    :meth:`read` returns a view of the reused read buffer: valid until the next read of this tensor.
    """

    def __init__(self, shape: tuple[int, ...], path: str | None, want_stats: bool) -> None:
        self.shape = shape
        self.path = path
        self.data = torch.empty(shape, dtype=torch.float32) if path is None else None
        self.plane = math.prod(shape[2:])
        self.fd: int | None = None
        self.direct = False
        if path is not None:
            self.fd, self.direct = _open_spill(path, direct=(self.plane * 4) % _ALIGN == 0)
        self._file: io.FileIO | None = None  # where os.pwrite / os.preadv are missing
        self._read_buf: mmap.mmap | None = None
        self._write_buf: mmap.mmap | None = None
        self.want_stats = want_stats
        self.count = 0  # voxels per channel summed so far
        self.mean = torch.zeros(shape[0], dtype=torch.float64)  # per channel, running (Chan et al.)
        self.m2 = torch.zeros(shape[0], dtype=torch.float64)  # per channel sum of squared deviations
        self._affine: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _buffer(self, which: str, nbytes: int) -> mmap.mmap:
        buf = getattr(self, which)
        if buf is None or len(buf) < nbytes:  # the old one is unmapped when no tensor views it any more
            buf = _aligned_buffer(nbytes)
            setattr(self, which, buf)
        return buf

    def _transfer(self, view: memoryview, offset: int, write: bool) -> None:
        """All of ``view`` to / from the file at ``offset`` (unbuffered; retried on short transfers)."""
        assert self.fd is not None
        # os.pwrite / os.preadv: not on Windows, and macOS has no preadv; there a file object seeks instead
        positional = hasattr(os, "pwrite") if write else hasattr(os, "preadv")
        if not positional:
            if self._file is None:
                self._file = open(self.fd, "r+b", buffering=0, closefd=False)  # noqa: SIM115 - see close()
            self._file.seek(offset)
        while view:
            if not positional:
                done = self._file.write(view) if write else self._file.readinto(view)
            else:
                done = os.pwrite(self.fd, view, offset) if write else os.preadv(self.fd, [view], offset)
            if not done:
                raise OSError(f"short {'write to' if write else 'read from'} the spill file {self.path}")
            view, offset = view[done:], offset + done

    def write(self, row: int, x: torch.Tensor) -> None:
        """Store ``x`` (C, rows, H, W) at rows ``row..``; add its statistics."""
        if self.want_stats:
            self._add_stats(x)
        x = x.to("cpu", torch.float32)
        if self.data is not None:
            self.data[:, row : row + x.shape[1]] = x
            return
        nbytes = x.shape[1] * self.plane * 4
        staging = self._buffer("_write_buf", nbytes)
        stage = torch.frombuffer(staging, dtype=torch.float32, count=nbytes // 4).view(x.shape[1:])
        for c in range(self.shape[0]):  # each channel's rows are one contiguous run of the file
            stage.copy_(x[c])
            self._transfer(memoryview(staging)[:nbytes], (c * self.shape[1] + row) * self.plane * 4, True)

    def _add_stats(self, x: torch.Tensor) -> None:
        """Merge the slab's per-channel mean and variance (one float32 pass) into the float64 totals."""
        var, mean = torch.var_mean(x.float(), dim=(1, 2, 3), correction=0)
        n = x[0].numel()
        mean, m2 = mean.double().cpu(), var.double().cpu() * n
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2 + delta.square() * (self.count * n / total)
        self.count = total

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """Rows ``[lo, hi)`` as a contiguous (C, rows, H, W) tensor (spilled: valid until the next read)."""
        if self.data is not None:
            return self.data[:, lo:hi]
        per_channel = (hi - lo) * self.plane * 4
        buf = self._buffer("_read_buf", self.shape[0] * per_channel)
        for c in range(self.shape[0]):
            view = memoryview(buf)[c * per_channel : (c + 1) * per_channel]
            self._transfer(view, (c * self.shape[1] + lo) * self.plane * 4, False)
        count = self.shape[0] * per_channel // 4
        return torch.frombuffer(buf, dtype=torch.float32, count=count).view(
            self.shape[0], hi - lo, *self.shape[2:]
        )

    def norm_affine(self, gn: nn.GroupNorm, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift) that apply ``gn`` with this tensor's global statistics."""
        key = (id(gn), str(device))
        if key not in self._affine:
            self._affine[key] = self._norm_affine(gn, device)
        return self._affine[key]

    def _norm_affine(self, gn: nn.GroupNorm, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.want_stats and self.count > 0
        g = gn.num_groups
        mean_c, var_c = self.mean.view(g, -1), (self.m2 / self.count).view(g, -1)
        per = mean_c.shape[1]
        mean_g = mean_c.mean(1, keepdim=True)  # channels of a group have equal counts
        var_g = (var_c + (mean_c - mean_g).square()).mean(1)
        rstd = (var_g + gn.eps).rsqrt().repeat_interleave(per)
        mean = mean_g[:, 0].repeat_interleave(per)
        w = gn.weight.detach().double().cpu() if gn.weight is not None else torch.ones_like(mean)
        b = gn.bias.detach().double().cpu() if gn.bias is not None else torch.zeros_like(mean)
        scale = w * rstd
        return scale.float().to(device), (b - mean * scale).float().to(device)

    def close(self) -> None:
        self.data = self._read_buf = self._write_buf = None  # buffers unmapped once no tensor views them
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            if self.path is not None:
                os.unlink(self.path)


# ------------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class StreamSegment:
    """One segment: which stored tensors it reads, what it writes, and its slabs."""

    index: int
    reads: tuple[int, ...]
    out_shape: tuple[int, ...]  # (C, *spatial)
    slab_rows: int  # output rows per slab
    num_slabs: int
    slab_bytes: int  # estimated working memory of one slab
    on_disk: bool  # its output goes to a spill file


@dataclass(frozen=True)
class StreamPlan:
    """How :func:`decode_stream` decodes a latent of ``latent_shape`` (``N, C, *spatial``)."""

    latent_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    device: str
    max_memory: int
    weight_bytes: int
    peak_memory_bytes: int  # estimate: overhead + weights + stored in memory + largest slab
    peak_disk_bytes: int  # spill files alive at once
    segments: tuple[StreamSegment, ...] = field(default_factory=tuple)

    @property
    def total_slabs(self) -> int:
        """Slabs over the whole batch (the ``total`` given to ``progress``)."""
        return self.latent_shape[0] * sum(s.num_slabs for s in self.segments)

    def describe(self) -> str:
        mib = 1024**2
        lines = [
            f"streamed decode {self.latent_shape} -> {self.output_shape} on {self.device}: "
            f"max_memory {self.max_memory / mib:.0f} MiB, est. peak {self.peak_memory_bytes / mib:.0f} MiB, "
            f"spill disk {self.peak_disk_bytes / mib:.0f} MiB"
        ]
        for s in self.segments:
            where = "disk" if s.on_disk else "memory"
            lines.append(
                f"  segment {s.index}: reads {list(s.reads)} -> {s.out_shape} in {s.num_slabs} slab(s) of "
                f"{s.slab_rows} row(s) (~{s.slab_bytes / mib:.0f} MiB), stored in {where}"
            )
        return "\n".join(lines)


def _shapes(segments: list[_Segment], latent: tuple[int, ...]) -> list[tuple[int, ...]]:
    shapes = [latent]
    for seg in segments:
        outs = {_out_shape(b, shapes[b.source]) for b in seg.branches}
        if len(outs) != 1:
            raise UnsupportedDecoder(f"residual branches give different shapes {sorted(outs)}")
        shapes.append(outs.pop())
    return shapes


def _last_use(segments: list[_Segment]) -> dict[int, int]:
    last: dict[int, int] = {}
    for i, seg in enumerate(segments):
        for b in seg.branches:
            last[b.source] = i
    return last


def _head_cost(channels: int, factor: int) -> int:
    """Float32 values per level voxel of a mask head on a slab: the image-resolution condition read (up to
    3 channels, and its features) for ``factor**3`` voxels, the pooled features, the embedding, the output."""
    from ..models.mask_decoder import CONDITION_CHANNELS, EMBED_CHANNELS

    return 2 * CONDITION_CHANNELS * factor**3 + CONDITION_CHANNELS + EMBED_CHANNELS + 2 * channels


def _bytes_per_row(
    seg: _Segment, shapes: list[tuple[int, ...]], out_shape: tuple[int, ...], itemsize: int, image_rows: int
) -> float:
    """Working bytes per output row of a slab: its inputs plus the widest op's live activations, and those of
    a mask head (``image_rows``: rows of the decoded image)."""
    out_rows = out_shape[1]
    total = 0.0
    if seg.add is not None:
        total += 4 * _head_cost(out_shape[0], image_rows // out_rows) * math.prod(out_shape[2:])
    for b in seg.branches:
        c_in, rows_in, *plane = shapes[b.source]
        f = out_rows // rows_in  # output rows per input row
        per_in_row = c_in * math.prod(plane)
        total += 4 * per_in_row / f  # the slab read (float32)
        widest, ch, up = per_in_row, c_in, 1
        for kind, op in b.ops:
            if kind == "up":
                up *= int(op)  # type: ignore[call-overload]
            elif kind in ("conv", "upconv"):
                ch = int(op.out_channels)  # type: ignore[attr-defined]
                up *= 2 if kind == "upconv" else 1
            elif kind == "spade":
                head = _head_cost(ch, image_rows // (rows_in * up)) * math.prod(plane) * up**3
                widest = max(widest, ch * math.prod(plane) * up**3 + head // _LIVE)
            widest = max(widest, ch * math.prod(plane) * up**3)  # per input row, at this op's size
        total += _LIVE * itemsize * widest / f
    return total


def _plan(
    vae: nn.Module,
    segments: list[_Segment],
    latent_shape: Sequence[int],
    max_memory: int | None,
    device: torch.device,
    slab_rows: int | None,
) -> StreamPlan:
    n, *lat = (int(s) for s in latent_shape)
    shapes = _shapes(segments, tuple(lat))
    params = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    weights = sum(p.numel() * p.element_size() for p in params)
    itemsize = params[0].element_size()
    max_memory = int(max_memory if max_memory is not None else DEFAULT_CPU_MAX_MEMORY)
    result_bytes = n * math.prod(shapes[-1]) * 4
    last = _last_use(segments)
    in_memory: dict[int, int] = {0: math.prod(shapes[0]) * 4}
    on_disk: dict[int, int] = {}
    planned: list[StreamSegment] = []
    peak_mem = peak_disk = 0
    for i, seg in enumerate(segments):
        final = i == len(segments) - 1
        rows = shapes[i + 1][1]
        per_row = _bytes_per_row(seg, shapes, shapes[i + 1], itemsize, shapes[-1][1])
        out_bytes = math.prod(shapes[i + 1]) * 4
        fixed = CPU_OVERHEAD_BYTES + weights + result_bytes + sum(in_memory.values())
        # smallest useful slab: the one-row working set; keep it, store the output where it fits
        min_slab = per_row * min(rows, 4)
        to_disk = not final and fixed + out_bytes + min_slab > max_memory
        if not to_disk and not final:
            in_memory[i + 1] = out_bytes
            fixed += out_bytes
        elif to_disk:
            on_disk[i + 1] = out_bytes
        t = slab_rows if slab_rows is not None else int((max_memory - fixed) // max(per_row, 1))
        t = max(1, min(rows, t))
        ns = -(-rows // t)
        t = -(-rows // ns)  # even slabs
        planned.append(
            StreamSegment(
                i, tuple(b.source for b in seg.branches), shapes[i + 1], t, ns, int(per_row * t), to_disk
            )
        )
        peak_mem = max(peak_mem, int(fixed + per_row * t))
        peak_disk = max(peak_disk, sum(on_disk.values()))
        for s in [s for s, u in last.items() if u == i]:  # inputs read for the last time
            in_memory.pop(s, None)
            on_disk.pop(s, None)
    return StreamPlan(
        latent_shape=(n, *lat),
        output_shape=(n, *shapes[-1]),
        device=str(device),
        max_memory=max_memory,
        weight_bytes=weights,
        peak_memory_bytes=peak_mem,
        peak_disk_bytes=peak_disk,
        segments=tuple(planned),
    )


def check_disk_space(
    plan: StreamPlan, spill_dir: str | os.PathLike | None = None, free: int | None = None
) -> None:
    """InputError unless the spill folder has room for ``plan``'s spill files (``free``: bytes free there,
    default measured), so a run can be refused before minutes of denoising instead of at decoding."""
    if plan.peak_disk_bytes == 0:
        return
    folder = Path(spill_dir or tempfile.gettempdir())
    if free is None:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return  # no such folder: decoding reports it with the same fix
    need = int(plan.peak_disk_bytes * 1.02) + 64 * 1024**2
    if free < need:
        raise InputError(
            f"decoding needs {need / 2**30:.1f} GiB of temporary disk space in {folder} but only "
            f"{free / 2**30:.1f} GiB is free; fix: free disk space, point TMPDIR at a disk with room, or "
            "give decoding more memory (--max-memory)"
        )


def plan_stream(
    vae: nn.Module,
    latent_shape: Sequence[int] | torch.Size | torch.Tensor,
    max_memory: int | None = None,
    device: torch.device | str | None = None,
    *,
    slab_rows: int | None = None,
) -> StreamPlan:
    """The plan :func:`decode_stream` would follow (raises :class:`UnsupportedDecoder` if it cannot)."""
    if isinstance(latent_shape, torch.Tensor):
        latent_shape = latent_shape.shape
    segments = _compile(vae)
    dev = torch.device(device) if device is not None else next(vae.decoder.parameters()).device
    return _plan(vae, segments, tuple(int(s) for s in latent_shape), max_memory, dev, slab_rows)


# ---------------------------------------------------------------------------------------------- execute
def _conv_rows(x: torch.Tensor, conv: nn.Conv3d, lo: int, total: int) -> tuple[torch.Tensor, int]:
    """``conv`` ('same', stride 1) on rows ``[lo, lo + x.shape[2])`` of a (1, C, rows, H, W) slab of a tensor
    with ``total`` rows: zero-padded along the rows only at the tensor's ends, elsewhere the halo rows are
    consumed. Returns the result and the index of its first row."""
    r = conv.padding[0]
    hi = lo + x.shape[2]
    pad_lo = r if lo == 0 else 0
    pad_hi = r if hi == total else 0
    if pad_lo or pad_hi:
        x = F.pad(x, (0, 0, 0, 0, pad_lo, pad_hi))
    x = F.conv3d(x, conv.weight, conv.bias, 1, (0, *conv.padding[1:]), 1, conv.groups)
    return x, lo + r - pad_lo


class _Condition:
    """One item's full-resolution condition, read in row slabs for a mask decoder's heads (never whole)."""

    def __init__(self, decoder: nn.Module, cond: torch.Tensor | None, rows: int, device: torch.device):
        self.decoder, self.cond, self.rows, self.device = decoder, cond, rows, device

    def _level(self, factor: int, lo: int, hi: int, plane: tuple[int, ...]) -> torch.Tensor:
        """Condition features pooled to level ``factor``, its rows ``[lo, hi)`` (1, 3, rows, *plane)."""
        from ..models.mask_decoder import CONDITION_CHANNELS, decoder_condition, pool_condition

        if self.cond is None:
            return torch.zeros(1, CONDITION_CHANNELS, hi - lo, *plane, device=self.device)
        full = self.cond[:, lo * factor : hi * factor].to(self.device, torch.float32)
        return pool_condition(decoder_condition(full[None]), factor)

    def head(self, name: str, lo: int, hi: int, total: int, plane: tuple[int, ...]) -> torch.Tensor:
        """Rows ``[lo, hi)`` of head ``name``'s output on a level with ``total`` rows: (C, rows, *plane)."""
        factor = self.rows // total
        a, b = max(0, lo - 2), min(total, hi + 2)  # two 3x3x3 convolutions: embedding, head
        e, e0 = _conv_rows(self._level(factor, a, b, plane), self.decoder.mask_embed[str(factor)], a, total)
        y, y0 = _conv_rows(F.silu(e), self.decoder.mask_heads[name], e0, total)
        return y[0, :, lo - y0 : hi - y0]


def _run_branch(
    branch: _Branch,
    x: torch.Tensor,
    lo: int,
    rows_in: int,
    stored: _Stored,
    device: torch.device,
    owned: bool,
    phased: dict[int, torch.Tensor],
    cond: _Condition | None = None,
) -> tuple[torch.Tensor, int]:
    """Apply ``branch.ops`` to rows ``[lo, lo + x.shape[1])`` of a tensor with ``rows_in`` rows.

    Returns the result and the index of its first row; convolutions are zero-padded along the row axis
    only at the tensor's ends (elsewhere the halo rows are real data and are consumed). ``cond``: the
    condition of a mask decoder's ``spade`` ops.
    """
    fresh = owned and x.device == device  # x is ours (not a view of a stored tensor): in-place is safe
    x = x.to(device=device, dtype=torch.float32).unsqueeze(0)
    total = rows_in
    for kind, op in branch.ops:
        if kind == "gn":
            scale, shift = stored.norm_affine(op, device)  # type: ignore[arg-type]
            view = (1, -1, 1, 1, 1)
            if fresh:  # in place: a new tensor of this size costs more (page faults) than the arithmetic
                x = x.mul_(scale.view(view)).add_(shift.view(view))
            else:
                x = torch.addcmul(shift.view(view), x, scale.view(view))
        elif kind == "spade":
            assert cond is not None
            gamma, beta = cond.head(op, lo, lo + x.shape[2], total, tuple(x.shape[3:]))[None].chunk(2, 1)  # type: ignore[arg-type]
            x = torch.addcmul(beta, x, gamma.add_(1.0))
        elif kind == "silu":
            x = F.silu(x, inplace=fresh)
        elif kind == "up":
            f = int(op)  # type: ignore[call-overload]
            x = F.interpolate(x, scale_factor=float(f), mode="nearest")  # a copy: exact on any slab
            lo, total = lo * f, total * f
        elif kind == "upconv":
            conv: nn.Conv3d = op  # type: ignore[assignment]
            pad_lo, pad_hi = int(lo == 0), int(lo + x.shape[2] == total)
            if id(conv) not in phased:
                phased[id(conv)] = phase_weights(conv.weight.detach())
            x = upsample_conv3d(x, conv.weight, conv.bias, (1, 1, 1, 1, pad_lo, pad_hi), phased[id(conv)])
            lo, total = 2 * lo + 1 - pad_lo, 2 * total
        else:
            x, lo = _conv_rows(x, op, lo, total)  # type: ignore[arg-type]
        fresh = True
    return x[0], lo


def decode_stream(
    vae: nn.Module,
    z: torch.Tensor,
    max_memory: int | None = None,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    *,
    slab_rows: int | None = None,
    spill_dir: str | os.PathLike | None = None,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode ``z`` (N, C, D, H, W) exactly like ``vae.decode``, each convolution once, within ``max_memory``.

    Args:
        vae: MONAI ``AutoencoderKL`` without attention (see :func:`streamable`), or LAND's mask-aware one
            (:class:`land.models.mask_decoder.MaskAutoencoderKL`); not modified.
        z: latent batch; items are decoded one after another.
        max_memory: bytes for the whole decode (default 2 GiB); stored layer outputs that do not fit go to
            spill files (see :func:`plan_stream` for the disk space).
        device: where the layers run (default: where the decoder's weights are); stored tensors stay on
            the host.
        progress: ``progress(done, total)`` after every slab; raising from it cancels (files removed).
        slab_rows: override the budget: output rows per slab.
        spill_dir: folder for the spill files (default: the system temporary folder).
        cond: a mask decoder's condition at image resolution, (N, 1 or 3, *image spatial) (see
            :func:`land.models.mask_decoder.decoder_condition`), read slab by slab; any dtype (e.g. kept
            as float16 or on disk-backed memory by the caller). None: no mask. Plain decoders take none.

    Returns:
        float32 CPU tensor (N, out_channels, *spatial * compression).
    """
    if z.ndim != 5:
        raise ValueError(f"expected a latent of shape (N, C, D, H, W), got {tuple(z.shape)}")
    segments = _compile(vae)
    dev = torch.device(device) if device is not None else next(vae.decoder.parameters()).device
    plan = _plan(vae, segments, tuple(z.shape), max_memory, dev, slab_rows)
    masked = bool(_check_vae(vae))
    out_spatial = tuple(plan.output_shape[2:])
    if cond is not None and not masked:
        raise ValueError("this VAE's decoder takes no mask (vae.mask_decoder is 'none'); pass cond=None")
    if cond is not None and (
        cond.ndim != 5 or cond.shape[0] != z.shape[0] or tuple(cond.shape[2:]) != out_spatial
    ):
        raise ValueError(
            f"condition of shape {tuple(cond.shape)} does not fit the output {plan.output_shape}: expected "
            f"({z.shape[0]}, 1 or 3, {', '.join(map(str, out_spatial))})"
        )
    want_stats = {b.source for s in segments for b in s.branches if b.ops and b.ops[0][0] == "gn"}
    last = _last_use(segments)
    result = torch.empty(plan.output_shape, dtype=torch.float32)
    done, total = 0, plan.total_slabs
    moved = [(m, next(m.parameters()).device) for m in (vae.post_quant_conv, vae.decoder)]
    stores: dict[int, _Stored] = {}
    phased: dict[int, torch.Tensor] = {}  # each fused upsampling convolution's phase kernels
    folder = None
    try:
        if any(s.on_disk for s in plan.segments):
            folder = tempfile.mkdtemp(prefix="land-decode-", dir=spill_dir)
        for m, _ in moved:
            m.to(dev)
        with torch.no_grad():
            for item in range(z.shape[0]):
                item_cond = None if cond is None else cond[item]
                condition = _Condition(vae.decoder, item_cond, out_spatial[0], dev) if masked else None
                latent = _Stored(tuple(z.shape[1:]), None, 0 in want_stats)
                latent.write(0, z[item].detach().float().cpu())
                stores = {0: latent}
                for seg, sp in zip(segments, plan.segments, strict=True):
                    final = sp is plan.segments[-1]
                    out = (
                        None
                        if final
                        else _Stored(
                            sp.out_shape,
                            os.path.join(folder, f"t{sp.index + 1}.f32") if sp.on_disk and folder else None,
                            sp.index + 1 in want_stats,
                        )
                    )
                    if out is not None:
                        stores[sp.index + 1] = out  # registered first: closed also on errors
                    rows = sp.out_shape[1]
                    for lo in range(0, rows, sp.slab_rows):
                        hi = min(rows, lo + sp.slab_rows)
                        acc: torch.Tensor | None = None
                        for b in sorted(seg.branches, key=lambda b: not b.ops):  # an own tensor first
                            src = stores[b.source]
                            a, e = _rows_needed(b.ops, lo, hi, src.shape[1])
                            y, y0 = _run_branch(
                                b, src.read(a, e), a, src.shape[1], src, dev, src.data is None, phased,
                                condition,
                            )  # fmt: skip
                            y = y[:, lo - y0 : hi - y0]
                            acc = y if acc is None else acc.add_(y)
                            del y
                        assert acc is not None
                        if seg.add is not None:
                            assert condition is not None
                            acc = acc.add_(condition.head(seg.add, lo, hi, rows, tuple(acc.shape[2:])))
                        if out is None:
                            result[item, :, lo:hi] = acc.cpu()
                        else:
                            out.write(lo, acc)
                        del acc
                        if sp.slab_bytes >= _TRIM_MIN_BYTES:
                            release_freed_memory()  # freed slabs back to the OS: they differ in size
                        done += 1
                        if progress is not None:
                            progress(done, total)
                    for s in [s for s, u in last.items() if u == sp.index]:
                        stores.pop(s).close()
                for s in stores.values():
                    s.close()
                stores = {}
    except OSError as e:  # only the spill files do I/O here
        where = folder or spill_dir or tempfile.gettempdir()
        raise InputError(
            f"decoding could not write its temporary files in {where} ({e.strerror or e}); it needs "
            f"{plan.peak_disk_bytes / 2**30:.1f} GiB free there; fix: free disk space, point TMPDIR at a "
            "disk with room, or give decoding more memory (--max-memory)"
        ) from e
    finally:
        for s in stores.values():
            s.close()
        for m, d in moved:
            m.to(d)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return result
