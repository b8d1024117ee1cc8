"""Text files are read and written as UTF-8 whatever the locale.

Python's default text encoding follows the locale: ASCII in a bare C locale, cp1252 in Slicer on many
Windows machines. Teaching sheets, model cards and reports carry non-ASCII text (en dashes, superscripts),
so every text-mode ``open``/``read_text``/``write_text`` in the project names its encoding. The scan finds
calls that do not; the last test runs the CLI in an ASCII locale.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("LANDSynthesis", "LANDTraining", "LANDStudio", "Testing", "benchmarks", "Utilities")
TEXT_IO = {"open", "read_text", "write_text"}
NOT_FILES = {"io", "os", "gzip", "tarfile", "zipfile", "Image", "sitk", "webbrowser"}


def _mode(call: ast.Call) -> object:
    for kw in call.keywords:
        if kw.arg == "mode":
            return kw.value.value if isinstance(kw.value, ast.Constant) else None
    builtin = isinstance(call.func, ast.Name)
    index = 1 if builtin else 0  # open(path, mode) vs Path.open(mode)
    if len(call.args) > index:
        arg = call.args[index]
        return arg.value if isinstance(arg, ast.Constant) else None
    return "r"


def unspecified_encodings(path: Path) -> list[str]:
    """``file:line: call`` of each text-mode file call in ``path`` without ``encoding=``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name not in TEXT_IO or any(kw.arg in ("encoding", None) for kw in node.keywords):
            continue
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in NOT_FILES
        ):
            continue
        mode = _mode(node) if name == "open" else "t"
        if mode is None or "b" in str(mode):
            continue
        found.append(f"{path}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_scan_finds_a_call_without_encoding(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from pathlib import Path\n"
        "Path('a').read_text()\n"
        "Path('a').read_text(encoding='utf-8')\n"
        "open('a', 'rb')\n"
        "open('a', 'w')\n"
        "Path('a').open('a')\n",
        encoding="utf-8",
    )
    assert sorted(int(hit.split(":")[1]) for hit in unspecified_encodings(sample)) == [2, 5, 6]


def test_every_text_file_call_names_its_encoding():
    hits = [
        hit for d in SOURCES for f in sorted((REPO / d).rglob("*.py")) for hit in unspecified_encodings(f)
    ]
    assert not hits, "add encoding='utf-8' to:\n" + "\n".join(hits)


def test_cli_works_in_an_ascii_locale(tiny_model_dir, tmp_path):
    """A model folder with a non-ASCII name, listed by ``land info`` in a bare C locale."""
    model = tmp_path / os.fsdecode("modèle-Müller³".encode())  # UTF-8 bytes on disk in any locale
    shutil.copytree(tiny_model_dir, model)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONIOENCODING", None)
    probe = [sys.executable, "-c", "import locale; print(locale.getpreferredencoding(False))"]
    if "utf" in subprocess.run(probe, env=env, capture_output=True, text=True).stdout.lower():
        pytest.skip("this platform has no ASCII locale to test in")
    res = subprocess.run(
        [sys.executable, "-m", "land", "info", "--model", str(model)],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr.decode("utf-8", "replace")[-2000:]
    assert os.fsencode(model) in res.stdout  # the path's bytes come back as they went in
    code = "from land.cli import tolerant_console as t; t(); print('MS-SSIM 0.5 \\u00b1 0.1', 'caf\\u00e9')"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stdout == b"MS-SSIM 0.5 \\xb1 0.1 caf\\xe9\n", res
