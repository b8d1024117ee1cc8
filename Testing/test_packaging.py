"""Extension packaging: the CMake lists name every file, the metadata files agree, the icon is right.

The CMake files are really parsed: ``cmake -P`` runs the top-level CMakeLists.txt with stubs of Slicer's
macros (``slicerMacroBuildScriptedModule``, ``slicer_add_python_unittest``, ``install``, ...) that record
their arguments. What is on disk is found here independently of Utilities/update_cmake_lists.py.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ("LANDSynthesis", "LANDTraining")
DEMO_MODEL = "land/resources/models/land-demo-phantom"  # relative to LANDSynthesis/
DEMO_MODEL_FILES = {
    f"{DEMO_MODEL}/{n}" for n in ("model.json", "vae.safetensors", "unet.safetensors", "MODEL_CARD.md")
}
S4EXT_FIELDS = (
    "scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors", "category",
    "iconurl", "status", "description", "screenshoturls", "enabled",
)  # fmt: skip
# Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json: required keys, allowed keys, types
CATALOG_REQUIRED = ("$schema", "category", "scm_url")
CATALOG_TYPES = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "dicom_support_rule": str,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
}
IGNORED = {".gitkeep", ".DS_Store"}

STUBS = r"""
# Stubs of the Slicer build system: record what the extension's CMake files ask for.
set(LAND_RECORD "@RECORD@")
file(WRITE ${LAND_RECORD} "")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
set(CMAKE_BINARY_DIR "@BINARY@")
set(BUILD_TESTING ON)
set(Slicer_USE_FILE "@STUBDIR@/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "@STUBDIR@/GenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "@STUBDIR@/CPack.cmake")
macro(project name)
  file(APPEND ${LAND_RECORD} "PROJECT|${name}\n")
endmacro()
macro(find_package name)
  file(APPEND ${LAND_RECORD} "FIND_PACKAGE|${name}\n")
endmacro()
macro(add_subdirectory dir)
  file(APPEND ${LAND_RECORD} "ADD_SUBDIRECTORY|${dir}\n")
  set(_land_parent_dir ${CMAKE_CURRENT_SOURCE_DIR})
  set(CMAKE_CURRENT_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/${dir})
  include(${CMAKE_CURRENT_SOURCE_DIR}/CMakeLists.txt)
  set(CMAKE_CURRENT_SOURCE_DIR ${_land_parent_dir})
endmacro()
function(configure_file src dst)
  file(APPEND ${LAND_RECORD} "CONFIGURE_FILE|${src}|${dst}\n")
endfunction()
function(install)
  cmake_parse_arguments(I "" "DESTINATION;COMPONENT" "FILES" ${ARGN})
  foreach(f ${I_FILES})
    file(APPEND ${LAND_RECORD} "INSTALL|${f}|${I_DESTINATION}\n")
  endforeach()
