"""Is an image file's voxel data all there? Checks NIfTI, NRRD and MetaImage files against their headers.

ITK reads a truncated ``.nii.gz`` (a download or copy cut short) or a file whose header declares more voxels
than it holds as a zero-filled volume, without an error. :func:`check_image_data` compares the bytes of
voxel data the header declares with the bytes the file holds (for compressed data: what the compressed
stream decompresses to, and whether the stream ends properly) and raises :class:`InputError` naming the
file when they differ. It reads only the header fields it needs; formats it does not know pass unchecked.

ITK also replaces a sheared (non-orthonormal) orientation matrix by another one with only a C++ warning, so
the CT would not lie where the masks do: :func:`check_orientation` refuses such NIfTI and NRRD files. ITK
reads a NIfTI voxel size (pixdim) of 0 as 1 mm and prefers pixdim over the sform's voxel size, hiding its
warning: a NIfTI file whose pixdim is not positive or disagrees with its sform is refused too. NaN and
infinite voxels of a float NIfTI file, which ITK reads as 0, are refused by :func:`check_image_data`.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..interface.errors import InputError

_CHUNK = 1 << 20

_NIFTI_BITS = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32, 1024: 64,
               1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32}  # fmt: skip
_NRRD_TYPES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(
        (
            "short",
            "short int",
            "signed short",
            "signed short int",
            "int16",
            "int16_t",
            "ushort",
            "unsigned short",
            "unsigned short int",
            "uint16",
            "uint16_t",
        ),
        2,
    ),  # fmt: skip
    **dict.fromkeys(
        ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "longlong",
            "long long",
            "long long int",
            "signed long long",
            "signed long long int",
            "int64",
            "int64_t",
            "ulonglong",
            "unsigned long long",
            "unsigned long long int",
            "uint64",
            "uint64_t",
            "double",
        ),
        8,
    ),  # fmt: skip
}
_META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}  # fmt: skip


def _incomplete(path: Path, declared: int, held: int, ended: bool = True) -> InputError:
    how = "" if ended else " and its compressed stream ends early"
    return InputError(
        f"{path} is incomplete: its header declares {declared:,} bytes of voxel data but the file holds "
        f"{held:,}{how} (a download or copy cut short, or a damaged file); fix: copy or export the file again"
    )


def _inflate(stream, raw_zlib: bool = False, sink=None) -> tuple[int, bool]:
    """Bytes a gzip (or zlib) stream decompresses to, and whether it ended properly; ``sink`` (gzip only)
    sees every decompressed chunk."""
    total = 0
    if raw_zlib:
        d = zlib.decompressobj()
        while chunk := stream.read(_CHUNK):
            try:
                total += len(d.decompress(chunk))
            except zlib.error:
                return total, False
            if d.eof:
                break
        return total + len(d.flush()), d.eof
    with gzip.GzipFile(fileobj=stream) as gz:
        try:
            while data := gz.read(_CHUNK):
                total += len(data)
                if sink is not None:
                    sink(data)
        except (EOFError, OSError, zlib.error):
            return total, False
    return total, True


def _nifti_declared(head: bytes) -> tuple[int, int, int, str] | None:
    """(vox_offset, bytes of voxel data, datatype, byte order) from a NIfTI-1/-2 header, or None if it is
    not one."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            n = max(1, min(int(dims[0]), 7))
            nbytes = math.prod(max(int(d), 1) for d in dims[1 : n + 1]) * bitpix // 8
            return max(offset, 348), nbytes, datatype, endian
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            n = max(1, min(int(dims[0]), 7))
            nbytes = math.prod(max(int(d), 1) for d in dims[1 : n + 1]) * bitpix // 8
            return max(offset, 540), nbytes, datatype, endian
    return None


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype -> numpy type of the float voxel types


class _NonFinite:
    """Counts NaN/infinite values in a float voxel stream fed in chunks (from byte ``offset`` on)."""

    def __init__(self, dtype: str, offset: int) -> None:
        self.dtype, self.skip, self.rest, self.count = np.dtype(dtype), offset, b"", 0

    def __call__(self, data: bytes) -> None:
        if self.skip:
            cut = min(self.skip, len(data))
            data, self.skip = data[cut:], self.skip - cut
        data = self.rest + data
        whole = len(data) - len(data) % self.dtype.itemsize
        self.rest = data[whole:]
        if whole:
            self.count += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:whole], self.dtype))))


