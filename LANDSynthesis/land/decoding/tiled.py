"""Bounded-memory, exact tiled decoding of MONAI ``AutoencoderKL`` / MAISI ``AutoencoderKlMaisi`` decoders.

Plain sliding-window decoding is not faithful: every ``GroupNorm`` would normalise each tile with its own
statistics. Here the decoder is split into *stages* at each upsampling block; stage boundaries are stored in
full on the host (at the stage's input resolution). Inside a stage every op except GroupNorm is local, so
once the global GroupNorm statistics are known the stage can be decoded tile by tile with a halo that covers
its receptive field, writing only each tile's core. The statistics are gathered by passes over the tiles:
pass ``k`` applies the already known statistics of GroupNorms ``1..k-1`` and accumulates (float64) sums over
the tile cores at GroupNorm ``k``, then aborts the rest of the forward. A last pass writes the output. The
result equals ``vae.decode`` up to float rounding.

Public API: :func:`decode_tiled`, :func:`decode_full`, :func:`plan_tiles`, :class:`DecodePlan`,
:class:`StagePlan`, :data:`DEFAULT_CPU_MAX_MEMORY`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .host_memory import (
    _TRIM_MIN_BYTES,
    CPU_OVERHEAD_BYTES,
    DEFAULT_CPU_MAX_MEMORY,
    release_freed_memory,
)

__all__ = [
    "CPU_OVERHEAD_BYTES",
    "CUDA_OVERHEAD_BYTES",
    "DEFAULT_CPU_MAX_MEMORY",
    "DecodePlan",
    "StagePlan",
    "decode_full",
    "choose_method",
    "decode_tiled",
    "plan_tiles",
]

CUDA_OVERHEAD_BYTES = 256 * 1024**2
"""Fixed allowance on CUDA for the caching allocator, cuDNN workspaces and fragmentation."""
_CUDA_FREE_FRACTION = 0.9  # margin on torch.cuda.mem_get_info() free memory when max_memory is not given
_LIVE_TENSORS = 4  # activations of the widest layer alive at once (input, norm, act, conv out / workspace)
_TILE_COST_VOXELS = 16**3  # fixed per-tile cost (kernel launches, python) in stage-input voxels
_PROBE_SIZE = 4  # spatial size (latent voxels) of the shape-probing forward

ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class StagePlan:
    """Tiling of one decoder stage (a run of blocks starting at an upsampling block, or at the latent).

    Shapes are ``(C, *spatial)``; ``halo``, ``tile_core`` and ``tile_shape`` are in voxels of the stage input.
    """

    index: int
    blocks: tuple[str, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    halo: tuple[int, ...]
    grid: tuple[int, ...]
    tile_core: tuple[int, ...]
    tile_shape: tuple[int, ...]
    num_groupnorms: int
    tile_bytes: int
    available_bytes: int
    stored_bytes: int
    global_ops: bool = False

    @property
    def num_tiles(self) -> int:
        return math.prod(self.grid)

    @property
    def num_passes(self) -> int:
        """Passes over the tiles: one per GroupNorm plus the output pass (one pass for a single tile)."""
        return 1 if self.num_tiles == 1 else self.num_groupnorms + 1

    @property
    def tile_passes(self) -> int:
        return self.num_tiles * self.num_passes


@dataclass(frozen=True)
class DecodePlan:
    """How :func:`decode_tiled` decodes a latent of ``latent_shape`` (``N, C, *spatial``)."""

    latent_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    device: str
    max_memory: int
    weight_bytes: int
    overhead_bytes: int
    stages: tuple[StagePlan, ...] = field(default_factory=tuple)

    @property
    def total_tile_passes(self) -> int:
        """Number of tile forwards over the whole batch (the ``total`` given to ``progress``)."""
        return self.latent_shape[0] * sum(s.tile_passes for s in self.stages)

    @property
    def estimated_peak_bytes(self) -> int:
        """Estimated peak memory: overhead + weights + the largest stage's stored tensors and tile."""
        largest = max(s.stored_bytes + s.tile_bytes for s in self.stages)
        return self.overhead_bytes + self.weight_bytes + largest

    def describe(self) -> str:
        """Human-readable multi-line summary."""
        mib = 1024**2
        lines = [
            f"decode {tuple(self.latent_shape)} -> {tuple(self.output_shape)} on {self.device}, "
            f"max_memory {self.max_memory / mib:.0f} MiB (weights {self.weight_bytes / mib:.1f} MiB, "
            f"overhead {self.overhead_bytes / mib:.0f} MiB, "
            f"est. peak {self.estimated_peak_bytes / mib:.0f} MiB), "
            f"{self.total_tile_passes} tile passes"
        ]
        for s in self.stages:
            lines.append(
                f"  stage {s.index}: {s.in_shape} -> {s.out_shape}, {len(s.blocks)} blocks, "
                f"{s.num_groupnorms} GroupNorms, halo {s.halo}, grid {s.grid} ({s.num_tiles} tiles, "
                f"core <= {s.tile_core}, tile <= {s.tile_shape}), {s.num_passes} passes, "
                f"tile ~{s.tile_bytes / mib:.0f} MiB of {s.available_bytes / mib:.0f} MiB, "
                f"stored {s.stored_bytes / mib:.0f} MiB" + (", global ops (untiled)" if s.global_ops else "")
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


# ---------------------------------------------------------------------------------------- model analysis
class _StopPass(Exception):
    """Raised by the collecting GroupNorm to abort the rest of a statistics pass."""


@dataclass
class _Stage:
    """Internal description of a stage, from a shape-probing forward."""

    index: int
    units: list[nn.Module]  # top-level modules, run in order
    names: list[str]
    in_channels: int
    out_channels: int
    in_scale: tuple[int, ...]  # stage input resolution / latent resolution
    scale: tuple[int, ...]  # stage output resolution / stage input resolution
    unit_in_channels: list[int]
    unit_in_scale: list[tuple[int, ...]]  # unit input resolution / stage input resolution
    act_per_voxel: float  # max activation elements per stage-input voxel
    groupnorms: list[nn.GroupNorm]
    gn_units: list[int]  # local unit index that contains each GroupNorm
    gn_order: list[int]  # position of each GroupNorm in the stage's execution order
    convs: list[tuple[int, int, tuple[float, ...]]]  # (execution position, local unit, reach in input voxels)
    interp: int  # extra reach of the upsampling interpolation (0 for nearest)
    global_ops: bool

    def halo_for(self, start: int = 0, groupnorm: int | None = None) -> tuple[int, ...]:
        """Halo (stage-input voxels) for running units ``start..`` up to ``groupnorm`` (None: to the end)."""
        stop = self.gn_order[groupnorm] if groupnorm is not None else math.inf
        reach = [0.0] * len(self.in_scale)
        for pos, unit, r in self.convs:
            if unit >= start and pos < stop:
                reach = [a + b for a, b in zip(reach, r, strict=True)]
        extra = 1 + (self.interp if start == 0 else 0)  # +1 for safety
        return tuple(math.ceil(r - 1e-9) + extra for r in reach)

    @property
    def halo(self) -> tuple[int, ...]:
        return self.halo_for()


def _decoder_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(supported VAE classes' decode functions owner, supported decoder classes)."""
    from monai.networks.nets.autoencoderkl import AutoencoderKL, Decoder

    decoders: list[type] = [Decoder]
    with contextlib.suppress(Exception):
        from monai.apps.generation.maisi.networks.autoencoderkl_maisi import MaisiDecoder

        decoders.append(MaisiDecoder)
    return (AutoencoderKL,), tuple(decoders)


def _check_supported(vae: nn.Module) -> None:
    vaes, decoders = _decoder_classes()
    name = type(vae).__name__
    if not isinstance(vae, vaes) or type(vae).decode is not vaes[0].decode:
        raise NotImplementedError(
            f"tiled decoding supports MONAI AutoencoderKL / AutoencoderKlMaisi, not {name} "
            "(decode() must be post_quant_conv followed by the decoder)"
        )
    dec = getattr(vae, "decoder", None)
    dname = type(dec).__name__
    if not isinstance(dec, decoders) or type(dec).forward not in {c.forward for c in decoders}:
        raise NotImplementedError(f"tiled decoding does not support the decoder class {dname} of {name}")
    if not isinstance(getattr(dec, "blocks", None), nn.ModuleList):
        raise NotImplementedError(f"{dname} has no 'blocks' ModuleList; tiled decoding cannot split it")


def _is_global(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()


def _conv_reach(conv: nn.modules.conv._ConvNd, d: int) -> list[float]:
    """Per-axis reach of a conv, in voxels of its input."""
    k, dil, st = (tuple(conv.kernel_size), tuple(conv.dilation), tuple(conv.stride))
    pad = conv.padding
    if isinstance(pad, str):
        pad = tuple((dil[i] * (k[i] - 1) + 1) // 2 if pad == "same" else 0 for i in range(d))
    out = []
    for i in range(d):
        r = max(pad[i], dil[i] * (k[i] - 1) - pad[i])
        out.append((r + 1) / st[i] if conv.transposed else float(r))
    return out


def _analyze(vae: nn.Module, latent_shape: Sequence[int]) -> list[_Stage]:
    """Split ``post_quant_conv`` + ``decoder.blocks`` into stages using a tiny shape-probing forward."""
    _check_supported(vae)
    c_lat, *lat_sp = (int(s) for s in latent_shape)
    d = len(lat_sp)
    units: list[nn.Module] = [vae.post_quant_conv, *vae.decoder.blocks]
    names = ["post_quant_conv", *(f"decoder.blocks.{i}" for i in range(len(vae.decoder.blocks)))]
    param = next(vae.decoder.parameters())
    leaf_rec: list[tuple[int, nn.Module, tuple[int, ...], tuple[int, ...]]] = []  # unit, module, in, out
    unit_rec: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []

    def leaf_hook(ui: int) -> Callable:
        def hook(m: nn.Module, args: tuple, out: object) -> None:
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            shp = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
            leaf_rec.append((ui, m, tuple(x.shape) if x is not None else (), shp))

        return hook

    def unit_hook(ui: int) -> Callable:
        def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            unit_rec[ui] = (tuple(args[0].shape), tuple(out.shape))

        return hook

    try:
        for ui, u in enumerate(units):
            hooks.append(u.register_forward_hook(unit_hook(ui)))
            for m in u.modules():
                if next(m.children(), None) is None or isinstance(m, (nn.GroupNorm, nn.modules.conv._ConvNd)):
                    hooks.append(m.register_forward_hook(leaf_hook(ui)))
        x = torch.zeros(1, c_lat, *([_PROBE_SIZE] * d), device=param.device, dtype=param.dtype)
        with torch.no_grad():
            for u in units:
                x = u(x)
    finally:
        for h in hooks:
            h.remove()

    # stage boundaries: a unit that changes the spatial size starts a new stage
    starts = [0]
    for ui in range(len(units)):
        i_sp, o_sp = unit_rec[ui][0][2:], unit_rec[ui][1][2:]
        if i_sp == o_sp:
            continue
        if ui == 0 or any(o % i or o < i for i, o in zip(i_sp, o_sp, strict=True)):
            raise NotImplementedError(f"{names[ui]} changes the spatial size {i_sp} -> {o_sp}; unsupported")
        starts.append(ui)
    bounds = [*starts, len(units)]

    stages: list[_Stage] = []
    in_scale = (1,) * d
    for si in range(len(starts)):
        lo, hi = bounds[si], bounds[si + 1]
        s_in = unit_rec[lo][0]
        s_out = unit_rec[hi - 1][1]
        p_in = s_in[2:]
        scale = tuple(o // i for i, o in zip(p_in, s_out[2:], strict=True))
        act = float(s_in[1])
        gns: list[nn.GroupNorm] = []
        gn_units: list[int] = []
        gn_order: list[int] = []
        convs: list[tuple[int, int, tuple[float, ...]]] = []
        global_ops = False
        nearest_only = False
        for pos, (ui, m, i_shape, o_shape) in enumerate(leaf_rec):
            if not lo <= ui < hi:
                continue
            if _is_global(m):
                global_ops = True
            if len(o_shape) == d + 2:
                act = max(act, o_shape[1] * math.prod(o_shape[2:]) / math.prod(p_in))
            if isinstance(m, nn.modules.conv._ConvNd) and len(i_shape) == d + 2:
                r = tuple(r * p_in[a] / i_shape[2 + a] for a, r in enumerate(_conv_reach(m, d)))
                convs.append((pos, ui - lo, r))
            if isinstance(m, nn.Upsample) and m.mode == "nearest":
                nearest_only = True
            if isinstance(m, nn.GroupNorm):
                if m in gns:
                    raise NotImplementedError(f"a GroupNorm in {names[ui]} runs more than once per forward")
                gns.append(m)
                gn_units.append(ui - lo)
                gn_order.append(pos)
        for u in units[lo:hi]:
            global_ops = global_ops or any(_is_global(m) for m in u.modules())
        unit_in_ch, unit_in_scale = [], []
        for ui in range(lo, hi):
            shp = unit_rec[ui][0]
            unit_in_ch.append(shp[1])
            unit_in_scale.append(tuple(a // b for a, b in zip(shp[2:], p_in, strict=True)))
        stages.append(
            _Stage(
                index=si,
                units=units[lo:hi],
                names=names[lo:hi],
                in_channels=s_in[1],
                out_channels=s_out[1],
                in_scale=in_scale,
                scale=scale,
                unit_in_channels=unit_in_ch,
                unit_in_scale=unit_in_scale,
                act_per_voxel=act,
                groupnorms=gns,
                gn_units=gn_units,
                gn_order=gn_order,
                convs=convs,
                interp=0 if (si == 0 or nearest_only) else 1,  # non-nearest interpolation: one more voxel
                global_ops=global_ops,
            )
        )
        in_scale = tuple(a * b for a, b in zip(in_scale, scale, strict=True))
    return stages


# ------------------------------------------------------------------------------------------------ tiling
def _axis_bounds(extent: int, n: int) -> list[int]:
    """Core boundaries that split ``extent`` into ``n`` nearly equal parts."""
    return [i * extent // n for i in range(n + 1)]


def _axis_cost(extent: int, n: int, halo: int) -> tuple[int, int]:
    """(sum of tile lengths incl. clipped halos, largest tile length) for ``n`` tiles on one axis."""
    b = _axis_bounds(extent, n)
    lens = [min(extent, b[i + 1] + halo) - max(0, b[i] - halo) for i in range(n)]
    return sum(lens), max(lens)


def _choose_grid(extent: Sequence[int], halo: Sequence[int], max_voxels: float) -> tuple[int, ...] | None:
    """Grid with the fewest computed voxels (halos + per-tile cost) whose largest tile fits ``max_voxels``."""
    d = len(extent)
    per_axis: list[list[tuple[int, int, int]]] = []  # (n, total, maxlen), one entry per distinct core size
    for e, h in zip(extent, halo, strict=True):
        opts, last = [], None
        for n in range(1, e + 1):
            core = -(-e // n)
            if core != last:
                opts.append((n, *_axis_cost(e, n, h)))
                last = core
        per_axis.append(opts)
    best: tuple[float, tuple[int, ...]] | None = None
    for combo in itertools.product(*per_axis[:-1]):
        head = math.prod(o[2] for o in combo)
        fit = next((o for o in per_axis[-1] if head * o[2] <= max_voxels), None)
        if fit is None:
            continue
        full = (*combo, fit)
        ntiles = math.prod(o[0] for o in full)
        cost = math.prod(o[1] for o in full) + ntiles * _TILE_COST_VOXELS
        grid = tuple(o[0] for o in full)
        if best is None or cost < best[0]:
            best = (cost, grid)
    return best[1] if best is not None else (None if d else ())


@dataclass(frozen=True)
class _Tile:
    src: tuple[slice, ...]  # tile input region, stage-input voxels
    core: tuple[slice, ...]  # core region, stage-input voxels (global)
    core_local: tuple[slice, ...]  # core region relative to the tile input region
    size: tuple[int, ...]  # tile input region size


def _tiles(extent: Sequence[int], halo: Sequence[int], grid: Sequence[int]) -> list[_Tile]:
    axes = []
    for e, h, n in zip(extent, halo, grid, strict=True):
        b = _axis_bounds(e, n)
        axes.append([(max(0, b[i] - h), b[i], b[i + 1], min(e, b[i + 1] + h)) for i in range(n)])
    out = []
    for combo in itertools.product(*axes):
        out.append(
            _Tile(
                src=tuple(slice(a, z) for a, _, _, z in combo),
                core=tuple(slice(c0, c1) for _, c0, c1, _ in combo),
                core_local=tuple(slice(c0 - a, c1 - a) for a, c0, c1, _ in combo),
                size=tuple(z - a for a, _, _, z in combo),
            )
        )
    return out


def _scaled(sl: Sequence[slice], scale: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s.start * f, s.stop * f) for s, f in zip(sl, scale, strict=True))


def _weight_bytes(vae: nn.Module) -> int:
    mods = (vae.post_quant_conv, vae.decoder)
    tensors = itertools.chain.from_iterable(itertools.chain(m.parameters(), m.buffers()) for m in mods)
    return sum(t.numel() * t.element_size() for t in tensors)


def _resolve_device(vae: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return dev
    return next(vae.decoder.parameters()).device


def _make_plan(
    vae: nn.Module,
    stages: list[_Stage],
    latent_shape: Sequence[int],
    max_memory: int | None,
    device: torch.device,
    tile_size: int | Sequence[int] | None,
) -> DecodePlan:
    n_batch, _, *lat_sp = (int(s) for s in latent_shape)
    d = len(lat_sp)
    final = stages[-1]
    result_bytes = (
        n_batch
        * final.out_channels
        * math.prod(e * f * g for e, f, g in zip(lat_sp, final.in_scale, final.scale, strict=True))
        * 4
    )
    weights = _weight_bytes(vae)
    itemsize = next(vae.decoder.parameters()).element_size()
    on_cuda = device.type == "cuda"
    overhead = CUDA_OVERHEAD_BYTES if on_cuda else CPU_OVERHEAD_BYTES
    if max_memory is None:
        if on_cuda:
            free, _ = torch.cuda.mem_get_info(device)
            resident = next(vae.decoder.parameters()).device == device
            max_memory = int(free * _CUDA_FREE_FRACTION) + (weights if resident else 0)
        else:
            max_memory = DEFAULT_CPU_MAX_MEMORY
    if tile_size is not None:
        ts = (int(tile_size),) * d if isinstance(tile_size, int) else tuple(int(t) for t in tile_size)
        if len(ts) != d or min(ts) < 1:
            raise ValueError(f"tile_size must be a positive int or {d} positive ints, got {tile_size!r}")
    plans = []
    for st in stages:
        extent = tuple(e * f for e, f in zip(lat_sp, st.in_scale, strict=True))
        out_sp = tuple(e * f for e, f in zip(extent, st.scale, strict=True))
        # host tensors alive while the stage runs: its input, its output, the (batch) result
        in_bytes = st.in_channels * math.prod(extent) * 4
        out_bytes = st.out_channels * math.prod(out_sp) * 4
        stored = in_bytes + (result_bytes if st is final else out_bytes + result_bytes)
        # per stage-input voxel: live activations + the tile input copy + the tile output copy
        per_vox = (
            _LIVE_TENSORS * itemsize * st.act_per_voxel
            + (itemsize + 4) * st.in_channels
            + 4 * st.out_channels * math.prod(st.scale)
        )
        available = max_memory - overhead - weights - (0 if on_cuda else stored)
        if st.global_ops:
            grid = (1,) * d
        elif tile_size is not None:
            grid = tuple(-(-e // (t * f)) for e, t, f in zip(extent, ts, st.in_scale, strict=True))
        else:
            found = _choose_grid(extent, st.halo, available / per_vox)
            if found is None:
                found = tuple(max(1, e // max(4, h)) for e, h in zip(extent, st.halo, strict=True))
                warnings.warn(
                    f"decode_tiled: max_memory={max_memory} leaves {available} bytes for stage {st.index}; "
                    f"using the smallest tiles {found}",
                    RuntimeWarning,
                    stacklevel=3,
                )
            grid = found
        tiles = _tiles(extent, st.halo, grid)
        tile_shape = tuple(max(t.size[a] for t in tiles) for a in range(d))
        tile_core = tuple(-(-e // n) for e, n in zip(extent, grid, strict=True))
        tile_bytes = int(math.prod(tile_shape) * per_vox)
        if st.global_ops and tile_bytes > available:
            warnings.warn(
                f"decode_tiled: stage {st.index} has global ops (attention) and must run untiled; "
                f"it needs ~{tile_bytes} bytes, over the {available} available",
                RuntimeWarning,
                stacklevel=3,
            )
        plans.append(
            StagePlan(
                index=st.index,
                blocks=tuple(st.names),
                in_shape=(st.in_channels, *extent),
                out_shape=(st.out_channels, *out_sp),
                halo=st.halo,
                grid=grid,
                tile_core=tile_core,
                tile_shape=tile_shape,
                num_groupnorms=len(st.groupnorms),
                tile_bytes=tile_bytes,
                available_bytes=int(available),
                stored_bytes=0 if on_cuda else stored,
                global_ops=st.global_ops,
            )
        )
    last = plans[-1]
    return DecodePlan(
        latent_shape=tuple(int(s) for s in latent_shape),
        output_shape=(n_batch, *last.out_shape),
        device=str(device),
        max_memory=int(max_memory),
        weight_bytes=weights,
        overhead_bytes=overhead,
        stages=tuple(plans),
    )


# ------------------------------------------------------------------------------------- model patching
@contextlib.contextmanager
def _on_device(vae: nn.Module, device: torch.device) -> Iterator[None]:
    """Temporarily move ``post_quant_conv`` and the decoder to ``device``."""
    mods = (vae.post_quant_conv, vae.decoder)
    orig = [next(m.parameters()).device for m in mods]
    if all(o == device for o in orig):
        yield
        return
    try:
        for m in mods:
            m.to(device)
        yield
    finally:
        for m, o in zip(mods, orig, strict=True):
            m.to(o)


@contextlib.contextmanager
def _maisi_unsplit(decoder: nn.Module) -> Iterator[None]:
    """Turn off ``MaisiConvolution`` splitting (tiles are small; its split logic needs large inputs)."""
    saved = [(m, m.num_splits) for m in decoder.modules() if type(m).__name__ == "MaisiConvolution"]
    try:
        for m, _ in saved:
            m.num_splits = 1
        yield
    finally:
        for m, n in saved:
            m.num_splits = n


class _TileContext:
    """The tile being run: its input size and core (stage-input voxels); maps regions to any tensor."""

    size: tuple[int, ...] = ()
    core_local: tuple[slice, ...] = ()
    core: tuple[slice, ...] = ()

    def scale_of(self, x: torch.Tensor) -> tuple[int, ...]:
        sp = x.shape[2:]
        scale = tuple(s // t for s, t in zip(sp, self.size, strict=True))
        if any(f * t != s for f, t, s in zip(scale, self.size, sp, strict=True)):
            raise RuntimeError(f"spatial size {tuple(sp)} is not a multiple of the tile size {self.size}")
        return scale


class _GroupNormPasses:
    """Replaces the ``forward`` of a stage's GroupNorms: apply known statistics, or collect and abort."""

    def __init__(self, gns: list[nn.GroupNorm], ctx: _TileContext) -> None:
        self.gns = gns
        self.ctx = ctx
        self.affine: list[tuple[torch.Tensor, torch.Tensor]] = []  # per-channel (scale, shift), known GNs
        self.collect = -1
        self._sums: torch.Tensor | None = None
        self._count = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        missing = object()
        saved = [gn.__dict__.get("forward", missing) for gn in self.gns]
        try:
            for i, gn in enumerate(self.gns):
                gn.forward = self._make_forward(i)
            yield
        finally:
            for gn, old in zip(self.gns, saved, strict=True):
                if old is missing:
                    gn.__dict__.pop("forward", None)
                else:
                    gn.forward = old

    def _make_forward(self, i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            return self._forward(i, x)

        return forward

    def start_collect(self, k: int) -> None:
        self.collect = k
        self._sums = None
        self._count = 0

    def _forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        gn = self.gns[i]
        if i < len(self.affine):
            a, b = self.affine[i]
            shape = (1, -1) + (1,) * (x.ndim - 2)
            y = torch.addcmul(b.to(x.dtype).view(shape), x, a.to(x.dtype).view(shape))
            if getattr(gn, "norm_float16", False):
                y = y.to(torch.float16)
            return y
        if i != self.collect:
            raise RuntimeError(f"GroupNorm {i} reached before the statistics of GroupNorm {self.collect}")
        c = x.shape[1]
        core = x[(0, slice(None), *_scaled(self.ctx.core_local, self.ctx.scale_of(x)))]
        sums = torch.zeros(2, c, dtype=torch.float64, device=x.device)
        for ch in range(c):  # per channel keeps the float64 copy small
            v = core[ch].to(torch.float64)
            sums[0, ch] = v.sum()
            sums[1, ch] = v.square().sum()
        self._sums = sums if self._sums is None else self._sums + sums
        self._count += core[0].numel()
        raise _StopPass

    def finish_collect(self) -> None:
        """Turn the collected sums of GroupNorm ``collect`` into per-channel scale and shift."""
        gn = self.gns[self.collect]
        assert self._sums is not None and self.collect == len(self.affine)
        g = gn.num_groups
        sums = self._sums.cpu().view(2, g, -1)
        n = self._count * sums.shape[2]
        mean = sums[0].sum(1) / n
        var = (sums[1].sum(1) / n - mean.square()).clamp_min(0.0)
        rstd = (var + gn.eps).rsqrt()
        per = sums.shape[2]
        mean_c, rstd_c = mean.repeat_interleave(per), rstd.repeat_interleave(per)
        w = gn.weight.detach().double().cpu() if gn.weight is not None else torch.ones_like(mean_c)
        b = gn.bias.detach().double().cpu() if gn.bias is not None else torch.zeros_like(mean_c)
        scale = w * rstd_c
        shift = b - mean_c * scale
        dev = gn.weight.device if gn.weight is not None else self._sums.device
        self.affine.append((scale.float().to(dev), shift.float().to(dev)))
        self.collect = -1


# ------------------------------------------------------------------------------------------------ decode
def _run_units(units: list[nn.Module], start: int, x: torch.Tensor) -> torch.Tensor:
    for u in units[start:]:
        x = u(x)
    return x


class _Progress:
    def __init__(self, fn: ProgressFn | None, total: int) -> None:
        self.fn, self.total, self.done = fn, total, 0

    def tick(self) -> None:
        self.done += 1
        if self.fn is not None:
            self.fn(self.done, self.total)


def _capture_hook(ctx: _TileContext, buf: torch.Tensor) -> Callable:
    """Forward pre-hook writing the core of a unit's input into the whole-volume host buffer ``buf``."""

    def grab(module: nn.Module, args: tuple) -> None:
        x = args[0]
        f = ctx.scale_of(x)
        buf[(slice(None), *_scaled(ctx.core, f))] = x[(0, slice(None), *_scaled(ctx.core_local, f))]

    return grab


def _decode_stage(
    st: _Stage,
    sp: StagePlan,
    src: torch.Tensor,
    dst: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
    progress: _Progress,
    cache_budget: int,
) -> None:
    """Decode one stage from the host tensor ``src`` (C, *spatial) into the host tensor ``dst``."""
    extent = tuple(src.shape[1:])
    if sp.num_tiles == 1:  # whole volume: the GroupNorms compute their own (global) statistics
        y = _run_units(st.units, 0, src.unsqueeze(0).to(device=device, dtype=dtype))
        dst.copy_(y[0])
        del y
        release_freed_memory()
        progress.tick()
        return
    ctx = _TileContext()
    passes = _GroupNormPasses(st.groupnorms, ctx)
    every = (slice(None),)
    cache: tuple[int, torch.Tensor] | None = None  # (local unit index, its input over the whole volume)
    with passes.installed():
        for k in range(len(st.groupnorms) + 1):
            collecting = k < len(st.groupnorms)
            start, source = cache if cache is not None else (0, src)
            f_src = st.unit_in_scale[start]
            capture: tuple[int, torch.Tensor] | None = None
            hook = None
            if collecting:
                passes.start_collect(k)
                ju = st.gn_units[k]
                f = st.unit_in_scale[ju]
                shape = (st.unit_in_channels[ju], *(e * s for e, s in zip(extent, f, strict=True)))
                held = source.numel() * 4 if cache is not None else 0
                tile_copy = math.prod(sp.tile_shape) * math.prod(f) * shape[0] * 4
                if ju > start and math.prod(shape) * 4 + held + tile_copy <= cache_budget:
                    capture = (ju, torch.empty(shape, dtype=torch.float32))
                    hook = st.units[ju].register_forward_pre_hook(_capture_hook(ctx, capture[1]))
            tiles = _tiles(extent, st.halo_for(start, k if collecting else None), sp.grid)
            try:
                for t in tiles:
                    ctx.size, ctx.core_local, ctx.core = t.size, t.core_local, t.core
                    x = source[(*every, *_scaled(t.src, f_src))]
                    x = x.unsqueeze(0).to(device=device, dtype=dtype, copy=device.type == "cpu")
                    try:
                        y = _run_units(st.units, start, x)
                    except _StopPass:
                        pass
                    else:
                        if collecting:
                            raise RuntimeError(f"stage {st.index}: GroupNorm {k} was not reached")
                        core = y[(0, *every, *_scaled(t.core_local, st.scale))]
                        dst[(*every, *_scaled(t.core, st.scale))] = core
                        del y, core
                    del x
                    if sp.tile_bytes >= _TRIM_MIN_BYTES:
                        release_freed_memory()
                    progress.tick()
            finally:
                if hook is not None:
                    hook.remove()
            if collecting:
                passes.finish_collect()
                if capture is not None:
                    cache = capture


def decode_full(vae: nn.Module, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Plain ``vae.decode(z)`` under ``torch.no_grad``, returned on CPU as float32 (for comparison); ``cond``:
    a mask decoder's full-resolution condition (:mod:`land.models.mask_decoder`)."""
    with torch.no_grad():
        dev = next(vae.decoder.parameters()).device
        if cond is None:
            return vae.decode(z.to(dev)).float().cpu()
        _check_cond(vae)
        return vae.decode(z.to(dev), cond.to(dev)).float().cpu()


def _check_cond(vae: nn.Module) -> None:
    from ..models.mask_decoder import has_mask_decoder

    if not has_mask_decoder(vae):
        raise ValueError("this VAE's decoder takes no mask (vae.mask_decoder is 'none'); pass cond=None")


def plan_tiles(
    vae: nn.Module,
    latent_shape: Sequence[int] | torch.Size | torch.Tensor,
    max_memory: int | None = None,
    device: torch.device | str | None = None,
    *,
    tile_size: int | Sequence[int] | None = None,
) -> DecodePlan:
    """The tiling :func:`decode_tiled` would use for a latent (or latent shape) ``(N, C, *spatial)``."""
    if isinstance(latent_shape, torch.Tensor):
        latent_shape = latent_shape.shape
    shape = tuple(int(s) for s in latent_shape)
    dev = _resolve_device(vae, device)
    with _maisi_unsplit(vae.decoder):
        stages = _analyze(vae, shape[1:])
    return _make_plan(vae, stages, shape, max_memory, dev, tile_size)


def choose_method(
    vae: nn.Module,
    latent_shape: Sequence[int],
    max_memory: int | None,
    device: torch.device,
    method: str = "auto",
    tile_size: int | Sequence[int] | None = None,
    cache_memory: int | None = None,
) -> str:
    """The method :func:`decode_tiled` uses: ``"stream"`` or ``"passes"`` (see there)."""
    from ..models.mask_decoder import has_mask_decoder

    if method != "auto":
        return method
    if has_mask_decoder(vae):
        return "stream"
    if tile_size is not None or cache_memory is not None or device.type != "cpu":
        return "passes"
    from .streamed import streamable

    if not streamable(vae):
        return "passes"
    with warnings.catch_warnings():  # "smallest tiles" warnings of a plan that will not be used
        warnings.simplefilter("ignore", RuntimeWarning)
        plan = plan_tiles(vae, latent_shape, max_memory, device)
    return "passes" if all(s.num_tiles == 1 for s in plan.stages) else "stream"


def decode_tiled(
    vae: nn.Module,
    z: torch.Tensor,
    max_memory: int | None = None,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    *,
    tile_size: int | Sequence[int] | None = None,
    cache_memory: int | None = None,
    method: str = "auto",
    spill_dir: str | None = None,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode ``z`` (N, C, *spatial) exactly like ``vae.decode`` but within ``max_memory`` bytes.

    Two exact methods: ``"stream"`` (:mod:`land.decoding.streamed`: every convolution once, slab by slab,
    layer outputs that do not fit spilled to disk) and ``"passes"`` (this module: tiles in memory, each
    stage recomputed once per GroupNorm to gather its statistics; any supported decoder, also MAISI's).
    ``"auto"`` decodes whole when the volume fits ``max_memory``, else streams on CPU when the decoder
    allows it, else uses passes. A mask-aware decoder (:mod:`land.models.mask_decoder`) always streams.

    Args:
        vae: MONAI ``AutoencoderKL`` or ``AutoencoderKlMaisi`` (not modified; restored also on errors).
        z: latent batch; items are decoded one after another.
        max_memory: bytes for the whole decode. Default: :data:`DEFAULT_CPU_MAX_MEMORY` on CPU; on CUDA
            90% of the free device memory (host memory holding the stage boundaries is then not counted).
        device: where the decoder runs (default: where its weights are); stage boundaries stay on the host.
        progress: ``progress(done, total)`` after every tile pass (``total`` = ``plan.total_tile_passes``).
        tile_size: override the budget: tile core edge in latent voxels (int or one per axis).
        cache_memory: host bytes for caching a block input between passes (skips recomputing the stage
            prefix). Default: on CPU what ``max_memory`` leaves after the planned tiles, on CUDA 0.
        method: ``"auto"``, ``"stream"`` or ``"passes"`` (see above); ``tile_size`` and ``cache_memory``
            are options of ``"passes"`` and select it under ``"auto"``.
        spill_dir: folder for the streaming method's spill files (default: the system temporary folder).
        cond: a mask decoder's condition at image resolution (N, 1 or 3, *image spatial), read slab by slab
            (see :func:`land.decoding.streamed.decode_stream`); None: no mask.

    Returns:
        float32 CPU tensor (N, out_channels, *spatial * compression).
    """
    if z.ndim < 3:
        raise ValueError(f"expected a latent of shape (N, C, *spatial), got {tuple(z.shape)}")
    if method not in ("auto", "stream", "passes"):
        raise ValueError(f"method must be 'auto', 'stream' or 'passes', not {method!r}")
    dev = _resolve_device(vae, device)
    if choose_method(vae, z.shape, max_memory, dev, method, tile_size, cache_memory) == "stream":
        from .streamed import decode_stream

        return decode_stream(vae, z, max_memory, dev, progress, spill_dir=spill_dir, cond=cond)
    from ..models.mask_decoder import has_mask_decoder

    if has_mask_decoder(vae):
        raise NotImplementedError("a mask-aware decoder decodes with method 'stream' or 'auto', not 'passes'")
    if cond is not None:
        _check_cond(vae)
    with _on_device(vae, dev), _maisi_unsplit(vae.decoder), torch.no_grad():
        stages = _analyze(vae, z.shape[1:])
        plan = _make_plan(vae, stages, z.shape, max_memory, dev, tile_size)
        dtype = next(vae.decoder.parameters()).dtype
        prog = _Progress(progress, plan.total_tile_passes)
        result = torch.empty(plan.output_shape, dtype=torch.float32)
        for n in range(z.shape[0]):
            src = z[n].detach().to("cpu", torch.float32)
            for st, sp in zip(stages, plan.stages, strict=True):
                last = st is stages[-1]
                dst = result[n] if last else torch.empty(sp.out_shape, dtype=torch.float32)
                if cache_memory is not None:
                    budget = cache_memory
                elif dev.type == "cuda":
                    budget = 0
                else:
                    budget = sp.available_bytes - sp.tile_bytes
                _decode_stage(st, sp, src, dst, dev, dtype, prog, budget)
                src = dst
        return result
