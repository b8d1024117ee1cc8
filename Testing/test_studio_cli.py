"""``land studio`` from the engine's CLI: a thin, lazy dispatch; without the studio extra, exit 2 and a
one-line message that names the install command (the core install stays lean)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from land.cli import build_parser


def test_studio_options_and_defaults():
    args = build_parser().parse_args(["studio"])
    assert (args.host, args.port, args.token, args.demo) == ("127.0.0.1", 8080, None, False)


@pytest.mark.parametrize("absent", ["trame_slicer", "land_studio"])
def test_studio_without_the_extra_exits_2_naming_the_install(absent):
    # the package is made unimportable in a fresh interpreter, as in a core install without the extra
    code = (
        f"import sys; sys.modules[{absent!r}] = None; from land.cli import main; "
        "raise SystemExit(main(['studio', '--port', '1']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[studio]"' in lines[0] and absent in lines[0], lines


def test_teaching_session_options_and_a_folder_that_is_not_a_set(tmp_path, capsys):
    pytest.importorskip("aiohttp")
    args = build_parser().parse_args(["studio", "--teaching-set", str(tmp_path)])
    assert (args.max_sessions, args.margin_mm, args.instructor_token, args.trainee) == (8, 5.0, None, None)
    from land.cli import main

    (tmp_path / "notes.txt").write_text("not a teaching set", encoding="utf-8")
    # no key, and a folder that holds other things (an empty or new one is where the instructor makes the set
    # from the page: test_studio_make_set_browser.py): refused at start
    assert main(["studio", "--teaching-set", str(tmp_path), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "answer key" in err and "notes.txt" in err and "no set can be made there" in err
    assert not (tmp_path / "studio").exists()  # nothing written into the foreign folder