def _check_nifti(path: Path) -> None:
    compressed = path.name.lower().endswith(".gz")
    with open(path, "rb") as f:
        if compressed:
            with gzip.GzipFile(fileobj=f) as gz:
                try:
                    head = gz.read(540)
                except (EOFError, OSError, zlib.error):
                    raise InputError(
                        f"{path} is not a complete gzip file; fix: copy or export the file again"
                    ) from None
        else:
            head = f.read(540)
    declared = _nifti_declared(head)
    if declared is None:
        return
    offset, nbytes, datatype, endian = declared
    floats = _NIFTI_FLOATS.get(datatype)
    scan = _NonFinite(endian + floats, offset) if floats else None
    with open(path, "rb") as f:
        if compressed:
            held, ended = _inflate(f, sink=scan)
        else:
            held, ended = os.fstat(f.fileno()).st_size, True
            while scan is not None and (chunk := f.read(_CHUNK)):
                scan(chunk)
    if held - offset < nbytes or not ended:
        raise _incomplete(path, nbytes, max(held - offset, 0), ended)
    if scan is not None and scan.count:
        raise InputError(
            f"{path} holds {scan.count:,} NaN/infinite voxels, which would be read as 0 without a word; fix: "
            "replace them by real values (0 = background for a mask, -1024 = air for a CT) and save it again"
        )


def _text_header(f, end: bytes) -> tuple[dict[str, str], int] | None:
    """Key/value lines up to the blank line (NRRD) or the ElementDataFile line (MetaImage)."""
    fields: dict[str, str] = {}
    data_start = 0
    while True:
        line = f.readline(65536)
        if not line:
            return fields, f.tell()
        data_start = f.tell()
        text = line.decode("latin-1").strip()
        if end == b"\n" and not text:
            return fields, data_start
        sep = ":=" if end == b"\n" and ":=" in text else (":" if end == b"\n" else "=")
        if sep in text and not text.startswith("#"):
            key, value = text.split(sep, 1)
            fields[key.strip().lower()] = value.strip()
            if end != b"\n" and key.strip().lower() == "elementdatafile":
                return fields, data_start


def _check_nrrd(path: Path) -> None:
    with open(path, "rb") as f:
        if not f.read(4) == b"NRRD":
            return
        f.seek(0)
        fields, start = _text_header(f, b"\n")
        if "data file" in fields or "datafile" in fields or path.name.lower().endswith(".nhdr"):
            return  # detached data: ITK reports a missing data file itself
        try:
            sizes = [int(s) for s in fields["sizes"].split()]
            itemsize = _NRRD_TYPES[fields["type"].lower()]
        except (KeyError, ValueError):
            return
        nbytes = math.prod(sizes) * itemsize
        encoding = fields.get("encoding", "raw").lower()
        f.seek(start)
        if encoding in ("gzip", "gz"):
            held, ended = _inflate(f)
        elif encoding == "raw":
            held, ended = os.fstat(f.fileno()).st_size - start, True
        else:
            return
    if held < nbytes or not ended:
        raise _incomplete(path, nbytes, held, ended)


def _check_meta(path: Path) -> None:
    with open(path, "rb") as f:
        fields, start = _text_header(f, b"=")
        if fields.get("elementdatafile", "").upper() != "LOCAL":
            return
        try:
            sizes = [int(s) for s in fields["dimsize"].split()]
            channels = int(fields.get("elementnumberofchannels", 1))
            itemsize = _META_TYPES[fields["elementtype"].upper()] * channels
        except (KeyError, ValueError):
            return
        nbytes = math.prod(sizes) * itemsize
        if fields.get("compresseddata", "false").lower() == "true":
            held, ended = _inflate(f, raw_zlib=True)
        else:
            held, ended = os.fstat(f.fileno()).st_size - start, True
    if held < nbytes or not ended:
        raise _incomplete(path, nbytes, held, ended)


ORTHO_TOL = 1e-3


def _sheared(axes: list[list[float]]) -> bool:
    """True when the axis vectors (columns of the orientation matrix) are not mutually orthogonal."""
    norms = [math.sqrt(sum(c * c for c in a)) for a in axes]
    if any(n == 0 for n in norms):
        return True
    unit = [[c / n for c in a] for a, n in zip(axes, norms, strict=True)]
    return any(abs(sum(p * q for p, q in zip(unit[i], unit[j], strict=True))) > ORTHO_TOL
               for i in range(len(unit)) for j in range(i + 1, len(unit)))  # fmt: skip


def _degenerate_axis_error(path: Path, where: str, axes: list[list[float]]) -> InputError | None:
    """InputError for an axis vector of zero (or non-finite) length - a voxel size of 0 - else None."""
    lengths = [math.sqrt(sum(c * c for c in a)) for a in axes]
    bad = [i for i, n in enumerate(lengths) if not (math.isfinite(n) and n > 0)]
    if not bad:
        return None
    text = " x ".join(f"{n:g}" for n in lengths)
    return InputError(
        f"{path} has a zero-length axis in its {where} (axis {', '.join(str(i) for i in bad)}: voxel size "
        f"{text} mm, spacing 0): the image has no extent along it and its geometry cannot be known; fix: "
        "write the real voxel size into the header (e.g. set the spacing in 3D Slicer's Volumes module and "
        "save the file again)"
    )


