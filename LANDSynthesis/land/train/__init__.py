"""LAND training: ``land train-vae``, ``land train-ldm`` and ``land check-dataset``.

Modules: :mod:`.config` (JSON training configs), :mod:`.vae_trainer`, :mod:`.ldm_trainer`,
:mod:`.latents` (latent cache), :mod:`.perceptual` (offline perceptual loss), :mod:`.checkpoint` (atomic,
``weights_only`` checkpoints with all RNG states), :mod:`.progress` (progress.jsonl / TensorBoard),
:mod:`.distributed` (torchrun / DDP), :mod:`.ema`, :mod:`.preview`, :mod:`.loop`, :mod:`.cli`.
Submodules are imported on use so ``import land.train`` stays light.
"""
