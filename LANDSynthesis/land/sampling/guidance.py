"""Classifier-free guidance on the conditioning mask, and the condition dropout that trains it.

A model trained with condition dropout (``ldm.cond_dropout``: the whole mask replaced by zeros;
``ldm.nodule_dropout``: only the nodules removed, their voxels set to the lung value, so the model also
learns "these lungs without these nodules") can be guided at sampling time::

    v = v(c0) + w * (v(c) - v(c0))

with ``c`` the user's conditioning and ``c0`` the dropped one (:data:`GUIDANCE_MODES`): ``full`` contrasts
with no mask at all, ``nodules`` with the same lungs without nodules (it pushes only what the nodules add).
``w = 1`` or mode ``none`` is plain conditional sampling, computed exactly as without guidance; otherwise
the two denoiser calls of a step run as one batch of two.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..conditioning.encode import LUNG_VALUE, SCALE, nodule_region
from ..interface.contract import GUIDANCE_MODES, MAX_GUIDANCE, check_guidance, is_guided
from ..interface.errors import InputError

__all__ = [
    "GUIDANCE_MODES",
    "MAX_GUIDANCE",
    "add_guidance_arguments",
    "check_guidance",
    "drop_condition",
    "guided_denoiser",
    "is_guided",
]

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_t, t, cond) -> v


def drop_condition(cond: Tensor, what: str, cond_mode: str) -> Tensor:
    """The conditioning with ``what`` dropped: ``full`` -> zeros; ``nodules`` -> nodule voxels set to the
    lung value (to 0 in modes without lungs), everything else unchanged; a nodule-fraction channel (see
    :func:`land.conditioning.encode.pool_to_latent`) becomes 0. Works on any grid."""
    if what == "full":
        return torch.zeros_like(cond)
    if what != "nodules":
        raise InputError(f"cannot drop {what!r} from the conditioning; choose 'full' or 'nodules'")
    fill = LUNG_VALUE / SCALE if "lung" in cond_mode else 0.0
    if cond.dim() != 5:
        return torch.where(nodule_region(cond), torch.full_like(cond, fill), cond)
    scalar = cond[:, :1]  # batched: channel 0 is the encoded mask, further ones the nodule fraction (-> 0)
    dropped = torch.where(nodule_region(scalar), torch.full_like(scalar, fill), scalar)
    return torch.cat([dropped, torch.zeros_like(cond[:, 1:])], dim=1)


def guided_denoiser(
    net: Denoiser, cond: Tensor, scale: float, mode: str, cond_mode: str
) -> Callable[[Tensor, Tensor], Tensor]:
    """A ``model_fn(x_t, t) -> v`` for :func:`land.sampling.diffusion.sample` that applies guidance to
    ``net``.

    Unguided (see :func:`is_guided`), or when dropping changes nothing (e.g. ``nodules`` on a mask without
    nodules), it is exactly ``net(x, t, cond)``.
    """
    scale, mode = check_guidance(scale, mode)
    if not is_guided(scale, mode):
        return lambda x, t: net(x, t, cond)
    null = drop_condition(cond, mode, cond_mode)
    if torch.equal(null, cond):
        return lambda x, t: net(x, t, cond)
    both = torch.cat([cond, null])

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        t2 = t.expand(x.shape[0]) if t.ndim == 0 else t
        v_c, v_0 = net(torch.cat([x, x]), torch.cat([t2, t2]), both).chunk(2)
        return v_0 + scale * (v_c - v_0)

    return model_fn


def add_guidance_arguments(parser) -> None:
    """``--guidance W`` and ``--guidance-mode M`` for every command that generates (argparse parser)."""
    from ..interface.contract import GUIDANCE_HELP, GUIDANCE_MODE_HELP

    parser.add_argument("--guidance", type=float, metavar="W", help=GUIDANCE_HELP)
    parser.add_argument("--guidance-mode", choices=GUIDANCE_MODES, help=GUIDANCE_MODE_HELP)
