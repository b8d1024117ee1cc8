"""Planning a teaching set: which cases have nodules, how many, where inside the lungs, texture and size.

Everything is drawn reproducibly from the set's seed: the cases with nodules are ``round(rate * N)`` cases
picked by a seeded permutation; case ``i`` then draws from its own generator ``(seed, 1, i)`` its
generation seed, its phantom lung seed, its nodule count (1, 2 or 3 with probability 0.5 / 0.3 / 0.2),
and per nodule a texture (uniform over ``textures``), a diameter (log-uniform in ``diameters``, so small
nodules are more common, as in screening) and a centre. Centres are voxel centres of the model grid where
the whole sphere fits inside the lung mask and stays ``SEPARATION_MM`` (surface to surface) away from the
other nodules; a nodule that does not fit is shrunk (x0.8, down to the minimum diameter) and dropped only if
it never fits. Nodules are spheres rasterised on the model grid (voxels whose centre is within the radius).

Matched pairs (``pair_rate``): ``round(pair_rate * K)`` of the K cases with nodules, picked by a seeded
permutation ``(seed, 2)``, also get a twin: the same CT without one of their nodules (drawn from ``(seed, 4,
i)``). The twins are extra cases; the N plans and their P twins get the case ids ``case_001`` ... of N + P
cases dealt by a seeded permutation ``(seed, 3)`` (:func:`case_layout`), so neither a case's position nor its
number tells a twin from its original. Without pairs plan ``i`` is case ``i + 1``, as before.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..imaging.maskset import MaskSet
from ..imaging.volume import Volume
from ..interface.contract import check_teaching_cases, parse_diameters, parse_textures
from ..interface.errors import InputError

TEXTURE_NAMES = {
    1: "non-solid (ground-glass)",
    2: "non-solid/mixed",
    3: "part-solid",
    4: "solid/mixed",
    5: "solid",
}
NODULE_COUNTS = (1, 2, 3)
NODULE_COUNT_P = (0.5, 0.3, 0.2)
SEPARATION_MM = 5.0
MASK_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class TeachingSettings:
    """What a teaching set is made from (all of it is stored in ``teaching.json``)."""

    cases: int
    nodule_rate: float = 0.7
    textures: tuple[int, ...] = (1, 3, 5)
    diameters: tuple[float, float] = (4.0, 25.0)
    seed: int = 0
    lung_masks: str | None = None
    pair_rate: float = 0.0  # share of the cases with nodules that also get a matched twin

    def validate(self) -> None:
        check_teaching_cases(self.cases)
        if self.seed < 0:
            raise InputError(f"--seed must be 0 or a positive integer, got {self.seed}")
        if not 0.0 <= self.nodule_rate <= 1.0:
            raise InputError(f"--nodule-rate must be between 0 and 1, got {self.nodule_rate}")
        if not 0.0 <= self.pair_rate <= 1.0:
            raise InputError(f"--pair-rate must be between 0 and 1, got {self.pair_rate}")
        parse_textures(self.textures)  # the contract's rules (the CLI and the Slicer panel check the same)
        parse_diameters(self.diameters)

    def to_json(self) -> dict:
        """The settings as JSON (``pair_rate`` only when pairs are on: earlier sets keep their ids)."""
        d = asdict(self)
        if not self.pair_rate:
            d.pop("pair_rate")
        return d


@dataclass
class NodulePlan:
    """One planned nodule: label 1..K, centre (LPS mm, a voxel centre), its voxel index (x, y, z)."""

    nodule: int
    centre_mm: tuple[float, float, float]
    index_xyz: tuple[int, int, int]
    diameter_mm: float
    texture: int


@dataclass
class CasePlan:
    """One planned case: its masks on the model grid and what the answer key says about it."""

    case: str
    index: int
    seed: int
    lung_source: str
    lung: Volume
    nodules: Volume
    nodule_plans: list[NodulePlan] = field(default_factory=list)
    dropped: int = 0

    def masks(self) -> MaskSet:
        """The conditioning masks (lung + nodule labels + textures) for the pipeline."""
        return MaskSet(
            lung=self.lung,
            nodules=self.nodules,
            textures={n.nodule: n.texture for n in self.nodule_plans},
            names={n.nodule: f"Nodule {n.nodule}" for n in self.nodule_plans},
        )

    def without(self, label: int, case: str) -> CasePlan:
        """The matched twin's plan: this case as ``case`` without nodule ``label`` (its voxels become lung;
        the other nodules keep their labels, so the key names the same nodule in both)."""
        spot = self.nodules.array == label
        labels = np.where(spot, 0, self.nodules.array).astype(self.nodules.array.dtype)
        return CasePlan(
            case=case,
            index=self.index,
            seed=self.seed,
            lung_source=self.lung_source,
            lung=Volume.like(self.lung, np.where(spot, 1, self.lung.array).astype(self.lung.array.dtype)),
            nodules=Volume.like(self.nodules, labels),
            nodule_plans=[n for n in self.nodule_plans if n.nodule != label],
            dropped=self.dropped,
        )

    def to_json(self) -> dict:
        """The plan without the voxel arrays (for records and the answer key)."""
        return {
            "case": self.case,
            "index": self.index,
            "seed": self.seed,
            "lung_source": self.lung_source,
            "dropped": self.dropped,
            "nodules": [asdict(n) for n in self.nodule_plans],
        }


# ----------------------------------------------------------------------------------------------- parsing


def case_ids(n: int) -> list[str]:
    """``case_001`` ... (at least three digits)."""
    width = max(3, len(str(n)))
    return [f"case_{i + 1:0{width}d}" for i in range(n)]


def settings_hash(obj: object) -> str:
    """Short stable hash of a JSON-able object (identifies a teaching set's settings)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def lung_mask_files(folder: str | Path) -> list[Path]:
    """The lung mask files in a folder (sorted by name); InputError if there are none."""
    p = Path(folder)
    if not p.is_dir():
        raise InputError(f"--lung-masks {p} is not a folder; fix: give a folder of lung mask images")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(MASK_EXTENSIONS))
    if not files:
        raise InputError(
            f"--lung-masks {p} holds no lung masks; fix: put lung mask images ({', '.join(MASK_EXTENSIONS)}; "
            "nonzero = lung, or a .seg.nrrd with a 'Lungs' segment) in it"
        )
    return files


