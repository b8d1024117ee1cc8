"""Writing outputs so that nobody sees a partial file and a failed write says why.

Every writer writes ``.NAME.PID-TOKEN.partial<suffix>`` beside its target and renames it onto the target
when complete (:func:`atomic_path`). A failure (disk full, read-only folder, no permission, the target is a
folder) raises :class:`InputError` (exit 2) "could not write TARGET: reason; fix: …", removes the partial
file and leaves the target as it was. Partial files of the same target left by a killed process (its PID no
longer running) are removed by the next write.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..interface.errors import InputError

PARTIAL = ".partial"

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than this system allows",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "it is an existing folder",
}


def write_error(target: Path, error: OSError | str) -> InputError:
    """The InputError for a failed write of ``target``."""
    if isinstance(error, OSError):
        reason = _REASONS.get(error.errno or 0) or error.strerror or str(error)
    else:
        reason = error
    return InputError(
        f"could not write {target}: {reason}; fix: free disk space, or choose an --out in a folder you can "
        "write to; nothing was written there"
    )


def partial_path(target: Path, suffix: str = "") -> Path:
    """A unique partial name beside ``target`` (``suffix``: an extension the writer needs, e.g. .nii.gz)."""
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL}{suffix}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def clean_stale_partials(target: Path) -> list[Path]:
    """Remove partial files of ``target`` whose writing process is no longer running; returns them."""
    removed = []
    prefix = f".{target.name}."
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and PARTIAL in p.name]
    except OSError:
        return removed
    for p in candidates:
        pid_text = p.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _running(int(pid_text)):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def check_target(target: str | os.PathLike) -> Path:
    """``target`` as a Path, or InputError if it is a folder or its folder does not exist."""
    p = Path(target)
    if p.is_dir():
        raise InputError(
            f"cannot write {p}: it is an existing folder; fix: give a file name, e.g. {p / 'ct.nii.gz'}"
        )
    if not p.parent.is_dir():
        raise InputError(f"cannot write {p}: {_missing_folder(p.parent)}")
    return p


def _missing_folder(folder: Path) -> str:
    """Why the folder ``folder`` (which is not an existing folder) cannot hold an output, with the fix."""
    above = folder
    while not os.path.lexists(above) and above != above.parent:
        above = above.parent
    if os.path.lexists(above) and not above.is_dir():
        return f"{above} is a file, not a folder; fix: choose a path inside a folder"
    return f"folder {folder} does not exist; fix: create it first"


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file: the same path, a symlink to it or a hard link (same inode)."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass  # one of them does not exist (yet): compare where the paths lead
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` lies inside the existing folder ``folder`` (symlinks resolved)."""
    if not folder.is_dir():
        return False
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


PathArgs = Mapping[str, "str | os.PathLike | None"]


def refuse_input_overwrite(outputs: PathArgs, inputs: PathArgs) -> None:
    """InputError (exit 2) before any work when an output would overwrite an input: ``outputs`` and
    ``inputs`` map what the user typed (``"--out"``, ``"--mask"``) to paths (None: not given). An output is
    refused when it is an input file (same path, a symlink or a hard link to it), an input folder, or lies
    inside an input folder. Every command that writes calls this first, so no input is ever modified."""
    given = {name: Path(p) for name, p in inputs.items() if p is not None and str(p)}
    for out_name, out_path in outputs.items():
        if out_path is None or not str(out_path):
            continue
        out = Path(out_path)
        for in_name, src in given.items():
            if _same_file(out, src):
                how = "is the same file as" if out.is_file() or not src.is_dir() else "is the same folder as"
            elif _inside(out, src):
                how = "lies inside the input folder"
            else:
                continue
            raise InputError(
                f"{out_name} {out} {how} {in_name} {src}: writing it would overwrite your input; fix: "
                f"choose an {out_name} outside your inputs; nothing was written"
            )


def unwritable_reason(folder: str | os.PathLike) -> str | None:
    """Why new files cannot be made in the existing folder ``folder``, or None when they can: a file is
    made there and removed (permission bits do not bind root; a read-only file system binds everyone)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".land-write-test-", dir=folder)
    except OSError as e:
        if e.errno == errno.EROFS:
            return "is on a read-only file system"
        if e.errno in (errno.EACCES, errno.EPERM):
            return "is not writable by you (permission denied)"
        return f"cannot hold new files ({_REASONS.get(e.errno or 0) or e.strerror or e})"
    os.close(fd)
    _remove(Path(probe))
    return None


def refuse_unwritable_outputs(files: PathArgs | None = None, folders: PathArgs | None = None) -> None:
    """InputError (exit 2) before any work when an output cannot be written: ``files`` and ``folders`` map
    what the user typed (``"--out"``) to output files and output folders (None: not given). A file must
    not be a folder and must lie in an existing folder; a folder must not be a file and is made, with its
    parents, inside the nearest existing folder; that folder must be writable (permission, read-only file
    system)."""
    wanted = [(n, p, False) for n, p in (files or {}).items()] + [
        (n, p, True) for n, p in (folders or {}).items()
    ]
    for name, given, is_folder in wanted:
        if given is None or not str(given):
            continue
        out = Path(given)
        if is_folder and os.path.lexists(out) and not out.is_dir():
            raise InputError(
                f"{name} {out} is an existing file, not a folder; fix: choose a new or empty folder; "
                "nothing was written"
            )
        if is_folder:
            home = out
            while not os.path.lexists(home) and home != home.parent:
                home = home.parent
        else:
            home = check_target(out).parent
        if not home.is_dir():
            raise InputError(f"cannot write {name} {out}: {_missing_folder(home)}")
        reason = unwritable_reason(home)
        if reason is not None:
            raise InputError(
                f"cannot write {name} {out}: folder {home} {reason}; fix: choose an {name} in a folder you "
                "can write to; nothing was written"
            )


def preflight_outputs(
    inputs: PathArgs, files: PathArgs | None = None, folders: PathArgs | None = None
) -> None:
    """The checks every writing command makes before any work: no output is an input
    (:func:`refuse_input_overwrite`) and every output can be written (:func:`refuse_unwritable_outputs`)."""
    refuse_input_overwrite({**(files or {}), **(folders or {})}, inputs)
    refuse_unwritable_outputs(files, folders)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass  # e.g. a read-only file system: the original error is the one to report


@contextmanager
def atomic_path(
    target: str | os.PathLike, suffix: str = "", verify: Callable[[Path], None] | None = None
) -> Iterator[Path]:
    """Yield a partial path to write; when the block succeeds (and ``verify(partial)`` passes) it replaces
    ``target``. OSError while writing or renaming -> :func:`write_error`; the partial file is always
    removed. ``target`` may be a file or, written as a folder, a directory tree (replaced as a whole)."""
    final = Path(target)
    if not final.parent.is_dir():
        raise InputError(f"cannot write {final}: {_missing_folder(final.parent)}")
    clean_stale_partials(final)
    tmp = partial_path(final, suffix)
    try:
        yield tmp
        if verify is not None:
            verify(tmp)
        if tmp.is_dir() and final.is_dir():
            old = partial_path(final, ".old")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    except OSError as e:
        raise write_error(final, e) from None
    finally:
        _remove(tmp)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)
