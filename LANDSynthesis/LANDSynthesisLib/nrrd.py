"""A minimal NRRD writer for the engine's input label images and a reader for its output volume.

Both need only numpy (and gzip), so they run in worker threads, away from MRML and the GUI thread. The writer
stores the voxel-to-physical mapping of a Slicer ``IJKToRAS`` matrix exactly, converted to the LPS space that
NRRD files and the engine use (Slicer itself writes volumes the same way); the reader gives it back as an
``IJKToRAS`` matrix, left-handed ones included (Slicer's own reader flips an axis of those).
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_NRRD_TYPES = {
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.int8): "signed char",
    np.dtype(np.uint16): "unsigned short",
    np.dtype(np.int16): "short",
    np.dtype(np.uint32): "unsigned int",
    np.dtype(np.int32): "int",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}


def _vector(values) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def write_nrrd(path: str | os.PathLike, array: np.ndarray, ijk_to_ras: np.ndarray) -> Path:
    """Write ``array`` (indexed [k, j, i], as ``slicer.util.arrayFromVolume``) with the 4x4 ``ijk_to_ras``.

    Raw encoding (fast; these are temporary files). Returns the path.
    """
    a = np.ascontiguousarray(array)
    if a.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if a.dtype.newbyteorder("=") not in _NRRD_TYPES:
        raise ValueError(f"unsupported voxel type {a.dtype}")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # written little-endian on every machine
    m = np.asarray(ijk_to_ras, float)
    lps = RAS_TO_LPS @ m[:3, :3]  # columns: physical step of one voxel along i, j, k
    origin = RAS_TO_LPS @ m[:3, 3]
    k, j, i = a.shape
    header = [
        "NRRD0004",
        "# written by LANDSynthesis (3D Slicer module) for the LAND engine",
        f"type: {_NRRD_TYPES[a.dtype.newbyteorder('=')]}",
        "dimension: 3",
        "space: left-posterior-superior",
        f"sizes: {i} {j} {k}",
        "space directions: " + " ".join(_vector(lps[:, c]) for c in range(3)),
        "kinds: domain domain domain",
        "endian: little",
        "encoding: raw",
        f"space origin: {_vector(origin)}",
    ]
    p = Path(path)
    with open(p, "wb") as f:
        f.write(("\n".join(header) + "\n\n").encode("ascii"))
        a.tofile(f)
    return p


def read_nrrd_header(path: str | os.PathLike, max_bytes: int = 1 << 20) -> dict[str, str]:
    """Fields (``key: value``) and key/value pairs (``key:=value``) of a NRRD header (voxels not read)."""
    with open(path, "rb") as f:
        return _read_header(f, max_bytes)


_TYPE_ALIASES = {
    "signed char": "int8", "int8": "int8", "int8_t": "int8",
    "uchar": "uint8", "unsigned char": "uint8", "uint8": "uint8", "uint8_t": "uint8",
    "short": "int16", "short int": "int16", "signed short": "int16", "signed short int": "int16",
    "int16": "int16", "int16_t": "int16",
    "ushort": "uint16", "unsigned short": "uint16", "unsigned short int": "uint16", "uint16": "uint16",
    "uint16_t": "uint16",
    "int": "int32", "signed int": "int32", "int32": "int32", "int32_t": "int32",
    "uint": "uint32", "unsigned int": "uint32", "uint32": "uint32", "uint32_t": "uint32",
    "float": "float32", "double": "float64",
}  # fmt: skip
_SPACES = {
    "left-posterior-superior": np.diag([1.0, 1.0, 1.0]),  # to LPS
    "lps": np.diag([1.0, 1.0, 1.0]),
    "right-anterior-superior": RAS_TO_LPS,
    "ras": RAS_TO_LPS,
}


@dataclass
class NrrdVolume:
    """A 3D NRRD image: voxels indexed [k, j, i] (as ``slicer.util.arrayFromVolume``), its IJK-to-RAS matrix
    and the header fields (``key: value`` and ``key:=value`` alike)."""

    array: np.ndarray
    ijkToRas: np.ndarray
    fields: dict[str, str]


def _read_header(f, max_bytes: int | None = None) -> dict[str, str]:
    """The header fields of an open NRRD file, leaving it at the voxels (at most ``max_bytes`` read)."""
    magic = f.readline(64)
    if not magic.startswith(b"NRRD"):
        raise ValueError(f"{f.name} is not a NRRD file")
    fields: dict[str, str] = {}
    read = len(magic)
    while max_bytes is None or read < max_bytes:
        raw = f.readline(1 << 20 if max_bytes is None else max_bytes)
        if not raw:
            break
        read += len(raw)
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            break
        if line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            fields[key] = value
        elif ": " in line:
            key, value = line.split(": ", 1)
            fields[key] = value
    return fields


def read_nrrd(path: str | os.PathLike) -> NrrdVolume:
    """Read a 3D scalar NRRD with attached raw or gzip data (what ``land generate`` and Slicer write).

    ValueError names what is not supported (detached data, more than 3 axes, other encodings)."""
    p = Path(path)
    with open(p, "rb") as f:
        fields = _read_header(f)
        if "data file" in fields or "datafile" in fields:
            raise ValueError(f"{p}: detached NRRD data files are not supported")
        if fields.get("dimension", "").strip() != "3":
            raise ValueError(f"{p}: expected a 3D NRRD, got dimension {fields.get('dimension')!r}")
        type_name = _TYPE_ALIASES.get(fields.get("type", "").strip())
        if type_name is None:
            raise ValueError(f"{p}: unsupported NRRD voxel type {fields.get('type')!r}")
        sizes = [int(v) for v in fields["sizes"].split()]
        encoding = fields.get("encoding", "raw").strip()
        endian = "<" if fields.get("endian", "little").strip() == "little" else ">"
        dtype = np.dtype(type_name).newbyteorder(endian)
        count = int(np.prod(sizes))
        skip = int(fields.get("byte skip", fields.get("byteskip", "0")) or 0)
        if skip < 0:
            raise ValueError(f"{p}: 'byte skip: -1' is not supported")
        if encoding == "raw":
            f.seek(skip, os.SEEK_CUR)
            data = np.fromfile(f, dtype, count)
        elif encoding in ("gzip", "gz"):
            with gzip.GzipFile(fileobj=f) as z:
                raw = z.read()
            data = np.frombuffer(raw, dtype, count, offset=skip)
        else:
            raise ValueError(f"{p}: unsupported NRRD encoding {encoding!r}")
    if data.size != count:
        raise ValueError(f"{p}: the NRRD data is truncated ({data.size} of {count} voxels)")
    array = data.astype(dtype.newbyteorder("="), copy=False).reshape(sizes[::-1])
    to_lps = _SPACES.get(fields.get("space", "left-posterior-superior").strip().lower())
    if to_lps is None:
        raise ValueError(f"{p}: unsupported NRRD space {fields.get('space')!r}")
    vectors = re.findall(r"\(([^)]*)\)", fields.get("space directions", ""))
    if len(vectors) != 3:
        raise ValueError(f"{p}: expected 3 space directions, got {fields.get('space directions')!r}")
    directions = np.array([[float(v) for v in vec.split(",")] for vec in vectors]).T  # columns: i, j, k
    origin_text = re.findall(r"\(([^)]*)\)", fields.get("space origin", "(0,0,0)"))
    origin = np.array([float(v) for v in origin_text[0].split(",")]) if origin_text else np.zeros(3)
    m = np.eye(4)
    m[:3, :3] = RAS_TO_LPS @ to_lps @ directions
    m[:3, 3] = RAS_TO_LPS @ to_lps @ origin
    return NrrdVolume(array, m, fields)
