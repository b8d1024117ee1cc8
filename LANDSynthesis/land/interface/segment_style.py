"""Names, colours, terminology and the texture tag of LAND segments (shared by the engine and Slicer module).

Plain constants with no heavy imports, so the Slicer module can use them before torch is installed.
"""

from __future__ import annotations

TEXTURE_TAG = "LAND.Texture"
TEXTURE_WORDS = {
    1: "non-solid / ground-glass (GGO)",
    2: "mostly non-solid",
    3: "part-solid",
    4: "mostly solid",
    5: "solid",
}
LUNG_SEGMENT_NAME = "Lungs"
LUNG_COLOR = (0.772549, 0.647059, 0.568627)
NODULE_COLORS = (
    (0.862745, 0.078431, 0.235294),
    (0.117647, 0.564706, 1.0),
    (0.196078, 0.803922, 0.196078),
    (1.0, 0.647059, 0.0),
    (0.580392, 0.0, 0.827451),
    (0.0, 0.807843, 0.819608),
)
LUNG_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^39607008^Lung~^^~Anatomic codes - DICOM master list~^^~^^"
)
NODULE_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered "
    "Structure~SCT^27925004^Nodule~^^~Anatomic codes - DICOM master list~SCT^39607008^Lung~^^"
)
