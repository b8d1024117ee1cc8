"""Qt-free parts of the LANDTraining Slicer module.

``pipeline``: stages as ``land`` child processes, resume, stop, progress from ``progress.jsonl`` (no
``slicer`` import). ``logic``: ``LANDTrainingLogic`` (parameter node, loss plot nodes, hand-over of the new
model to LANDSynthesis). The child process helper is shared with LANDSynthesis (``LANDSynthesisLib.process``).
"""
