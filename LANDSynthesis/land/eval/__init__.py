"""Evaluation of synthetic CT: FID on MedicalNet features, MS-SSIM diversity, conditional fidelity, reports.

Commands: ``land sample-set`` (many samples, resumable, torchrun-aware) and ``land evaluate`` (report.json,
report.md and figures). The modules import torch/MONAI/matplotlib only where needed.
"""

from __future__ import annotations

__all__ = ["features", "fid", "fidelity", "figures", "msssim", "report", "sample_set", "sets"]