# ---------------------------------------------------------------------------------------------- planning


def nodule_case_indices(settings: TeachingSettings) -> set[int]:
    """The cases (0-based) that get nodules: ``round(rate * N)`` of them, by a seeded permutation."""
    k = math.floor(settings.nodule_rate * settings.cases + 0.5)  # half rounds up
    order = np.random.default_rng([settings.seed, 0]).permutation(settings.cases)
    return {int(i) for i in order[:k]}


def pair_case_indices(settings: TeachingSettings) -> list[int]:
    """The cases (0-based, ascending) that also get a matched twin: ``round(pair_rate * K)`` of the K cases
    with nodules, by a seeded permutation."""
    if not settings.pair_rate:
        return []
    nodule_cases = sorted(nodule_case_indices(settings))
    k = math.floor(settings.pair_rate * len(nodule_cases) + 0.5)
    order = np.random.default_rng([settings.seed, 2]).permutation(len(nodule_cases))
    return sorted(nodule_cases[int(j)] for j in order[:k])


@dataclass(frozen=True)
class CaseLayout:
    """Which exported case is which: ``base[i]`` is the case id of plan ``i``, ``twin[i]`` that of its matched
    twin (plans with a twin only)."""

    base: list[str]
    twin: dict[int, str]

    @property
    def total(self) -> int:
        return len(self.base) + len(self.twin)

    def cases_of(self, index: int) -> list[str]:
        """The case ids plan ``index`` is written as: its own, then its twin's when it has one."""
        return [self.base[index]] + ([self.twin[index]] if index in self.twin else [])


