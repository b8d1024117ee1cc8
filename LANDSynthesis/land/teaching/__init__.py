"""Teaching sets (issue 8): batches of SYNTHETIC chest CTs exported as DICOM, with answer keys and scoring.

``land teaching-set`` plans N cases reproducibly from a seed (:mod:`.plan`), generates them with
:class:`land.pipeline.LANDPipeline` (:mod:`.build`), writes one DICOM CT series per case
(:mod:`.dicom_export`), the answer key (:mod:`.answers`) and an instructor sheet (:mod:`.sheet`).
``land teaching-score`` scores a trainee's marks against the key (:mod:`.score`).
"""

from __future__ import annotations
