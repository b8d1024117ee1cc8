"""Regenerate the file lists in the modules' CMakeLists.txt (the blocks between LAND FILE LIST markers).

    python Utilities/update_cmake_lists.py          # rewrite the blocks from what is on disk
    python Utilities/update_cmake_lists.py --check  # exit 1 (naming the differences) when a list is stale

Each block is ``# BEGIN LAND FILE LIST <name> ...``, ``set(<VARIABLE> ...)``, ``# END LAND FILE LIST <name>``.
Paths are relative to the block's base folder (the module folder). The engine's package data
(``land/resources``: demo model, demo masks, configs) is listed as resources of LANDSynthesis.
Testing/test_packaging.py checks the lists independently of this script.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IGNORED_NAMES = {".gitkeep", ".DS_Store"}
IGNORED_PARTS = {"__pycache__"}


@dataclass(frozen=True)
class FileList:
    """One generated ``set(VARIABLE ...)`` block."""

    cmake_file: str  # relative to the repository
    name: str
    variable: str
    base: str  # folder the paths are relative to (relative to the repository; "" = the repository)
    patterns: tuple[str, ...]  # globs relative to ``base``
    exclude: tuple[str, ...] = field(default=())  # file-name globs left out (the package's own code)

    def files(self, repo: Path = REPO) -> list[str]:
        base = repo / self.base
        found: set[str] = set()
        for pattern in self.patterns:
            for path in base.glob(pattern):
                if (
                    path.is_file()
                    and path.name not in IGNORED_NAMES
                    and not IGNORED_PARTS & set(path.parts)
                    and not any(fnmatch(path.name, x) for x in self.exclude)
                ):
                    found.add(path.relative_to(base).as_posix())
        return sorted(found)


FILE_LISTS: tuple[FileList, ...] = (
    FileList("LANDSynthesis/CMakeLists.txt", "module-lib", "MODULE_LIB_SCRIPTS", "LANDSynthesis",
             ("LANDSynthesisLib/*.py",)),
    FileList("LANDSynthesis/CMakeLists.txt", "engine", "LAND_ENGINE_SCRIPTS", "LANDSynthesis",
             ("land/**/*.py",)),
    FileList("LANDSynthesis/CMakeLists.txt", "module-resources", "MODULE_PYTHON_RESOURCES", "LANDSynthesis",
             ("Resources/**/*",)),
    FileList("LANDSynthesis/CMakeLists.txt", "engine-resources", "LAND_ENGINE_RESOURCES", "LANDSynthesis",
             ("land/resources/**/*",), exclude=("*.py",)),
    FileList("LANDTraining/CMakeLists.txt", "module-lib", "MODULE_LIB_SCRIPTS", "LANDTraining",
             ("LANDTrainingLib/*.py",)),
    FileList("LANDTraining/CMakeLists.txt", "module-scripts", "MODULE_SCRIPT_FILES", "LANDTraining",
             ("Scripts/*.py",)),
    FileList("LANDTraining/CMakeLists.txt", "module-resources", "MODULE_PYTHON_RESOURCES", "LANDTraining",
             ("Resources/**/*",)),
)  # fmt: skip

BLOCK = re.compile(
    r"(?P<begin>^# BEGIN LAND FILE LIST (?P<name>[\w-]+)[^\n]*\n)(?P<body>.*?)"
    r"(?P<end>^# END LAND FILE LIST (?P=name)[^\n]*$)",
    re.MULTILINE | re.DOTALL,
)


def render(variable: str, files: Iterable[str]) -> str:
    lines = [f"set({variable}"] + [f"  {f}" for f in files] + ["  )"]
    return "\n".join(lines) + "\n"


def listed(text: str, name: str) -> list[str] | None:
    """The files of block ``name`` in a CMake file's text (None when the block is missing)."""
    for m in BLOCK.finditer(text):
        if m.group("name") == name:
            body = m.group("body")
            inner = body[body.index("(") + 1 : body.rindex(")")]
            return [w for w in inner.split()[1:] if not w.startswith("#")]
    return None


def update(repo: Path = REPO, check: bool = False) -> list[str]:
    """Rewrite (or with ``check`` only compare) every block; returns what was (or would be) changed."""
    changes: list[str] = []
    by_file: dict[str, list[FileList]] = {}
    for fl in FILE_LISTS:
        by_file.setdefault(fl.cmake_file, []).append(fl)
    for cmake_file, lists in by_file.items():
        path = repo / cmake_file
        text = path.read_text(encoding="utf-8")
        new_text = text
        for fl in lists:
            files = fl.files(repo)
            old = listed(new_text, fl.name)
            if old is None:
                raise SystemExit(f"{cmake_file}: no '# BEGIN LAND FILE LIST {fl.name}' block")
            if old != files:
                added, removed = sorted(set(files) - set(old)), sorted(set(old) - set(files))
                changes.append(f"{cmake_file} [{fl.name}]: +{added} -{removed}")

            def replace(m: re.Match, fl: FileList = fl, files: list[str] = files) -> str:
                if m.group("name") != fl.name:
                    return m.group(0)
                return m.group("begin") + render(fl.variable, files) + m.group("end")

            new_text = BLOCK.sub(replace, new_text)
        if new_text != text and not check:
            path.write_text(new_text, encoding="utf-8")
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale lists (exit 1)")
    args = parser.parse_args(argv)
    changes = update(check=args.check)
    for line in changes:
        print(line)
    if args.check and changes:
        print("stale CMake file lists: run python Utilities/update_cmake_lists.py", file=sys.stderr)
        return 1
    if not changes:
        print("CMake file lists are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
