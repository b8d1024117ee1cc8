"""``land.io``, the import path the README shows: reading and writing volumes and masks
(:mod:`land.imaging.io`) and resampling to and from the model grid (:mod:`land.conditioning.model_grid`).

A compatibility module only; nothing inside ``land`` imports it.
"""

from .conditioning.model_grid import FieldOfViewWarning, from_model_grid, to_model_grid  # noqa: F401
from .imaging.io import *  # noqa: F403
