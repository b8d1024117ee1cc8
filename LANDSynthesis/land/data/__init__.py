"""Training data: the LAND folder dataset (one folder per case), its validation and sampling order."""

from .check import CaseReport, DatasetReport, check_dataset
from .folder import (
    IMAGE_FILE,
    LUNG_FILE,
    MANIFEST_FILE,
    NODULES_FILE,
    TEXTURES_FILE,
    Case,
    CaseFiles,
    FolderDataset,
    PatchDataset,
    hu_to_unit,
    load_case,
    read_manifest,
    read_textures,
)
from .sampling import case_indices, patch_origin, step_seed

__all__ = [
    "IMAGE_FILE",
    "LUNG_FILE",
    "MANIFEST_FILE",
    "NODULES_FILE",
    "TEXTURES_FILE",
    "Case",
    "CaseFiles",
    "CaseReport",
    "DatasetReport",
    "FolderDataset",
    "PatchDataset",
    "case_indices",
    "check_dataset",
    "hu_to_unit",
    "load_case",
    "patch_origin",
    "read_manifest",
    "read_textures",
    "step_seed",
]
