"""The Slicer application's Qt, CTK and scripted-module base classes, or placeholders without the application.

Both LAND modules import these from here: with the full Slicer application ``HAVE_QT`` is True; with only the
``slicer-core`` wheel (headless tests, scripts) ``qt`` and ``ctk`` are None and the base classes are
placeholders, so a module file still imports and its logic is usable.
"""

from __future__ import annotations

try:  # the Slicer application (absent from the slicer-core wheel)
    import ctk
    import qt
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )

    HAVE_QT = True
except ImportError:
    import unittest

    ctk = qt = None

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        """Placeholder without the Slicer application: only the logic is usable."""

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        """Placeholder without the Slicer application: only the logic is usable."""

    class ScriptedLoadableModuleTest(unittest.TestCase):  # type: ignore[no-redef]
        """Placeholder without the Slicer application: only the logic is usable."""

        __test__ = False  # not collected by pytest

    HAVE_QT = False

__all__ = [
    "HAVE_QT",
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleTest",
    "ScriptedLoadableModuleWidget",
    "ctk",
    "qt",
]
