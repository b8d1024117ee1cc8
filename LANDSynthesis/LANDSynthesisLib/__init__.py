"""Qt-free parts of the LANDSynthesis Slicer module.

``logic`` (the module logic), ``process`` (the engine child process), ``segments`` (segment naming,
texture tags, statistics, synthetic nodule shapes), ``nrrd`` (a minimal NRRD reader/writer for the engine's
input and output files) and ``dependencies`` (first-use installation, real Slicer only). Nothing here imports
``qt``, ``ctk`` or ``slicer.ScriptedLoadableModule``, so it also runs on the ``slicer-core`` wheel (tests,
headless use).
"""
