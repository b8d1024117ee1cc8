"""Latents to CT within a memory budget: tiled and full decoding (:mod:`.tiled`), streamed decoding in which
every convolution runs once (:mod:`.streamed`) and returning freed host memory (:mod:`.host_memory`)."""
