"""A minimal NRRD writer for the engine's input label images, and a header reader for its output's provenance.

The writer needs only numpy (so it can run in a worker thread, away from MRML and the GUI thread) and writes
the voxel-to-physical mapping of a Slicer ``IJKToRAS`` matrix exactly, converted to the LPS space that NRRD
files and the engine use (Slicer itself writes volumes the same way).
"""

from __future__ import annotations

import os
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
    fields: dict[str, str] = {}
    with open(path, "rb") as f:
        magic = f.readline(64)
        if not magic.startswith(b"NRRD"):
            raise ValueError(f"{path} is not a NRRD file")
        read = len(magic)
        while read < max_bytes:
            raw = f.readline(max_bytes)
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