def _sheared_error(path: Path, where: str) -> InputError:
    return InputError(
        f"{path} has a sheared (non-orthonormal) orientation matrix ({where}); LAND would have to change the "
        "image's geometry and the CT would not line up with it; fix: resample it onto an orthogonal grid "
        "(e.g. 3D Slicer: apply the transform with Harden Transform then Resample Scalar Volume, or save it "
        "again from Slicer) and use that file"
    )


SPACING_TOL = 1e-3  # relative difference allowed between pixdim and the sform's axis lengths


def _check_nifti_spacing(path: Path, head: bytes, endian: str, sform_axes: list[list[float]] | None) -> None:
    """InputError unless a NIfTI-1 header's voxel size (pixdim) is positive and, with an sform, agrees with
    the lengths of the sform's axes: ITK reads pixdim 0 as 1 mm and takes pixdim over the sform, silently."""
    ndim = max(1, min(int(struct.unpack(endian + "h", head[40:42])[0]), 3))
    pixdim = struct.unpack(endian + "8f", head[76:108])[1 : ndim + 1]
    text = " x ".join(f"{d:g}" for d in pixdim)
    fix = (
        "fix: write the real voxel size into the header (e.g. nibabel: img.header.set_zooms(...); or set "
        "the spacing in 3D Slicer's Volumes module and save the file again)"
    )
    if not all(math.isfinite(d) and d > 0 for d in pixdim):
        raise InputError(
            f"{path} has voxel size {text} mm in its NIfTI header (pixdim): a voxel size must be positive, "
            f"and ITK would read it as 1 mm, changing the image's geometry; {fix}"
        )
    if sform_axes is None:
        return
    lengths = [math.sqrt(sum(c * c for c in axis)) for axis in sform_axes[:ndim]]
    if any(abs(d - n) > SPACING_TOL * max(d, n) for d, n in zip(pixdim, lengths, strict=True)):
        sform = " x ".join(f"{n:g}" for n in lengths)
        raise InputError(
            f"{path} has inconsistent voxel sizes in its NIfTI header: pixdim says {text} mm, the sform "
            f"{sform} mm; ITK would use pixdim and the image would not lie where the sform puts it; {fix}"
        )


def check_orientation(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` if a NIfTI file's sform or an NRRD file's space directions are sheared, or a
    NIfTI file's voxel size is not positive or disagrees with its sform."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(p, "rb") as f:
                head = f.read(348)
        except (EOFError, OSError, zlib.error):
            return  # check_image_data reports damaged files
        for endian in "<>":
            if len(head) == 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
                axes = None
                if struct.unpack(endian + "h", head[254:256])[0] > 0:  # sform_code
                    rows = [struct.unpack(endian + "4f", head[o : o + 16])[:3] for o in (280, 296, 312)]
                    axes = [[rows[r][c] for r in range(3)] for c in range(3)]
                    degenerate = _degenerate_axis_error(p, "NIfTI sform", axes)
                    if degenerate is not None:
                        raise degenerate
                    if _sheared(axes):
                        raise _sheared_error(p, "NIfTI sform")
                _check_nifti_spacing(p, head, endian, axes)
                return
    elif name.endswith((".nrrd", ".nhdr")):
        with open(p, "rb") as f:
            if f.read(4) != b"NRRD":
                return
            f.seek(0)
            fields, _ = _text_header(f, b"\n")
        text = fields.get("space directions", "")
        vectors = [v for v in text.replace(" ", "").split(")") if v.startswith("(")]
        try:
            axes = [[float(c) for c in v[1:].split(",")] for v in vectors]
        except ValueError:
            return
        degenerate = _degenerate_axis_error(p, "NRRD space directions", axes)
        if degenerate is not None:
            raise degenerate
        if len(axes) >= 2 and _sheared(axes):
            raise _sheared_error(p, "NRRD space directions")


def check_image_file(path: str | os.PathLike) -> None:
    """:func:`check_image_data` and :func:`check_orientation`."""
    check_image_data(path)
    check_orientation(path)


def check_image_data(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` if ``path`` (NIfTI, NRRD or MetaImage) holds less voxel data than its header
    declares or its compressed data stream ends early."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(p)
    elif name.endswith(".nrrd"):
        _check_nrrd(p)
    elif name.endswith(".mha"):
        _check_meta(p)
