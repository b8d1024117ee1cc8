"""Images and masks on disk and in memory: :class:`.volume.Volume`, readers and writers (:mod:`.io`, DICOM
series :mod:`.dicom`, raw image data checks :mod:`.image_data`), atomic writes (:mod:`.atomic`), the user's
masks and their checks (:mod:`.maskset`), lung-centred grids (:mod:`.grid`) and lung segmentation
(:mod:`.lungseg`). No torch."""
