"""The synthetic world: chest phantoms (:mod:`.phantom`, :mod:`.phantom_deform`), real nodule shapes from
LIDC-IDRI (:mod:`.lidc_shapes`) and the recipe of the bundled demo model (:mod:`.demo`)."""
