"""The torch-free interface of the engine: what a caller (the Slicer modules, a script, the CLI) shares with
it.

Options, modes, samplers and exit codes (:mod:`.contract`), the progress events of ``--progress json``
(:mod:`.events`), the errors (:mod:`.errors`), the lung-segment name rule (:mod:`.masks`), segment colours and
tags (:mod:`.segment_style`), child processes (:mod:`.childproc`) and work shards (:mod:`.sharding`).
Standard library and numpy only; it imports nothing else from ``land`` (Testing/test_layers.py).
"""

__version__ = "0.1.0"