def case_layout(settings: TeachingSettings) -> CaseLayout:
    """The case ids of the plans and their twins (see the module docstring): without pairs plan ``i`` is
    ``case_{i+1}``; with pairs the N + P ids are dealt by a seeded permutation (O(N) memory, N bounded by
    :data:`land.interface.contract.MAX_TEACHING_CASES`)."""
    pairs = pair_case_indices(settings)
    total = settings.cases + len(pairs)
    ids = case_ids(total)
    if not pairs:
        return CaseLayout(ids, {})
    order = np.random.default_rng([settings.seed, 3]).permutation(total)
    base = [ids[int(order[i])] for i in range(settings.cases)]
    twin = {i: ids[int(order[settings.cases + r])] for r, i in enumerate(pairs)}
    return CaseLayout(base, twin)


def pair_nodule(settings: TeachingSettings, plan: CasePlan) -> int | None:
    """The nodule the twin of ``plan`` goes without, drawn from the case's generator ``(seed, 4, index)``;
    None when no nodule could be placed in the case."""
    if not plan.nodule_plans:
        return None
    rng = np.random.default_rng([settings.seed, 4, plan.index])
    return plan.nodule_plans[int(rng.integers(len(plan.nodule_plans)))].nodule


def _lung_on_grid(
    source: Path | None,
    phantom_seed: int,
    grid_size: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> tuple[Volume, str]:
    if source is None:
        from ..world.phantom import lung_mask_phantom

        return lung_mask_phantom(phantom_seed, grid_size, spacing), f"phantom seed {phantom_seed}"
    from ..conditioning.model_grid import to_model_grid
    from ..imaging.io import read_masks

    masks = read_masks(source)
    if masks.lung is None:
        raise InputError(
            f"lung mask {source} has no lung; fix: name the lung segment 'Lungs' (or give an image)"
        )
    masks, _ = to_model_grid(MaskSet(lung=masks.lung), grid_size, spacing)
    assert masks.lung is not None
    return masks.lung, source.name


def _physical(vol: Volume, idx_xyz: np.ndarray) -> np.ndarray:
    """Physical LPS points of voxel indices (n, 3) in x, y, z order."""
    d = np.asarray(vol.direction, float).reshape(3, 3)
    return np.asarray(vol.origin, float) + (np.asarray(idx_xyz, float) * np.asarray(vol.spacing)) @ d.T


def sphere_voxels(
    ref: Volume, centre_idx: np.ndarray, diameter_mm: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    """[z, y, x] slices of a box around the sphere and the sphere mask in it (the centre voxel always in)."""
    r = diameter_mm / 2.0
    sp = np.asarray(ref.spacing, float)
    half = np.ceil(r / sp).astype(int)
    size = np.asarray(ref.size)
    lo = np.maximum(centre_idx - half, 0)
    hi = np.minimum(centre_idx + half + 1, size)
    zz, yy, xx = np.meshgrid(*(np.arange(lo[a], hi[a]) for a in (2, 1, 0)), indexing="ij")
    offset = np.stack([xx - centre_idx[0], yy - centre_idx[1], zz - centre_idx[2]], -1) * sp
    # directions are orthonormal, so distances in index space scaled by spacing are physical distances
    mask = np.linalg.norm(offset, axis=-1) <= r + 1e-6
    return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])), mask


