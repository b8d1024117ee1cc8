"""Denoising in latent space: noise schedules and samplers (:mod:`.diffusion`), classifier-free guidance
(:mod:`.guidance`) and matched pairs with and without a nodule (:mod:`.matched_pairs`)."""
