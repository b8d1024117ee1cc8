"""Masks onto the model grid and into the condition the networks read: :mod:`.model_grid` (check, place the
grid, resample keeping every nodule, encode; and back to the input's geometry) and :mod:`.encode` (the
conditioning mask, pooled to the latent grid)."""