endfunction()
"""
USE_SLICER = r"""
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(M "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  file(APPEND ${LAND_RECORD} "MODULE|${M_NAME}|${CMAKE_CURRENT_SOURCE_DIR}|${M_WITH_GENERIC_TESTS}\n")
  foreach(f ${M_SCRIPTS})
    file(APPEND ${LAND_RECORD} "SCRIPT|${M_NAME}|${f}\n")
  endforeach()
  foreach(f ${M_RESOURCES})
    file(APPEND ${LAND_RECORD} "RESOURCE|${M_NAME}|${f}\n")
  endforeach()
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(T "" "SCRIPT" "" ${ARGN})
  file(APPEND ${LAND_RECORD} "UNITTEST|${CMAKE_CURRENT_SOURCE_DIR}|${T_SCRIPT}\n")
endfunction()
"""
DRIVER_TAIL = r"""
set(CMAKE_CURRENT_SOURCE_DIR "@REPO@")
include("@REPO@/CMakeLists.txt")
foreach(v HOMEPAGE CATEGORY CONTRIBUTORS DESCRIPTION ICONURL SCREENSHOTURLS DEPENDS STATUS BUILD_SUBDIRECTORY)
  file(APPEND ${LAND_RECORD} "VAR|EXTENSION_${v}|${EXTENSION_${v}}\n")
endforeach()
"""


# ---------------------------------------------------------------------------------------------- parsing
@pytest.fixture(scope="module")
def cmake(tmp_path_factory) -> dict:
    """The CMake files as CMake reads them (scripts and resources per module, installs, variables)."""
    exe = shutil.which("cmake")
    if exe is None:
        pytest.skip("cmake is not installed")
    tmp = tmp_path_factory.mktemp("cmake")
    stubdir = tmp / "stubs"
    stubdir.mkdir()
    record = tmp / "record.txt"
    subs = {
        "@RECORD@": record.as_posix(),
        "@BINARY@": (tmp / "build").as_posix(),
        "@STUBDIR@": stubdir.as_posix(),
    }
    subs["@REPO@"] = REPO.as_posix()

    def fill(text: str) -> str:
        for k, v in subs.items():
            text = text.replace(k, v)
        return text

    (stubdir / "UseSlicer.cmake").write_text(USE_SLICER, encoding="utf-8")
    (stubdir / "GenerateConfig.cmake").write_text(
        'file(APPEND ${LAND_RECORD} "GENERATE_CONFIG\\n")\n', encoding="utf-8"
    )
    (stubdir / "CPack.cmake").write_text('file(APPEND ${LAND_RECORD} "CPACK\\n")\n', encoding="utf-8")
    driver = tmp / "driver.cmake"
    driver.write_text(fill(STUBS) + fill(DRIVER_TAIL), encoding="utf-8")
    proc = subprocess.run([exe, "-P", str(driver)], capture_output=True, text=True, cwd=tmp)
    assert proc.returncode == 0, f"cmake -P failed:\n{proc.stdout}\n{proc.stderr}"
    out: dict = {"modules": {}, "scripts": {}, "resources": {}, "installs": [], "unittests": [], "vars": {}}
    out["calls"] = []
    out["warnings"] = proc.stderr
    for line in record.read_text(encoding="utf-8").splitlines():
        kind, *rest = line.split("|")
        out["calls"].append(kind)
        if kind == "MODULE":
            out["modules"][rest[0]] = {"dir": rest[1], "generic_tests": rest[2]}
        elif kind == "SCRIPT":
            out["scripts"].setdefault(rest[0], []).append(rest[1])
        elif kind == "RESOURCE":
            out["resources"].setdefault(rest[0], []).append(rest[1])
        elif kind == "INSTALL":
            out["installs"].append((rest[0], rest[1]))
        elif kind == "UNITTEST":
            out["unittests"].append((Path(rest[0]).name, rest[1]))
        elif kind == "VAR":
            out["vars"][rest[0]] = rest[1]
        elif kind in ("ADD_SUBDIRECTORY", "FIND_PACKAGE", "PROJECT"):
            out["calls"][-1] = f"{kind}|{rest[0]}"
    return out


def on_disk(folder: Path, pattern: str) -> set[str]:
    """Files matching ``pattern`` under ``folder`` (relative POSIX paths; no caches or placeholders)."""
    return {
        p.relative_to(folder).as_posix()
        for p in folder.glob(pattern)
        if p.is_file() and p.name not in IGNORED and "__pycache__" not in p.parts
    }


# ---------------------------------------------------------------------------------------------- file lists
def test_cmake_parses_and_builds_both_modules(cmake):
    calls = cmake["calls"]
    assert "FIND_PACKAGE|Slicer" in calls
    assert [c for c in calls if c.startswith("ADD_SUBDIRECTORY")] == [
        f"ADD_SUBDIRECTORY|{m}" for m in MODULES
    ]
    assert calls.index("GENERATE_CONFIG") < calls.index("CPACK"), "GENERATE_CONFIG must come before CPACK"
    assert calls[-1] in ("CPACK", "VAR") and "CPACK" in calls
    assert set(cmake["modules"]) == set(MODULES)
    for name, info in cmake["modules"].items():
        assert Path(info["dir"]).name == name
        assert info["generic_tests"] == "TRUE", f"{name}: WITH_GENERIC_TESTS missing"
    assert sorted(cmake["unittests"]) == sorted((m, f"{m}.py") for m in MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_every_python_file_is_listed(cmake, module):
    folder = REPO / module
    expected = on_disk(folder, "*.py") | on_disk(folder, f"{module}Lib/**/*.py")
    if module == "LANDSynthesis":
        expected |= on_disk(folder, "land/**/*.py")
        assert "land/cli.py" in expected and "land/train/progress.py" in expected
    else:
        expected |= on_disk(folder, "Scripts/**/*.py")
        assert "Scripts/train.py" in expected
    listed = set(cmake["scripts"].get(module, []))
    missing = sorted(expected - listed)
    assert not missing, (
        f"{module}/CMakeLists.txt does not list {missing}; run python Utilities/update_cmake_lists.py"
    )


@pytest.mark.parametrize("module", MODULES)
def test_every_module_resource_is_listed(cmake, module):
    folder = REPO / module
    expected = on_disk(folder, "Resources/**/*")
    assert f"Resources/UI/{module}.ui" in expected and f"Resources/Icons/{module}.png" in expected
    missing = sorted(expected - set(cmake["resources"].get(module, [])))
    assert not missing, (
        f"{module}/CMakeLists.txt does not list {missing}; run Utilities/update_cmake_lists.py"
    )


@pytest.mark.parametrize("module", MODULES)
def test_every_listed_module_file_exists(cmake, module):
    listed = cmake["scripts"].get(module, []) + cmake["resources"].get(module, [])
    absent = sorted(f for f in listed if not (REPO / module / f).is_file())
    assert not absent, f"{module}/CMakeLists.txt lists files that do not exist: {absent}"


def test_engine_resources_are_module_resources(cmake):
    """The engine's package data (demo model, demo masks, configs) is a resource of LANDSynthesis, so Slicer
    copies it beside the engine's code (qt-scripted-modules/land/resources), where land.resources looks."""
    folder = REPO / "LANDSynthesis"
    expected = {f for f in on_disk(folder, "land/resources/**/*") if not f.endswith(".py")}
    shipped = {"configs/paper.json", "configs/small.json", "demo_masks/demo_masks.seg.nrrd"}
    assert DEMO_MODEL_FILES | {f"land/resources/{f}" for f in shipped} <= expected
    missing = sorted(expected - set(cmake["resources"]["LANDSynthesis"]))
    assert not missing, f"LAND_ENGINE_RESOURCES does not list {missing}; run Utilities/update_cmake_lists.py"
    assert not (REPO / "Resources" / "Models").exists(), "the demo model lives in land/resources/models"


def test_update_script_lists_are_current():
    proc = subprocess.run(
        [sys.executable, str(REPO / "Utilities" / "update_cmake_lists.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_update_script_rewrites_a_stale_block(tmp_path):
    """The generator fills an emptied block from disk and leaves everything else as it was."""
    sys.path.insert(0, str(REPO / "Utilities"))
    try:
        import update_cmake_lists as ucl
    finally:
        sys.path.remove(str(REPO / "Utilities"))
    for folder in ("LANDSynthesis", "LANDTraining"):
        shutil.copytree(
            REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    cmake_file = tmp_path / "LANDTraining" / "CMakeLists.txt"
    original = cmake_file.read_text(encoding="utf-8")
    stale = re.sub(
        r"(set\(MODULE_LIB_SCRIPTS\n)(.*?)(  \))", r"\1  LANDTrainingLib/gone.py\n\3", original, flags=re.S
    )
    cmake_file.write_text(stale, encoding="utf-8")
    (tmp_path / "LANDTraining" / "LANDTrainingLib" / "extra.py").write_text("", encoding="utf-8")
    changes = ucl.update(tmp_path, check=True)
    assert any("extra.py" in c and "gone.py" in c for c in changes), changes
    assert cmake_file.read_text(encoding="utf-8") == stale  # --check writes nothing
    ucl.update(tmp_path)
    new = cmake_file.read_text(encoding="utf-8")
    lib = tmp_path / "LANDTraining" / "LANDTrainingLib"
    assert ucl.listed(new, "module-lib") == sorted(f"LANDTrainingLib/{p.name}" for p in lib.glob("*.py"))
    assert "LANDTrainingLib/extra.py" in ucl.listed(new, "module-lib")
    assert new.replace("  LANDTrainingLib/extra.py\n", "") == original
    assert ucl.update(tmp_path, check=True) == []


# ---------------------------------------------------------------------------------------------- metadata
def read_s4ext() -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in (REPO / "LANDExtension.s4ext").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        assert key not in fields, f"s4ext: {key} given twice"
        fields[key] = value.strip()
    return fields


def test_s4ext_has_every_field():
    fields = read_s4ext()
    missing = [k for k in S4EXT_FIELDS if not fields.get(k)]
    assert not missing, f"LANDExtension.s4ext lacks {missing}"
    assert fields["scm"] == "git" and fields["enabled"] in ("0", "1")
    assert "PyTorch" in fields["depends"].split()


def test_catalog_json_follows_the_schema():
    entry = json.loads((REPO / "LANDExtension.json").read_text(encoding="utf-8"))
    missing = [k for k in CATALOG_REQUIRED if k not in entry]
    assert not missing, f"LANDExtension.json lacks required {missing}"
    extra = sorted(set(entry) - set(CATALOG_TYPES))
    assert not extra, f"LANDExtension.json has keys the schema forbids (additionalProperties false): {extra}"
    for key, value in entry.items():
        assert isinstance(value, CATALOG_TYPES[key]), f"{key} must be {CATALOG_TYPES[key].__name__}"
    assert re.search(r"slicer-extension-catalog-entry-schema-v1\.0\.\d+\.json#?$", entry["$schema"])
    assert entry.get("scm_type", "git") in ("git", "local")
    assert 1 <= entry.get("tier", 1) <= 5
    assert all(isinstance(d, str) for d in entry["build_dependencies"])


def test_metadata_agree(cmake):
    s4ext, entry, v = (
        read_s4ext(),
        json.loads((REPO / "LANDExtension.json").read_text(encoding="utf-8")),
        cmake["vars"],
    )
    assert entry["category"] == s4ext["category"] == v["EXTENSION_CATEGORY"]
    assert entry["scm_url"] == s4ext["scmurl"]
    assert entry.get("scm_revision") == s4ext["scmrevision"]
    assert entry.get("scm_type", "git") == s4ext["scm"]
    assert entry["build_dependencies"] == s4ext["depends"].split() == v["EXTENSION_DEPENDS"].split(";")
    assert "PyTorch" in entry["build_dependencies"]
    assert (
        entry.get("build_subdirectory", ".")
        == s4ext["build_subdirectory"]
        == v["EXTENSION_BUILD_SUBDIRECTORY"]
    )
    assert entry.get("enabled", True) == (s4ext["enabled"] == "1")
    assert s4ext["homepage"] == v["EXTENSION_HOMEPAGE"]
    assert s4ext["contributors"] == v["EXTENSION_CONTRIBUTORS"]
    assert s4ext["description"] == v["EXTENSION_DESCRIPTION"]
    assert s4ext["iconurl"] == v["EXTENSION_ICONURL"]
    assert s4ext["screenshoturls"].split() == v["EXTENSION_SCREENSHOTURLS"].split(";")
    assert s4ext["status"] == v["EXTENSION_STATUS"]
    repo_url = s4ext["scmurl"].removesuffix(".git")
    assert s4ext["homepage"].startswith(repo_url)


def repository_file(url: str) -> Path:
    """raw.githubusercontent.com/OWNER/REPO/BRANCH/PATH -> PATH in this repository."""
    parsed = urlparse(url)
    assert parsed.scheme == "https" and parsed.netloc == "raw.githubusercontent.com", url
    parts = parsed.path.strip("/").split("/")
    assert len(parts) > 3, url
    return REPO / "/".join(parts[3:])


def png_size(path: Path) -> tuple[int, int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height, _, color_type = struct.unpack(">IIBB", data[16:26])
    return width, height, color_type


def test_icon_is_128_png_at_its_url():
    icon = repository_file(read_s4ext()["iconurl"])
    assert icon == REPO / "Resources" / "Icons" / "LANDExtension.png"
    width, height, color_type = png_size(icon)
    assert (width, height) == (128, 128)
    assert color_type in (2, 6)  # RGB or RGBA
    for module in MODULES:
        assert png_size(REPO / module / "Resources" / "Icons" / f"{module}.png")[:2] == (128, 128)


def test_screenshot_urls_point_into_the_repository():
    urls = read_s4ext()["screenshoturls"].split()
    assert urls, "no screenshot URL"
    paths = [repository_file(u) for u in urls]
    assert REPO / "Resources" / "Screenshots" / "synthesis.png" in paths
    absent = [p.relative_to(REPO).as_posix() for p in paths if not p.is_file()]
    if absent:
        pytest.skip(f"screenshot not made yet: {absent}")
    for p in paths:
        png_size(p)


def test_license_file_at_the_root_matches_pyproject() -> None:
    """The ExtensionsIndex check wants a LICENSE file at the repository root; pyproject names Apache-2.0."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license = "Apache-2.0"' in (root / "pyproject.toml").read_text(encoding="utf-8")
