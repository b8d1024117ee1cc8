"""Procedural chest CT phantoms with lung and nodule masks (training data for the demo model, test data).

``make_phantom(seed)`` builds a non-contrast chest CT (HU) with: body outline (skin, subcutaneous fat,
muscle), thoracic cavity with two lungs (right larger, tapering apices, diaphragm domes, the right one
higher), mediastinum (fat around heart, aorta, superior vena cava, pulmonary arteries, oesophagus, trachea
and main bronchi), spine (vertebral bodies with cortical rim, discs, canal, posterior elements), ribs with
costal cartilages and sternum, upper abdomen below the diaphragm, pulmonary artery / vein / airway trees
inside the lungs and 0..K nodules of texture 1..5. Everything is deterministic per seed. The anatomy is
defined in millimetres for a 256 mm field of view and scaled with the field of view (clamped to 0.35..1.35),
so any size/spacing works (e.g. 64^3 x 4 mm, 128^3 x 2 mm, 256^3 x 1 mm give the same anatomy).
Coordinates are ITK LPS: x to the patient's left, y posterior, z superior; arrays are ``[z, y, x]``.

HU values (non-contrast CT; typical values as tabulated in standard CT physics and radiology texts, e.g.
Bushberg et al. "The Essential Physics of Medical Imaging", Hofer "CT Teaching Manual", Webb/Brant/Major
"Fundamentals of Body CT"; nodule types after the Fleischner Society glossary, Hansell et al., Radiology
2008, and Lung-RADS):

=====================================  ==========================================================
air (outside body, airway lumen)       -1000
lung parenchyma                        -870..-825 per case, +-35 anterior-posterior gradient
                                       (dependent lung denser) and +-15 low-frequency variation
subcutaneous / mediastinal fat         -100 / -90 (typical -100..-50)
skin, muscle, soft tissue              30, 50 (typical 30..60)
blood (heart, aorta, vessels)          40 (non-contrast 30..50)
liver / other upper abdomen            60 / 45
spinal canal (CSF, cord)               15
costal cartilage / intervertebral disc 120 / 90
cancellous bone                        250..300 (typical 200..400)
cortical bone                          700 (ribs), 800 (vertebrae) (typical 700..1000+)
ground-glass (texture 1, 2)            -650, denser part of texture 2 about -450
part-solid (texture 3)                 solid core +20 in a -600 ground-glass halo
mostly solid (texture 4)               +25 with a thin -550 rim
solid (texture 5)                      +30 (solid nodules 0..60)
=====================================  ==========================================================

Nodules have a slight internal variation (+-20..35 HU). The image is blurred mildly (3-tap separable
kernel, sigma about 0.6 voxel, partial volume) and then gets slightly correlated Gaussian noise of
``noise_hu`` standard deviation; it is clipped to [-1024, 3071] and stored as int16.

Lung mask vs image: the lung mask is exactly the region painted as lung parenchyma, including the
intrapulmonary vessels, airways and nodules drawn inside it (as in real lung segmentations), and excluding
the mediastinum, hila, trachea and main bronchi. Thresholding the image at about -400 HU inside the body
therefore recovers the lungs with Dice > 0.9 (the misses are vessels and solid nodules, the extras the
trachea and main bronchi). Every nodule lies fully inside the lung mask.

API: ``make_phantom`` -> ``PhantomCase``; ``lung_mask_phantom`` (the same lung mask, fast);
``place_nodule`` (add a nodule to image/label volumes); ``write_case`` / ``read_case`` (folder with
``image.nii.gz``, ``lung.nii.gz``, ``nodules.nii.gz``, ``case.json``, ``textures.json``, written by
``land.data.folder.write_case``); ``write_phantom_dataset``
(``case_0000/...`` folders plus ``manifest.csv``, resumable).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..imaging.volume import Volume
from ..interface.errors import InputError

__all__ = [
    "PhantomCase",
    "lung_mask_phantom",
    "make_phantom",
    "place_nodule",
    "read_case",
    "write_case",
    "write_phantom_dataset",
]

HU_AIR = -1000.0
HU_FAT = -100.0
HU_MED_FAT = -90.0
HU_SKIN = 30.0
HU_MUSCLE = 50.0
HU_BLOOD = 40.0
HU_LIVER = 60.0
HU_ABDOMEN = 45.0
HU_CSF = 15.0
HU_CARTILAGE = 120.0
HU_DISC = 90.0
HU_CANCELLOUS = 250.0
HU_CORTICAL = 800.0
HU_AIRWAY_WALL = 30.0

REF_FOV_MM = 256.0  # the anatomy below is defined (in mm) for this field of view
TEXTURES = (1, 2, 3, 4, 5)
_BLUR_W = 0.2  # 3-tap kernel [w, 1-2w, w] per axis: sigma = sqrt(2w) = 0.63 voxel
_NOISE_W = 0.2


@dataclass
class PhantomCase:
    """A phantom: HU image (int16), lung mask (uint8 0/1), nodule labels (0..K) and per-label facts."""

    image: Volume
    lung: Volume
    nodules: Volume
    textures: dict[int, int] = field(default_factory=dict)
    diameters_mm: dict[int, float] = field(default_factory=dict)
    centres_mm: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    image_without_nodules: Volume | None = None  # the same anatomy and noise without the nodules


# ----------------------------------------------------------------------------------------- geometry


class _Grid:
    """Voxel grid centred at the origin; physical axes (mm) and 'canonical' axes (mm at 256 mm FOV)."""

    def __init__(
        self,
        size: tuple[int, int, int],
        spacing: tuple[float, float, float],
        anatomy_fov: Sequence[float] | None = None,
    ) -> None:
        self.size = size  # x, y, z
        self.shape = (size[2], size[1], size[0])  # z, y, x
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.origin = -(np.asarray(size, dtype=np.float64) - 1.0) * self.spacing / 2.0
        self.x, self.y, self.z = (
            (self.origin[i] + np.arange(size[i]) * self.spacing[i]).astype(np.float32) for i in range(3)
        )
        fov = np.asarray(anatomy_fov if anatomy_fov is not None else np.asarray(size) * self.spacing)
        self.sxy = float(np.clip(min(fov[0], fov[1]) / REF_FOV_MM, 0.35, 1.35))
        self.sz = float(np.clip(fov[2] / REF_FOV_MM, 0.35, 1.35))
        self.scale = np.array([self.sxy, self.sxy, self.sz])
        self.X = (self.x / self.sxy)[None, None, :]
        self.Y = (self.y / self.sxy)[None, :, None]
        self.Z = (self.z / self.sz)[:, None, None]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Array slices (z, y, x) of the voxels with physical coordinates in [lo, hi]; None if empty."""
        i0 = np.maximum(np.ceil((lo - self.origin) / self.spacing), 0).astype(int)
        i1 = np.minimum(np.floor((hi - self.origin) / self.spacing) + 1, self.size).astype(int)
        if np.any(i1 <= i0):
            return None
        return (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))

    def cbox(self, lo_c: Sequence[float], hi_c: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Like ``box`` with canonical coordinates."""
        return self.box(np.asarray(lo_c) * self.scale, np.asarray(hi_c) * self.scale)

    def local(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Canonical coordinates (broadcastable X, Y, Z) of a box."""
        return self.X[:, :, sl[2]], self.Y[:, sl[1], :], self.Z[sl[0], :, :]

    def physical(self, flat_index: np.ndarray) -> np.ndarray:
        """Physical (x, y, z) of flat voxel indices, shape (n, 3)."""
        z, y, x = np.unravel_index(flat_index, self.shape)
        return np.stack([self.x[x], self.y[y], self.z[z]], axis=1).astype(np.float64)


def _normalize_geometry(
    size: int | Sequence[int], spacing: float | Sequence[float]
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    sz = (int(size),) * 3 if np.isscalar(size) else tuple(int(s) for s in size)
    sp = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(sz) != 3 or min(sz) < 16:
        raise InputError(f"phantom size must be an int or 3 ints (x, y, z) of at least 16, got {size!r}")
    if len(sp) != 3 or min(sp) <= 0:
        raise InputError(f"phantom spacing must be a positive float or 3 floats (x, y, z), got {spacing!r}")
    return sz, sp  # type: ignore[return-value]


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_field(shape: tuple[int, ...], cell: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Smooth random field (about unit amplitude): coarse normal grid, smooth-step interpolated."""
    grid = [int(math.ceil(n / c)) + 2 for n, c in zip(shape, cell, strict=True)]
    f = rng.standard_normal(grid).astype(np.float32)
    for axis, (n, c) in enumerate(zip(shape, cell, strict=True)):
        pos = np.arange(n, dtype=np.float32) / np.float32(c) + np.float32(rng.uniform(0.0, 1.0))
        i0 = np.floor(pos).astype(np.intp)
        w = pos - i0
        w = (w * w * (3.0 - 2.0 * w)).reshape([n if a == axis else 1 for a in range(f.ndim)])
        a = np.take(f, i0, axis=axis)
        f = a + (np.take(f, i0 + 1, axis=axis) - a) * w
    return f


def _field_cells(grid: _Grid, mm: float) -> tuple[float, float, float]:
    """Field cell sizes (voxels, z-y-x order) for a physical correlation length."""
    return tuple(max(2.0, mm / s) for s in grid.spacing[::-1])  # type: ignore[return-value]


def _blur3(a: np.ndarray, w: float) -> np.ndarray:
    """Separable 3-tap blur [w, 1-2w, w] along each axis (edges replicated), float32."""
    out = a.astype(np.float32, copy=True)
    for axis in range(out.ndim):
        src = np.moveaxis(out, axis, 0)
        res = src * np.float32(1.0 - 2.0 * w)
        res[1:] += np.float32(w) * src[:-1]
        res[:-1] += np.float32(w) * src[1:]
        res[0] += np.float32(w) * src[0]
        res[-1] += np.float32(w) * src[-1]
        out = np.moveaxis(res, 0, axis)
    return np.ascontiguousarray(out)


def _capsule(
    grid: _Grid, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, pad: float
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """Distance to a segment and the interpolated radius in the segment's box (physical mm)."""
    r = max(r0, r1) + pad
    sl = grid.box(np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)
    if sl is None:
        return None
    x = grid.x[sl[2]][None, None, :] - np.float32(p0[0])
    y = grid.y[sl[1]][None, :, None] - np.float32(p0[1])
    z = grid.z[sl[0]][:, None, None] - np.float32(p0[2])
    dx, dy, dz = (float(v) for v in (p1 - p0))
    length2 = dx * dx + dy * dy + dz * dz
    if length2 > 1e-9:
        t = np.clip((x * dx + y * dy + z * dz) / length2, 0.0, 1.0)
    else:
        t = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
    ex, ey, ez = x - t * dx, y - t * dy, z - t * dz
    dist = np.sqrt(ex * ex + ey * ey + ez * ez)
    return sl, dist, r0 + t * (r1 - r0)


# ----------------------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Anatomy:
    """Per-seed anatomical parameters (canonical mm; x left, y posterior, z superior)."""

    body_a: float
    body_b: float
    fat: float
    muscle: float
    cav_a: float
    cav_ant: float
    cav_post: float
    apex: tuple[float, float]  # right, left
    dome: tuple[float, float]
    heart_c: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    heart_yaw: float
    heart_pitch: float
    x_mid: float
    carina_z: float
    lung_hu: float
    rib_top: float
    rib_pitch: float
    spine_phase: float

    @property
    def yc(self) -> float:
        return 0.5 * (self.cav_ant + self.cav_post)

    @property
    def cav_b(self) -> float:
        return 0.5 * (self.cav_post - self.cav_ant)

    @property
    def lung_cx(self) -> float:
        """Lateral offset of the lung centres (apices)."""
        return 0.45 * self.cav_a

    @property
    def y_vb(self) -> float:
        """Vertebral body centre (y); the lungs reach behind it in the paravertebral gutters."""
        return self.cav_post - 30.0

    @property
    def y_trachea(self) -> float:
        return self.y_vb - 14.0 - 17.0 - 19.0


def _sample_anatomy(seed: int) -> _Anatomy:
    rng = np.random.default_rng([seed, 0])
    u = rng.uniform
    body_a = 116.0 * u(0.92, 1.04)
    body_b = 88.0 * u(0.92, 1.05)
    fat, muscle = u(5.0, 18.0), u(5.0, 9.0)
    cav_a = body_a - (fat + muscle + 9.0)
    cav_ant = -body_b + 0.8 * fat + muscle + 7.0
    cav_post = body_b - 0.6 * fat - 30.5  # spinous tips 8 mm under the skin, see _Anatomy.y_vb
    apex_r = 108.0 + u(-7.0, 5.0)
    dome_r = -40.0 + u(-9.0, 9.0)
    dome_l = dome_r - u(6.0, 14.0)
    yc, b = 0.5 * (cav_ant + cav_post), 0.5 * (cav_post - cav_ant)
    heart_c = (16.0 + u(-5.0, 5.0), yc - 0.3 * b + u(-4.0, 4.0), dome_l + 28.0 + u(-5.0, 5.0))
    k = u(0.9, 1.1)
    heart_axes = (48.0 * k * u(0.95, 1.05), 35.0 * k, 36.0 * k * u(0.95, 1.05))
    return _Anatomy(
        body_a=body_a,
        body_b=body_b,
        fat=fat,
        muscle=muscle,
        cav_a=cav_a,
        cav_ant=cav_ant,
        cav_post=cav_post,
        apex=(apex_r, apex_r + u(-4.0, 4.0)),
        dome=(dome_r, dome_l),
        heart_c=heart_c,
        heart_axes=heart_axes,
        heart_yaw=math.radians(35.0 + u(-8.0, 8.0)),
        heart_pitch=math.radians(-22.0 + u(-6.0, 6.0)),
        x_mid=u(-3.0, 5.0),
        carina_z=38.0 + u(-5.0, 5.0),
        lung_hu=u(-870.0, -825.0),
        rib_top=apex_r - 6.0 + u(-3.0, 3.0),
        rib_pitch=23.0 * u(0.95, 1.05),
        spine_phase=u(0.0, 24.0),
    )


def _superellipse(x: np.ndarray, y: np.ndarray, a, b, p_front: float, p_back: float) -> np.ndarray:
    """Normalised radius of a superellipse (exponent p_front for y < 0, p_back for y > 0)."""
    ax, ay = np.abs(x / a), np.abs(y / b)
    front = (ax**p_front + ay**p_front) ** (1.0 / p_front)
    back = (ax**p_back + ay**p_back) ** (1.0 / p_back)
    return np.where(y > 0, back, front)


def _tubes(a: _Anatomy) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Mediastinal tubes: (kind, canonical polyline points (n, 3), radii (n,))."""
    ytr, yvb = a.y_trachea, a.y_vb
    hx, hy, hz = a.heart_c
    top, bottom = 400.0, -400.0
    cz = a.carina_z
    ye = yvb - 14.0 - 10.0  # oesophagus
    tubes = [
        ("trachea", [(-2.0, ytr - 3.0, top), (-1.0, ytr - 1.0, 90.0), (0.0, ytr, cz)], [10.0, 10.0, 9.5]),
        ("bronchus", [(0.0, ytr, cz), (-36.0, ytr + 8.0, cz - 22.0)], [7.5, 6.5]),
        (
            "bronchus",
            [(0.0, ytr, cz), (22.0, ytr + 6.0, cz - 14.0), (44.0, ytr + 12.0, cz - 32.0)],
            [7.0, 6.5, 6.0],
        ),
        ("oesophagus", [(-1.0, ye, top), (2.0, ye, cz), (6.0, ye - 4.0, bottom)], [8.0, 8.0, 8.0]),
        (
            "aorta",
            [
                (-6.0, hy - 18.0, hz + 12.0),
                (-10.0, ytr - 30.0, cz + 10.0),
                (-8.0, ytr - 30.0, cz + 20.0),
                (2.0, ytr - 20.0, cz + 30.0),
                (14.0, ytr - 4.0, cz + 32.0),
                (22.0, ytr + 14.0, cz + 26.0),
                (24.0, yvb - 22.0, cz + 10.0),
                (22.0, yvb - 22.0, bottom),
            ],
            [14.0, 14.0, 13.5, 13.0, 12.5, 12.0, 11.5, 11.0],
        ),
        (
            "svc",
            [(-24.0, ytr - 22.0, top), (-24.0, ytr - 24.0, cz), (-20.0, hy - 4.0, hz + 10.0)],
            [9.0, 9.0, 9.0],
        ),
        (
            "pa",
            [(8.0, hy - 24.0, hz + 16.0), (10.0, ytr - 18.0, cz - 6.0), (4.0, ytr - 6.0, cz - 8.0)],
            [13.0, 13.0, 12.0],
        ),
        (
            "pa",
            [(4.0, ytr - 6.0, cz - 8.0), (-20.0, ytr - 6.0, cz - 10.0), (-38.0, ytr + 2.0, cz - 14.0)],
            [11.0, 10.0, 9.0],
        ),
        (
            "pa",
            [(10.0, ytr - 18.0, cz - 6.0), (26.0, ytr - 6.0, cz + 2.0), (42.0, ytr + 6.0, cz - 6.0)],
            [11.0, 10.0, 9.0],
        ),
    ]
    # pulmonary veins: from the left atrium (posterior heart) to both hila
    la = (hx - 10.0, hy + 26.0, hz + 10.0)
    tubes.append(("vein", [la, (-30.0, hy + 26.0, hz + 14.0)], [8.0, 7.0]))
    tubes.append(("vein", [la, (38.0, hy + 28.0, hz + 16.0)], [8.0, 7.0]))
    return [(k, np.asarray(p, np.float64), np.asarray(r, np.float64)) for k, p, r in tubes]


def _heart_frame(a: _Anatomy) -> np.ndarray:
    """Rows: unit vectors of the heart ellipsoid (long axis to the left, anterior and inferior)."""
    cy, sy, cp, sp = (
        math.cos(a.heart_yaw),
        math.sin(a.heart_yaw),
        math.cos(a.heart_pitch),
        math.sin(a.heart_pitch),
    )
    e1 = np.array([cy * cp, -sy * cp, sp])
    e2 = np.cross([0.0, 0.0, 1.0], e1)
    e2 /= np.linalg.norm(e2)
    return np.stack([e1, e2, np.cross(e1, e2)])


@dataclass
class _Masks:
    body: np.ndarray
    depth: np.ndarray  # canonical mm inside the body surface
    cav_r: np.ndarray  # normalised cavity radius
    thorax: np.ndarray  # cavity above the diaphragm
    abdomen: np.ndarray
    med: np.ndarray  # mediastinum (filled)
    paraspinal: np.ndarray
    lung: np.ndarray
    lung_side: tuple[np.ndarray, np.ndarray]  # right, left
    tube_segments: list[tuple[str, tuple[slice, slice, slice], np.ndarray, np.ndarray]]
    heart_q: tuple[tuple[slice, slice, slice], np.ndarray] | None


def _apex_profile(z: np.ndarray, apex: float, height: float = 110.0) -> np.ndarray:
    """Relative lung cross-section radius: 1 below ``apex - height``, tapering to 0 at the apex."""
    t = np.clip((z - (apex - height)) / height, 0.0, 1.0)
    return (1.0 - t**1.35) ** (1.0 / 1.35)


def _anatomy_masks(grid: _Grid, a: _Anatomy) -> _Masks:
    """Body, cavity, mediastinum and lung masks (the lung mask of both make_phantom and lung_mask_phantom)."""
    X, Y, Z = grid.X, grid.Y, grid.Z
    # body outline: superellipse, narrowing towards the neck
    zf = 1.0 - 0.12 * _smoothstep(60.0, 150.0, Z)
    body_r = _superellipse(
        X, Y, a.body_a * zf, a.body_b * (1.0 - 0.1 * _smoothstep(60.0, 150.0, Z)), 2.2, 3.0
    )
    body = body_r < 1.0
    rho = np.sqrt(X * X + Y * Y)
    depth = rho * (1.0 - body_r) / np.maximum(body_r, 1e-3)
    # thoracic cavity: narrower towards the thoracic inlet, slightly wider at the base
    yc, cb = a.yc, a.cav_b
    cx, r_apex = a.lung_cx, 0.75 * a.cav_a
    prof = _apex_profile(Z, 0.5 * sum(a.apex))
    cav_w = np.minimum(a.cav_a * (0.92 + 0.12 * _smoothstep(70.0, -70.0, Z)), cx + r_apex * prof + 6.0)
    cav_r = _superellipse(X, Y - yc, cav_w, np.minimum(cb, r_apex * prof + 4.0), 2.3, 2.8)
    cavity = cav_r < 1.0
    # diaphragm domes (per side); the posterior costophrenic recesses are deeper
    yn = np.clip((Y - yc) / cb, -1.5, 1.5)
    zd = []
    for s, dome in ((-1.0, a.dome[0]), (1.0, a.dome[1])):
        q2 = ((X - s * 45.0) / 60.0) ** 2 + ((Y - yc + 5.0) / 55.0) ** 2
        zd.append(dome - 35.0 * q2 - 14.0 * np.maximum(yn, 0.0) ** 2)
    right = X < a.x_mid
    zd_full = np.where(right, zd[0], zd[1])
    above = Z > zd_full
    thorax = cavity & above
    abdomen = cavity & ~above

    # mediastinal structures, dilated by a fat margin, then filled row-wise (along x)
    med = np.zeros(grid.shape, bool)
    segments = []
    margin = 4.0 * grid.sxy
    for kind, pts, radii in _tubes(a):
        pp = pts * grid.scale
        rr = radii * grid.sxy
        for i in range(len(pp) - 1):
            res = _capsule(grid, pp[i], pp[i + 1], rr[i], rr[i + 1], margin + grid.spacing.max())
            if res is None:
                continue
            sl, dist, rad = res
            med[sl] |= dist < rad + margin
            segments.append((kind, sl, dist, rad))
    # heart ellipsoid
    frame = _heart_frame(a)
    ext = max(a.heart_axes) + 8.0
    hc = np.asarray(a.heart_c)
    heart_q = None
    sl = grid.cbox(hc - ext, hc + ext)
    if sl is not None:
        x, y, z = grid.local(sl)
        vx, vy, vz = x - hc[0], y - hc[1], z - hc[2]
        q = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
        qd = np.zeros_like(q)
        for e, ax in zip(frame, a.heart_axes, strict=True):
            u = vx * e[0] + vy * e[1] + vz * e[2]
            q += (u / ax) ** 2
            qd += (u / (ax + 5.0)) ** 2
        q = np.where(cavity[sl], q, 9.0)
        med[sl] |= qd < 1.0
        heart_q = (sl, q)
    # vertebral bodies (dilated) and the paraspinal zone behind them (posterior elements, muscles)
    paraspinal = np.zeros(grid.shape, bool)
    sl = grid.cbox((-40.0, a.y_vb - 30.0, -1e4), (40.0, a.y_vb + 60.0, 1e4))
    if sl is not None:
        x, y, _ = grid.local(sl)
        zone = ((x / 20.0) ** 2 + ((y - a.y_vb - 12.0) / 18.0) ** 2 < 1.0) & (y > a.y_vb)
        zone |= (x / 37.0) ** 2 + ((y - a.y_vb - 26.0) / 13.0) ** 2 < 1.0
        paraspinal[sl] = zone
        med[sl] |= ((x / 24.0) ** 2 + ((y - a.y_vb) / 19.0) ** 2 < 1.0) | zone
    # anterior mediastinal (thymic) fat between the sternum and the great vessels
    sl = grid.cbox(
        (a.x_mid - 25.0, a.cav_ant - 5.0, a.heart_c[2]), (a.x_mid + 25.0, a.cav_ant + 45.0, a.carina_z + 50.0)
    )
    if sl is not None:
        x, y, _ = grid.local(sl)
        med[sl] |= ((x - a.x_mid) / 16.0) ** 2 + ((y - a.cav_ant - 20.0) / 22.0) ** 2 < 1.0
    any_row = med.any(axis=2)
    left = np.argmax(med, axis=2)
    right_end = med.shape[2] - 1 - np.argmax(med[:, :, ::-1], axis=2)
    ix = np.arange(med.shape[2])[None, None, :]
    med = (ix >= left[:, :, None]) & (ix <= right_end[:, :, None]) & any_row[:, :, None]
    med |= np.abs(X - a.x_mid) < 3.0

    # lungs: cavity halves above the domes, rounded apices, minus the mediastinum
    sides = []
    for s, apex, side in ((-1.0, a.apex[0], right), (1.0, a.apex[1], ~right)):
        cap = (X - s * cx) ** 2 + (Y - yc - 8.0) ** 2 <= (r_apex * _apex_profile(Z, apex)) ** 2
        sides.append(thorax & side & cap & ~med)
    lung = sides[0] | sides[1]
    return _Masks(
        body, depth, cav_r, thorax, abdomen, med, paraspinal, lung, (sides[0], sides[1]), segments, heart_q
    )


# ----------------------------------------------------------------------------------------- painting


def _paint_body(grid: _Grid, a: _Anatomy, m: _Masks, rng: np.random.Generator) -> np.ndarray:
    X, Y = grid.X, grid.Y
    field_ = _smooth_field(grid.shape, _field_cells(grid, 25.0 * grid.sxy), rng)
    img = np.full(grid.shape, HU_AIR, np.float32)
    rho = np.sqrt(X * X + Y * Y) + 1e-3
    fat_t = a.fat * (0.7 + 0.6 * np.abs(X) / rho) * (1.0 + 0.25 * field_)
    wall = np.where(m.depth < 1.5, HU_SKIN, np.where(m.depth < 1.5 + fat_t, HU_FAT, HU_MUSCLE))
    img = np.where(m.body, wall + 8.0 * field_, img)
    img[m.thorax] = HU_MED_FAT
    img[m.thorax & ((~m.med & ~m.lung) | m.paraspinal)] = HU_MUSCLE
    liver = X < a.x_mid + 12.0
    abd = np.where(liver, HU_LIVER + 4.0 * field_, HU_ABDOMEN + 10.0 * field_)
    abd = np.where(~liver & (field_ > 1.0), HU_FAT, abd)
    img = np.where(m.abdomen, abd, img)
    yn = np.clip((Y - a.yc) / a.cav_b, -1.0, 1.0)
    return np.where(m.lung, a.lung_hu + 35.0 * yn + 15.0 * field_, img)


def _paint_mediastinum(grid: _Grid, a: _Anatomy, m: _Masks, img: np.ndarray) -> np.ndarray:
    """Heart, great vessels, oesophagus, trachea/bronchi walls; returns the airway-lumen fraction."""
    soft = float(grid.spacing.min())
    if m.heart_q is not None:
        sl, q = m.heart_q
        sub = img[sl]
        sub[q < 1.25] = HU_MED_FAT  # pericardial fat
        sub[q < 1.0] = HU_BLOOD
    hu = {"aorta": HU_BLOOD, "svc": HU_BLOOD, "pa": HU_BLOOD, "vein": HU_BLOOD, "oesophagus": 35.0}
    lumen = np.zeros(grid.shape, np.float32)
    for kind, sl, dist, rad in m.tube_segments:
        f = np.clip(0.5 - (dist - rad) / soft, 0.0, 1.0)
        sub = img[sl]
        value = HU_AIRWAY_WALL if kind in ("trachea", "bronchus") else hu[kind]
        sub += f * (value - sub)
        if kind in ("trachea", "bronchus"):
            fl = np.clip(0.5 - (dist - rad + 2.0 * grid.sxy) / soft, 0.0, 1.0)
            np.maximum(lumen[sl], fl, out=lumen[sl])
    return lumen


def _paint_bones(grid: _Grid, a: _Anatomy, m: _Masks, img: np.ndarray) -> None:
    X, Y, Z = grid.X, grid.Y, grid.Z
    pitch = a.rib_pitch
    # ribs (and costal cartilages) just outside the cavity, sloping down anteriorly
    yc = a.yc
    rho = np.sqrt(X * X + (Y - yc) ** 2) + 1e-3
    d_out = rho * (1.0 - 1.0 / np.maximum(m.cav_r, 1e-3))
    phi = np.arctan2(np.abs(X), Y - yc)  # 0 posterior, pi anterior
    zk0 = a.rib_top - 75.0 * phi / math.pi
    k = np.clip(np.round((zk0 - Z) / pitch), 0, 11)
    zc = zk0 - k * pitch
    q = ((d_out - 5.0) / 3.2) ** 2 + ((Z - zc) / 5.0) ** 2
    rib = (q <= 1.0) & ((np.abs(X) > 22.0) | (Y < yc)) & (np.abs(X) > 13.0) & ((k < 10) | (phi < 1.9))
    cart = phi > 2.35
    rib_hu = np.where(cart, HU_CARTILAGE, np.where(q > 0.45, HU_CORTICAL - 100.0, HU_CANCELLOUS + 50.0))
    img[...] = np.where(rib & m.body, rib_hu, img)
    # sternum
    qs = (X / 14.0) ** 2 + ((d_out - 7.0) / 5.0) ** 2
    st = (qs < 1.0) & (Y < yc) & (Z < a.rib_top - 50.0) & (Z > a.dome[0] - 25.0) & m.body
    img[...] = np.where(st, np.where(qs > 0.6, HU_CORTICAL - 200.0, HU_CANCELLOUS), img)
    # spine
    sl = grid.cbox((-45.0, a.y_vb - 25.0, -1e4), (45.0, a.y_vb + 75.0, 1e4))
    if sl is None:
        return
    x, y, z = grid.local(sl)
    sub = img[sl]
    zl = np.mod(z - a.spine_phase, pitch)
    ax = 17.0 + 0.03 * np.maximum(-z, 0.0)
    rv = np.sqrt((x / ax) ** 2 + ((y - a.y_vb) / 14.0) ** 2)
    vb = rv < 1.0
    disc = (zl < 2.5) | (zl > pitch - 2.5)
    endplate = (zl < 4.0) | (zl > pitch - 4.0)
    body_hu = np.where(disc, HU_DISC, np.where((rv > 0.88) | endplate, HU_CORTICAL, HU_CANCELLOUS))
    y_can = a.y_vb + 14.0 + 8.5
    rc = np.sqrt(x * x + (y - y_can) ** 2)
    arch_z = (zl > 0.15 * pitch) & (zl < 0.8 * pitch)
    arch = (rc >= 7.5) & (rc < 13.0) & (y > a.y_vb + 8.0) & arch_z
    ped = (np.abs(x) > 5.0) & (np.abs(x) < 12.0) & (y > a.y_vb + 6.0) & (y < y_can) & arch_z
    zl2 = np.mod(z - a.spine_phase + 0.7 * (y - y_can - 10.0), pitch)
    spinous = (
        (np.abs(x) < 3.5)
        & (y > y_can + 10.0)
        & (y < y_can + 34.0)
        & (zl2 > 0.2 * pitch)
        & (zl2 < 0.75 * pitch)
    )
    tp_y = y_can - 2.0 + (np.abs(x) - 12.0) * 0.35
    transverse = (np.abs(x) > 10.0) & (np.abs(x) < 31.0) & (np.abs(y - tp_y) < 4.5)
    transverse = transverse & (zl > 0.3 * pitch) & (zl < 0.7 * pitch)
    posterior = arch | ped | spinous | transverse
    sub[...] = np.where(rc < 7.5, HU_CSF, sub)
    sub[...] = np.where(posterior, np.where(rc < 9.0, HU_CORTICAL, 400.0), sub)
    sub[...] = np.where(vb, body_hu, sub)


def _build_tree(
    root: np.ndarray, pts: np.ndarray, radius: float, min_r: float, rng: np.random.Generator, segs: list
) -> None:
    """Space-filling branching tree: grow towards the centroid of the targets, split them, recurse."""
    n = len(pts)
    if n <= 2 or radius * 0.8 < min_r:
        for p in pts:
            segs.append((root, p, radius, max(0.7 * radius, min_r)))
        return
    c = pts.mean(axis=0)
    q = root + rng.uniform(0.35, 0.6) * (c - root)
    r_end = radius * 0.92
    segs.append((root, q, radius, r_end))
    d = pts - c
    axis = np.linalg.svd(d, full_matrices=False)[2][0]
    side = d @ axis > 0.0
    if side.all() or not side.any():
        side = np.arange(n) < n // 2
    for group in (pts[side], pts[~side]):
        _build_tree(q, group, max(r_end * (len(group) / n) ** (1.0 / 3.0), min_r), min_r, rng, segs)


def _paint_trees(
    grid: _Grid, a: _Anatomy, m: _Masks, img: np.ndarray, lumen: np.ndarray, rng: np.random.Generator
) -> None:
    """Pulmonary artery, vein and airway trees from the hila (clipped to lung and mediastinal fat)."""
    soft = float(grid.spacing.min())
    allowed = m.lung | (m.thorax & (img > -200.0) & (img < -50.0))
    ytr, cz = a.y_trachea, a.carina_z
    hx, hy, hz = a.heart_c
    roots = {
        "artery": [(-38.0, ytr + 2.0, cz - 14.0), (42.0, ytr + 6.0, cz - 6.0)],
        "vein": [(-30.0, hy + 26.0, hz + 14.0), (38.0, hy + 28.0, hz + 16.0)],
        "airway": [(-36.0, ytr + 8.0, cz - 22.0), (44.0, ytr + 12.0, cz - 32.0)],
    }
    spec = {"artery": (160, 6.0, 0.6), "vein": (130, 6.0, 0.6), "airway": (28, 5.0, 1.3)}
    vessel = np.zeros(grid.shape, np.float32)
    wall = np.zeros(grid.shape, np.float32)
    airway_lumen = np.zeros(grid.shape, np.float32)
    for side_i, side_mask in enumerate(m.lung_side):
        idx = np.flatnonzero(side_mask)
        if len(idx) < 8:
            continue
        for kind in ("artery", "vein", "airway"):
            n_t, r0, min_r = spec[kind]
            pts = grid.physical(rng.choice(idx, size=min(n_t, len(idx)), replace=False))
            root = np.asarray(roots[kind][side_i]) * grid.scale
            segs: list = []
            _build_tree(root, pts, r0 * grid.sxy, min_r, rng, segs)
            for p0, p1, r_a, r_b in segs:
                res = _capsule(grid, p0, p1, r_a, r_b, soft)
                if res is None:
                    continue
                sl, dist, rad = res
                thin = np.minimum(1.0, 2.0 * rad / soft)
                f = np.clip(0.5 - (dist - rad) / soft, 0.0, 1.0) * thin
                if kind == "airway":
                    np.maximum(wall[sl], f, out=wall[sl])
                    lum_r = rad - np.maximum(0.2 * rad, 0.6)
                    fl = np.clip(0.5 - (dist - lum_r) / soft, 0.0, 1.0) * np.minimum(1.0, 2.0 * lum_r / soft)
                    np.maximum(airway_lumen[sl], fl, out=airway_lumen[sl])
                else:
                    np.maximum(vessel[sl], f, out=vessel[sl])
    vessel *= allowed
    wall *= allowed
    airway_lumen *= allowed
    img += vessel * (HU_BLOOD - img)
    img += wall * (HU_AIRWAY_WALL - img)
    np.maximum(lumen, airway_lumen, out=lumen)
    img += lumen * (HU_AIR - img)


# ----------------------------------------------------------------------------------------- nodules


def _nodule(
    shape: tuple[int, int, int],
    spacing: np.ndarray,
    centre_idx: np.ndarray,
    diameter: float,
    texture: int,
    rng: np.random.Generator,
    lobulation: float,
    inside: np.ndarray | None = None,
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """Local box, mask and HU of a lobulated nodule; ``centre_idx`` and ``spacing`` are x-y-z.

    With ``inside`` (a [z, y, x] mask) None is returned unless the nodule lies entirely inside it.
    """
    radius = diameter / 2.0
    # lobulation: zonal Chebyshev harmonics T2..T4 around random axes (zero mean over the sphere)
    k = 5
    axes = rng.standard_normal((k, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    orders = rng.integers(2, 5, size=k)
    amps = rng.uniform(-1.0, 1.0, size=k) * lobulation / math.sqrt(k) * 1.6
    waves = rng.standard_normal((3, 3)) * (2.0 * math.pi / (radius * rng.uniform(0.8, 1.6, size=(3, 1))))
    phases = rng.uniform(0.0, 2.0 * math.pi, size=3)
    blob = rng.standard_normal(3)
    blob = 0.35 * radius * blob / np.linalg.norm(blob)
    core = {3: rng.uniform(0.38, 0.58), 4: rng.uniform(0.74, 0.86)}.get(texture, 0.0)

    ext = radius * (1.0 + 1.6 * lobulation) + float(spacing.max())
    lo = np.maximum(np.floor(centre_idx - ext / spacing), 0).astype(int)
    hi = np.minimum(np.ceil(centre_idx + ext / spacing) + 1, np.asarray(shape[::-1])).astype(int)
    if np.any(hi <= lo):
        return None
    sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    vx = ((np.arange(lo[0], hi[0]) - centre_idx[0]) * spacing[0]).astype(np.float32)[None, None, :]
    vy = ((np.arange(lo[1], hi[1]) - centre_idx[1]) * spacing[1]).astype(np.float32)[None, :, None]
    vz = ((np.arange(lo[2], hi[2]) - centre_idx[2]) * spacing[2]).astype(np.float32)[:, None, None]
    dist = np.sqrt(vx * vx + vy * vy + vz * vz) + np.float32(1e-6)
    f = np.zeros_like(dist)
    for ax_, n, amp in zip(axes, orders, amps, strict=True):
        t = (vx * ax_[0] + vy * ax_[1] + vz * ax_[2]) / dist
        cheb = {2: 2 * t * t - 1 + 1 / 3, 3: 4 * t**3 - 3 * t, 4: 8 * t**4 - 8 * t * t + 1 + 1 / 15}[int(n)]
        f += amp * cheb
    rho = dist / (radius * (1.0 + f))
    mask = rho <= 1.0
    if not mask.any():  # tiny nodule: at least the nearest voxel
        near = tuple(int(v) for v in (np.clip(np.round(centre_idx) - lo, 0, hi - lo - 1))[::-1])
        mask[near] = True
        rho[near] = 0.0
    if inside is not None and not inside[sl][mask].all():
        return None
    var = (
        sum(np.cos(vx * w[0] + vy * w[1] + vz * w[2] + ph) for w, ph in zip(waves, phases, strict=True)) / 1.2
    )
    if texture == 1:
        hu = -650.0 + 35.0 * var
    elif texture == 2:
        bd = np.sqrt((vx - blob[0]) ** 2 + (vy - blob[1]) ** 2 + (vz - blob[2]) ** 2)
        w = np.clip((0.45 * radius - bd) / (0.25 * radius) + 0.5, 0.0, 1.0)
        hu = -630.0 + 30.0 * var + w * 190.0
    elif texture in (3, 4):
        w = np.clip((core - rho) / 0.15 + 0.5, 0.0, 1.0)
        halo, solid = (-600.0, 20.0) if texture == 3 else (-550.0, 25.0)
        hu = halo + 30.0 * var + w * (solid - halo - 5.0 * var)
    else:
        hu = 30.0 + 20.0 * var
    return sl, mask, np.asarray(hu, np.float32)


def _geometry_matrix(vol: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    spacing = np.asarray(vol.spacing, np.float64)
    origin = np.asarray(vol.origin, np.float64)
    direction = np.asarray(vol.direction, np.float64).reshape(3, 3)
    return spacing, origin, direction


def place_nodule(
    image: Volume,
    labels: Volume,
    centre_mm: Sequence[float],
    diameter_mm: float,
    texture: int,
    label: int,
    rng: np.random.Generator | int | None = None,
    lung: np.ndarray | None = None,
    noise_hu: float = 0.0,
    lobulation: float = 0.12,
) -> int:
    """Add a lobulated nodule (HU by ``texture`` 1..5) to ``image`` and ``label`` to ``labels``, in place.

    ``centre_mm`` is the physical (LPS) centre; image and labels share geometry (any direction). The nodule
    HU replaces the image where it is higher (vessels crossing a ground-glass nodule stay visible). With
    ``lung`` (a [z, y, x] mask) the nodule is clipped to it. ``noise_hu`` adds white noise inside the nodule
    (for finished, noisy images). Returns the number of labelled voxels.
    """
    if int(texture) not in TEXTURES:
        raise InputError(f"nodule texture must be 1..5, got {texture}")
    if not diameter_mm > 0:
        raise InputError(f"nodule diameter must be positive, got {diameter_mm}")
    max_label = np.iinfo(labels.array.dtype).max if labels.array.dtype.kind in "ui" else math.inf
    if not 0 < label <= max_label:
        raise InputError(f"nodule label {label} does not fit the label array ({labels.array.dtype})")
    if image.array.shape != labels.array.shape:
        raise InputError("image and labels must have the same shape")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    spacing, origin, direction = _geometry_matrix(image)
    centre_idx = np.linalg.solve(direction * spacing[None, :], np.asarray(centre_mm, np.float64) - origin)
    res = _nodule(image.array.shape, spacing, centre_idx, float(diameter_mm), int(texture), rng, lobulation)
    if res is None:
        return 0
    sl, mask, hu = res
    if lung is not None:
        mask &= np.asarray(lung[sl], bool)
    if noise_hu > 0:
        hu = hu + rng.normal(0.0, noise_hu, hu.shape).astype(np.float32)
    sub = image.array[sl]
    new = np.maximum(sub.astype(np.float32), hu)
    if sub.dtype.kind in "iu":
        info = np.iinfo(sub.dtype)
        new = np.clip(np.round(new), info.min, info.max)
    sub[mask] = new[mask].astype(sub.dtype)
    labels.array[sl][mask] = label
    return int(mask.sum())


_PROBE = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], np.float64)
_PROBE[13] = 1.0  # replace the centre by a diagonal duplicate; then normalise to unit directions
_PROBE /= np.linalg.norm(_PROBE, axis=1, keepdims=True)


def _place_nodules(
    grid: _Grid,
    img: np.ndarray,
    lung: np.ndarray,
    count: int,
    textures: Sequence[int],
    diameter_range: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[int, int], dict[int, float], dict[int, tuple[float, float, float]]]:
    labels = np.zeros(grid.shape, np.uint8 if count < 256 else np.uint16)
    tex_out: dict[int, int] = {}
    diam_out: dict[int, float] = {}
    centre_out: dict[int, tuple[float, float, float]] = {}
    idx = np.flatnonzero(lung)
    if len(idx) == 0:
        return labels, tex_out, diam_out, centre_out
    dmin, dmax = diameter_range
    gap = float(grid.spacing.max())
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(count):
        texture = int(rng.choice(np.asarray(textures)))
        diameter = float(math.exp(rng.uniform(math.log(dmin), math.log(dmax))))
        lobulation = 0.18 if texture == 5 else 0.12
        for attempt in range(120):
            if attempt and attempt % 30 == 0:
                diameter = max(dmin, diameter * 0.8)
            z, y, x = np.unravel_index(int(rng.choice(idx)), grid.shape)
            centre_idx = np.array([x, y, z], np.float64) + rng.uniform(-0.4, 0.4, 3)
            centre = grid.origin + centre_idx * grid.spacing
            if any(np.linalg.norm(centre - c) < (diameter / 2 + r) * 1.3 + gap for c, r in placed):
                continue
            probe = np.round(centre_idx + _PROBE * (0.45 * diameter) / grid.spacing).astype(int)
            if (
                np.any(probe < 0)
                or np.any(probe >= grid.size)
                or not lung[probe[:, 2], probe[:, 1], probe[:, 0]].all()
            ):
                continue
            res = _nodule(grid.shape, grid.spacing, centre_idx, diameter, texture, rng, lobulation, lung)
            if res is None:
                continue
            sl, mask, hu = res
            label = len(placed) + 1
            sub = img[sl]
            sub[mask] = np.maximum(sub[mask], hu[mask])
            labels[sl][mask] = label
            placed.append((centre, diameter / 2))
            tex_out[label] = texture
            diam_out[label] = round(diameter, 3)
            centre_out[label] = tuple(round(float(c), 3) for c in centre)  # type: ignore[assignment]
            break  # placed; a nodule that does not fit after all attempts is dropped
    return labels, tex_out, diam_out, centre_out


# ----------------------------------------------------------------------------------------- public API


def _volume(grid: _Grid, array: np.ndarray) -> Volume:
    return Volume(array, tuple(float(s) for s in grid.spacing), tuple(float(o) for o in grid.origin))


def lung_mask_phantom(
    seed: int, size: int | Sequence[int] = 128, spacing: float | Sequence[float] = 2.0
) -> Volume:
    """The lung mask (uint8 0/1) that ``make_phantom(seed, size, spacing)`` produces, without the image."""
    grid = _Grid(*_normalize_geometry(size, spacing))
    masks = _anatomy_masks(grid, _sample_anatomy(int(seed)))
    return _volume(grid, masks.lung.astype(np.uint8))


def make_phantom(
    seed: int,
    size: int | Sequence[int] = 128,
    spacing: float | Sequence[float] = 2.0,
    n_nodules: int | tuple[int, int] = (1, 3),
    textures: Sequence[int] = TEXTURES,
    diameter_range_mm: tuple[float, float] = (3.0, 30.0),
    noise_hu: float = 20.0,
    deform: bool = False,
    keep_without_nodules: bool = False,
    lung_from_ct: bool | float = False,
) -> PhantomCase:
    """A chest CT phantom centred at the origin (identity direction), deterministic per ``seed``.

    ``size`` and ``spacing`` are scalars or x-y-z tuples. ``n_nodules`` is a count or an inclusive
    (min, max) range; nodule diameters are log-uniform in ``diameter_range_mm`` (shrunk towards the minimum
    when a large one does not fit inside the lungs; a nodule that cannot be placed is dropped) and each
    texture is drawn from ``textures``. ``deform`` warps the whole phantom (image and masks together) by a
    random scale, rotation and elastic field and centres its lungs (:mod:`land.world.phantom_deform`); nodules
    cut off by the grid are dropped and the rest relabelled 1..K. ``keep_without_nodules`` also returns the
    same image (anatomy, deformation, noise) without the nodules. ``lung_from_ct`` makes the lung mask the
    one :func:`land.imaging.lungseg.segment_lungs` draws on the image (vessels, airways and nodules inside
    the lungs
    included), as "Lungs from CT" does for a user, instead of the anatomical mask (a float: that share of
    the seeds).
    """
    sz, sp = _normalize_geometry(size, spacing)
    textures = tuple(int(t) for t in textures)
    if not textures or any(t not in TEXTURES for t in textures):
        raise InputError(f"textures must be a non-empty subset of 1..5, got {textures}")
    dmin, dmax = (float(d) for d in diameter_range_mm)
    if not 0 < dmin <= dmax:
        raise InputError(f"diameter_range_mm must be 0 < min <= max, got {diameter_range_mm}")
    if noise_hu < 0:
        raise InputError(f"noise_hu must be >= 0, got {noise_hu}")
    lo, hi = (n_nodules, n_nodules) if np.isscalar(n_nodules) else tuple(n_nodules)  # type: ignore[misc]
    if not 0 <= int(lo) <= int(hi):
        raise InputError(f"n_nodules must be >= 0 or a range (min, max), got {n_nodules}")
    seed = int(seed)
    grid = _Grid(sz, sp)
    canvas, deformation = grid, None
    anatomy = _sample_anatomy(seed)
    if deform:
        from .phantom_deform import canvas_size, sample_deformation

        share = _lung_width_fraction(grid, anatomy)
        deformation = sample_deformation(np.random.default_rng([seed, 5]), share)
        fov = np.asarray(sz) * np.asarray(sp)
        canvas = _Grid(canvas_size(deformation, sz, sp), sp, anatomy_fov=fov)
    masks = _anatomy_masks(canvas, anatomy)
    img = _paint_body(canvas, anatomy, masks, np.random.default_rng([seed, 1]))
    lumen = _paint_mediastinum(canvas, anatomy, masks, img)
    _paint_bones(canvas, anatomy, masks, img)
    _paint_trees(canvas, anatomy, masks, img, lumen, np.random.default_rng([seed, 2]))
    clean = img.copy() if keep_without_nodules else None
    rng = np.random.default_rng([seed, 3])
    count = int(rng.integers(int(lo), int(hi) + 1))
    labels, tex, diam, centres = _place_nodules(canvas, img, masks.lung, count, textures, (dmin, dmax), rng)
    lung = masks.lung.astype(np.uint8)
    if deformation is not None:
        img, clean, lung, labels, tex, diam, centres = _deform(
            canvas, grid, deformation, img, clean, lung, labels, tex, diam
        )
    images = [_finish_image(grid, a, seed, noise_hu) if a is not None else None for a in (img, clean)]
    if not isinstance(lung_from_ct, bool):  # a share of the cases, decided per seed
        lung_from_ct = bool(np.random.default_rng([seed, 6]).uniform() < float(lung_from_ct))
    if lung_from_ct:
        from ..imaging.lungseg import segment_lungs

        drawn = segment_lungs(_volume(grid, images[0])).array > 0  # type: ignore[arg-type]
        lung = (drawn | (labels > 0)).astype(np.uint8)
    return PhantomCase(
        image=_volume(grid, images[0]),  # type: ignore[arg-type]
        lung=_volume(grid, lung),
        nodules=_volume(grid, labels),
        textures=tex,
        diameters_mm=diam,
        centres_mm=centres,
        image_without_nodules=_volume(grid, images[1]) if images[1] is not None else None,
    )


def _lung_width_fraction(grid: _Grid, anatomy: _Anatomy) -> float:
    """Share of the grid's width (x) spanned by the undeformed lungs (from one axial row of slices)."""
    lung = _anatomy_masks(grid, anatomy).lung
    cols = np.flatnonzero(lung.any(axis=(0, 1)))
    return float((cols[-1] - cols[0] + 1) / grid.size[0]) if cols.size else 1.0


def _finish_image(grid: _Grid, img: np.ndarray, seed: int, noise_hu: float) -> np.ndarray:
    """Partial-volume blur, correlated noise (the same per seed), int16 HU."""
    img = _blur3(img, _BLUR_W)
    if noise_hu > 0:
        noise = np.random.default_rng([seed, 4]).standard_normal(grid.shape, dtype=np.float32)
        gain = (math.sqrt((1 - 2 * _NOISE_W) ** 2 + 2 * _NOISE_W**2)) ** 3
        img += _blur3(noise, _NOISE_W) * np.float32(noise_hu / gain)
    return np.clip(np.round(img), -1024, 3071).astype(np.int16)


def _deform(canvas: _Grid, grid: _Grid, deformation, img, clean, lung, labels, tex, diam):  # noqa: ANN001, ANN202
    """Warp the canvas rendering onto ``grid``; keep the nodules that survive, relabelled 1..K, with their
    diameters scaled by the cube root of their volume change and their centres measured."""
    from .phantom_deform import lung_box_centre, warp

    arrays = {"img": (img, 1, HU_AIR), "lung": (lung, 0, 0), "labels": (labels, 0, 0)}
    if clean is not None:
        arrays["clean"] = (clean, 1, HU_AIR)
    centre = lung_box_centre(lung, canvas.origin, canvas.spacing)
    out = warp(arrays, canvas.origin, canvas.spacing, grid.size, deformation, centre)
    before = np.bincount(labels.ravel(), minlength=len(tex) + 1)
    after = np.bincount(out["labels"].ravel(), minlength=len(tex) + 1)
    for old in sorted(tex):  # smaller than a voxel after the warp: keep the voxel where most of it lands
        if before[old] and not after[old]:
            share = warp({"n": ((labels == old).astype(np.float32), 1, 0.0)}, canvas.origin, canvas.spacing,
                         grid.size, deformation, centre)["n"]  # fmt: skip
            if share.max() > 0:
                out["labels"][np.unravel_index(int(np.argmax(share)), share.shape)] = old
                after[old] = 1
    new_labels = np.zeros_like(out["labels"])
    tex2: dict[int, int] = {}
    diam2: dict[int, float] = {}
    centres2: dict[int, tuple[float, float, float]] = {}
    for old in sorted(tex):
        if after[old] == 0:
            continue
        new = len(tex2) + 1
        sel = out["labels"] == old
        new_labels[sel] = new
        tex2[new] = tex[old]
        diam2[new] = round(diam[old] * float(after[old] / max(before[old], 1)) ** (1 / 3), 3)
        z, y, x = (idx.mean() for idx in np.nonzero(sel))
        c = grid.origin + np.array([x, y, z]) * grid.spacing
        centres2[new] = tuple(round(float(v), 3) for v in c)  # type: ignore[assignment]
    # nodules lie inside the lungs on the canvas; nearest sampling of two masks can split them at the lung
    # border (a one-voxel nodule most of all), so the warped nodule voxels are lung by rule
    lung_out = np.where(new_labels > 0, np.ones_like(out["lung"]), out["lung"])
    return out["img"], out.get("clean"), lung_out, new_labels, tex2, diam2, centres2


# ----------------------------------------------------------------------------------------- dataset I/O

_FILES = ("image.nii.gz", "lung.nii.gz", "nodules.nii.gz", "textures.json")


def write_case(case: PhantomCase, folder: Path, extra: dict | None = None) -> Path:
    """Write a phantom as a dataset case (:func:`land.data.folder.write_case`, the format's owner):
    ``case.json`` holds ``diameters_mm``, ``centres_mm`` (physical LPS) and ``extra``."""
    from ..data.folder import write_case as write_case_folder

    meta = {
        "diameters_mm": {str(k): float(v) for k, v in sorted(case.diameters_mm.items())},
        "centres_mm": {str(k): [float(c) for c in v] for k, v in sorted(case.centres_mm.items())},
        **(extra or {}),
    }
    return write_case_folder(folder, case.image, case.lung, case.nodules, case.textures, meta,
                             image_without_nodules=case.image_without_nodules)  # fmt: skip


def read_case(folder: Path) -> PhantomCase:
    """Read a case folder written by ``write_case`` (or any dataset case: metadata may be absent)."""
    from ..data.folder import read_case_meta, read_textures
    from ..imaging.image_data import check_image_data

    folder = Path(folder)
    meta = read_case_meta(folder)
    textures, problems = read_textures(folder / "textures.json")
    if problems:
        raise InputError(f"{folder}: " + "; ".join(problems))

    def read(name: str) -> Volume:
        check_image_data(folder / name)
        import SimpleITK as sitk

        return Volume.from_sitk(sitk.ReadImage(str(folder / name)))

    return PhantomCase(
        image=read("image.nii.gz"),
        lung=read("lung.nii.gz"),
        nodules=read("nodules.nii.gz"),
        textures=textures,
        diameters_mm={int(k): float(v) for k, v in meta.get("diameters_mm", {}).items()},
        centres_mm={int(k): tuple(v) for k, v in meta.get("centres_mm", {}).items()},
    )


def _complete(folder: Path, expect: dict) -> dict | None:
    """The case's metadata if all files exist and it was made with the same parameters."""
    from ..data.folder import read_case_meta

    if not all((folder / f).is_file() for f in _FILES):
        return None
    meta = read_case_meta(folder)
    return meta if meta.get("phantom") == expect else None


def write_phantom_dataset(
    out: Path,
    n: int,
    seed: int = 0,
    size: int | Sequence[int] = 128,
    spacing: float | Sequence[float] = 2.0,
    **kwargs,
) -> Path:
    """Write ``n`` cases ``out/case_0000 ...`` (case i uses seed ``seed + i``) and ``out/manifest.csv``.

    Complete cases made with the same parameters are skipped (resumable). ``kwargs`` go to
    ``make_phantom``. Manifest columns: case, size (``XxYxZ``), spacing (``XxYxZ`` mm), nodule_count,
    textures (``label:texture`` pairs joined by ``;``). Returns the manifest path.
    """
    if n < 0:
        raise InputError(f"dataset size must be >= 0, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sz, sp = _normalize_geometry(size, spacing)
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(kwargs.items())}
    rows = []
    for i in range(n):
        folder = out / f"case_{i:04d}"
        expect = {"seed": int(seed) + i, "size": list(sz), "spacing": list(sp), "params": params}
        expect = json.loads(
            json.dumps(expect, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
        )
        meta = _complete(folder, expect)
        if meta is None:
            case = make_phantom(int(seed) + i, sz, sp, **kwargs)
            write_case(case, folder, extra={"phantom": expect})
            textures = case.textures
        else:
            from ..data.folder import read_textures

            textures = read_textures(folder / "textures.json")[0]
        rows.append(
            {
                "case": folder.name,
                "size": "x".join(str(s) for s in sz),
                "spacing": "x".join(f"{s:g}" for s in sp),
                "nodule_count": len(textures),
                "textures": ";".join(f"{k}:{v}" for k, v in sorted(textures.items())),
            }
        )
    from ..data.folder import write_manifest

    return write_manifest(out, ["case", "size", "spacing", "nodule_count", "textures"], rows)


def register(sub, command) -> None:
    """Add ``land phantoms`` to the CLI."""
    from ..interface.contract import MAX_GRID_SIDE, MAX_PHANTOM_CASES, count_argument

    def int_range(text: str) -> tuple[int, int]:
        lo, _, hi = text.partition("-")
        return (int(lo), int(hi or lo))

    p = sub.add_parser("phantoms", help="write procedural chest CT phantoms in the folder dataset format")
    p.add_argument("--n", type=count_argument("--n", 0, MAX_PHANTOM_CASES), required=True,
                   help="number of cases")  # fmt: skip
    p.add_argument("--size", type=count_argument("--size", 16, MAX_GRID_SIDE), default=128,
                   help="voxels per side")  # fmt: skip
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm")
    p.add_argument("--seed", type=int, default=0, help="case i uses seed + i")
    p.add_argument("--nodules", type=int_range, default=(1, 3), help="nodules per case, e.g. 1-3 or 0")
    p.add_argument("--deform", action="store_true",
                   help="warp each phantom by a random scale, rotation and elastic field (lungs centred)")
    p.add_argument("--without-nodules", action="store_true",
                   help="also write image_without_nodules.nii.gz (the same CT without its nodules)")
    p.add_argument("--lung-from-ct", type=float, default=0.0, metavar="SHARE",
                   help="share of cases whose lung mask is drawn from the CT by land's lung segmentation")
    p.add_argument("--out", required=True, help="dataset folder")

    @command("phantoms")
    def cmd_phantoms(args) -> int:
        from ..imaging.atomic import preflight_outputs

        preflight_outputs({}, folders={"--out": args.out})
        if not 0.0 <= args.lung_from_ct <= 1.0:
            raise InputError(f"--lung-from-ct must be a share in 0..1, got {args.lung_from_ct}")
        extra = {"deform": True} if args.deform else {}
        if args.without_nodules:
            extra["keep_without_nodules"] = True
        if args.lung_from_ct:
            extra["lung_from_ct"] = float(args.lung_from_ct)
        manifest = write_phantom_dataset(Path(args.out), args.n, seed=args.seed, size=args.size,
                                         spacing=args.spacing, n_nodules=args.nodules, **extra)  # fmt: skip
        print(f"wrote {args.n} phantom cases to {args.out} (manifest {manifest})")
        return 0