def plan_case(
    settings: TeachingSettings,
    index: int,
    grid_size: tuple[int, int, int],
    spacing: tuple[float, float, float],
    lung_files: list[Path] | None = None,
    with_nodules: bool | None = None,
    case: str | None = None,
) -> CasePlan:
    """Plan case ``index`` (0-based) on the model grid; the same arguments always give the same plan.
    ``case``: its id (default ``case_{index+1}``; :func:`case_layout` gives it when the set has pairs)."""
    settings.validate()
    case = case or case_ids(settings.cases)[index]
    if with_nodules is None:
        with_nodules = index in nodule_case_indices(settings)
    rng = np.random.default_rng([settings.seed, 1, index])
    gen_seed = int(rng.integers(0, 2**31 - 1))
    phantom_seed = int(rng.integers(0, 2**31 - 1))
    source = lung_files[index % len(lung_files)] if lung_files else None
    lung, lung_source = _lung_on_grid(source, phantom_seed, tuple(grid_size), tuple(spacing))
    lung_arr = lung.array != 0
    if not lung_arr.any():
        raise InputError(
            f"the lung mask of case {index + 1} ({lung_source}) is empty on the model grid; "
            "fix: give lung masks that contain lungs"
        )
    labels = np.zeros(lung_arr.shape, np.uint8)
    plans: list[NodulePlan] = []
    dropped = 0
    count = int(rng.choice(NODULE_COUNTS, p=NODULE_COUNT_P)) if with_nodules else 0
    dist = np.zeros(0)
    if count:
        dist = sitk.GetArrayFromImage(
            sitk.SignedMaurerDistanceMap(
                _sitk_mask(lung), insideIsPositive=True, squaredDistance=False, useImageSpacing=True
            )
        )
    lo, hi = settings.diameters
    for _ in range(count):
        texture = int(rng.choice(np.asarray(settings.textures)))
        diameter = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        placed = None
        while placed is None:
            placed = _place(rng, lung, lung_arr, labels, dist, diameter, plans)
            if placed is None:
                if diameter <= lo + 1e-9:
                    break
                diameter = max(lo, diameter * 0.8)
        if placed is None:
            dropped += 1
            continue
        idx, sl, mask = placed
        label = len(plans) + 1
        labels[sl][mask] = label
        centre = tuple(round(float(c), 3) for c in _physical(lung, idx[None])[0])
        plans.append(NodulePlan(label, centre, tuple(int(i) for i in idx), round(diameter, 1), texture))  # type: ignore[arg-type]
    if dropped:
        warnings.warn(
            f"{case}: {dropped} of {count} planned nodules did not fit inside the lungs "
            f"(even at {lo:g} mm) and were left out; the answer key lists only the placed ones",
            stacklevel=2,
        )
    return CasePlan(
        case=case,
        index=index,
        seed=gen_seed,
        lung_source=lung_source,
        lung=Volume.like(lung, lung_arr.astype(np.uint8)),
        nodules=Volume.like(lung, labels),
        nodule_plans=plans,
        dropped=dropped,
    )


def _sitk_mask(lung: Volume) -> sitk.Image:
    return Volume.like(lung, (lung.array != 0).astype(np.uint8)).to_sitk()


def _place(
    rng: np.random.Generator,
    lung: Volume,
    lung_arr: np.ndarray,
    labels: np.ndarray,
    dist: np.ndarray,
    diameter: float,
    placed: list[NodulePlan],
) -> tuple[np.ndarray, tuple[slice, ...], np.ndarray] | None:
    """A voxel index where a sphere of ``diameter`` fits inside the lungs, apart from ``placed``; or None."""
    r = diameter / 2.0
    candidates = np.flatnonzero(dist.ravel() >= r)
    if candidates.size == 0:
        return None
    z, y, x = np.unravel_index(candidates, lung_arr.shape)
    idx = np.stack([x, y, z], 1)
    if placed:
        pts = _physical(lung, idx)
        ok = np.ones(len(idx), bool)
        for p in placed:
            gap = np.linalg.norm(pts - np.asarray(p.centre_mm), axis=1) - r - p.diameter_mm / 2.0
            ok &= gap >= SEPARATION_MM
        idx = idx[ok]
    for _ in range(min(40, len(idx))):
        pick = idx[int(rng.integers(len(idx)))]
        sl, mask = sphere_voxels(lung, pick, diameter)
        full = mask.sum() == _sphere_count(lung, diameter)  # not cut off by the grid edge
        if full and lung_arr[sl][mask].all() and not labels[sl][mask].any():
            return pick, sl, mask
    return None


def _sphere_count(ref: Volume, diameter: float) -> int:
    """Voxels of a sphere of ``diameter`` centred on a voxel far from the grid edge."""
    half = np.ceil(diameter / 2.0 / np.asarray(ref.spacing, float)).astype(int)
    big = Volume(np.zeros(tuple(int(2 * h + 1) for h in half[::-1]), np.uint8), ref.spacing)
    return int(sphere_voxels(big, half, diameter)[1].sum())
