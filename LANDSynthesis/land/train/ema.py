"""Exponential moving average of a model's weights (the weights a trained LAND model ships with)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class EMA:
    """``shadow = d * shadow + (1 - d) * weights`` after each step, ``d = min(decay, (1 + n) / (10 + n))``.

    The warm-up form of the decay keeps early averages from being dominated by the random initialisation.
    Buffers (none in LAND's U-Net) are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        params = dict(model.named_parameters())
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if k in params and v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach().float(), alpha=1.0 - d)
            else:
                s.copy_(v)
        self.num_updates += 1

    def state_dict_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The averaged weights in ``model``'s dtypes (for ``load_state_dict`` / saving)."""
        ref = model.state_dict()
        return {k: self.shadow[k].to(dtype=ref[k].dtype) for k in ref}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)

    def to(self, device: torch.device) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self
