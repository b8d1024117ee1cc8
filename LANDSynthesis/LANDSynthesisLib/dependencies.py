"""The engine's Python dependencies: what is missing, and (in the Slicer application only) installing it.

Checking never imports the packages (``importlib.util.find_spec``): fast, and safe before torch exists.
Installation follows SlicerMONAIAuto3DSeg: torch through the PyTorch extension's ``PyTorchUtils`` (it picks
the right CUDA/CPU build), everything else with ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess

# import name -> pip requirement (the engine's dependencies, as in pyproject.toml)
ENGINE_REQUIREMENTS = {
    "torch": "torch",
    "monai": "monai>=1.4",
    "einops": "einops",
    "numpy": "numpy",
    "SimpleITK": "SimpleITK",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
    "scipy": "scipy",
}
OPTIONAL_REQUIREMENTS = {
    "psutil": "psutil",  # reliable cancel of the whole process tree
    "pydicom": "pydicom",  # teaching sets (DICOM export); Slicer bundles it
    "matplotlib": "matplotlib",  # evaluation reports (land evaluate)
}


# import name -> (distribution, oldest version LAND runs with; torch 2.0: scaled_dot_product_attention)
MINIMUM_VERSIONS = {"torch": ("torch", (2, 0)), "monai": ("monai", (1, 4))}


def versionTuple(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)`` (the leading numeric parts; pre-release tags are dropped)."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = re.match(r"\d*", piece).group()
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:  # "0rc1": the release part ends here
            break
    return tuple(parts)


def tooOld(importName: str) -> str | None:
    """The installed version of ``importName`` when it is older than LAND needs, else None."""
    if importName not in MINIMUM_VERSIONS:
        return None
    dist, minimum = MINIMUM_VERSIONS[importName]
    try:
        installed = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    return installed if versionTuple(installed) < minimum else None


def isInstalled(importName: str) -> bool:
    try:
        return importlib.util.find_spec(importName) is not None
    except (ImportError, ValueError):
        return False


def missingRequirements(includeOptional: bool = True) -> dict[str, str]:
    """{import name: pip requirement} of every engine dependency that is not installed (or too old)."""
    wanted = dict(ENGINE_REQUIREMENTS)
    if includeOptional:
        wanted.update(OPTIONAL_REQUIREMENTS)
    missing = {}
    for name, req in wanted.items():
        if not isInstalled(name):
            missing[name] = req
        elif tooOld(name):
            minimum = ".".join(map(str, MINIMUM_VERSIONS[name][1]))
            missing[name] = f"{MINIMUM_VERSIONS[name][0]}>={minimum}"
    return missing


def _installing(what: str, install):
    """Run ``install()``; a failed pip run (CalledProcessError, OSError) becomes a RuntimeError saying so."""
    try:
        return install()
    except (subprocess.CalledProcessError, OSError) as e:
        detail = getattr(e, "stderr", None) or getattr(e, "output", None) or e
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        tail = str(detail).strip().splitlines()[-3:]
        raise RuntimeError(
            f"installing {what} failed ({e.__class__.__name__}): "
            + " / ".join(tail)
            + "; check the internet connection (or a proxy) and the Python console, then try again"
        ) from e


def ensureInSlicer(missing: dict[str, str], what: str = "LAND") -> bool:
    """Install ``missing`` after the user confirms; on failure show the reason in a dialog. True when all is
    installed (nothing was missing, or it installed), False when the user declined or it failed."""
    if not missing:
        return True
    import slicer

    try:
        return installInSlicer(missing, askConfirmation=True)
    except RuntimeError as e:
        slicer.util.errorDisplay(f"{what} cannot run yet: {e}", windowTitle="LAND: dependencies")
        return False


def installInSlicer(missing: dict[str, str], askConfirmation: bool = True) -> bool:
    """Install ``missing`` inside the Slicer application. Returns False when the user declined.

    Raises RuntimeError outside the Slicer application (``slicer.app`` absent) or when installation fails
    (Slicer's installers raise ``subprocess.CalledProcessError``; it is turned into RuntimeError with what
    failed, so every caller's error dialog shows it). One confirmation: PyTorchUtils is not asked again.
    """
    import slicer

    if not hasattr(slicer, "app"):
        raise RuntimeError(
            "installing packages needs the 3D Slicer application; install them with pip: "
            + " ".join(sorted(missing.values()))
        )
    if not missing:
        return True
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
        "LAND needs these Python packages, which are not installed yet:\n\n  "
        + "\n  ".join(sorted(missing.values()))
        + "\n\nInstall them now? This can take several minutes (PyTorch is large).",
        "LAND: install dependencies",
    ):
        return False
    if "torch" in missing:
        try:
            import PyTorchUtils  # from the PyTorch extension (EXTENSION_DEPENDS PyTorch)
        except ImportError as e:
            raise RuntimeError(
                "PyTorch is required: install the 'PyTorch' extension from the Extensions Manager, restart "
                "Slicer and try again"
            ) from e
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        old = tooOld("torch")
        if old:
            minimum = ".".join(map(str, MINIMUM_VERSIONS["torch"][1]))
            raise RuntimeError(
                f"PyTorch {old} is too old for LAND (it needs {minimum} or newer); fix: in the PyTorch Utils "
                "module uninstall PyTorch and install it again, restart Slicer and try again"
            )
        if not torchLogic.torchInstalled():
            torch = _installing("PyTorch", lambda: torchLogic.installTorch(askConfirmation=False))
            if torch is None:
                raise RuntimeError("PyTorch was not installed; LAND cannot run without it")
    rest = [req for name, req in missing.items() if name != "torch"]
    if rest:
        _installing(", ".join(rest), lambda: slicer.util.pip_install(rest))
    importlib.invalidate_caches()
    still = [name for name in missing if not isInstalled(name)]
    if still:
        raise RuntimeError("these packages are still missing after installation: " + ", ".join(sorted(still)))
    return True
