"""Perceptual loss for VAE training that works offline.

Every MONAI perceptual network downloads its weights on first use. Here:

- ``medicalnet_resnet{10,18,34,50}``: MONAI's 3D ``resnetN(spatial_dims=3, n_input_channels=1,
  feed_forward=False, ...)`` (shortcut type and downsample bias as MedicalNet trained them) loaded from
  a local MedicalNet weights file (``weights``; ``module.`` prefixes stripped; ``weights_only=True``).
  The loss is LPIPS-like: each selected ResNet stage's features are unit-normalised over channels and
  compared with a squared (``l2``) or absolute (``l1``) difference, summed over channels, averaged over
  voxels, then averaged over stages. Inputs are z-scored per sample, as MedicalNet was trained.
- ``radimagenet_resnet50``: MONAI's ``PerceptualLoss`` (2.5D, 3 orthogonal planes) loaded through torch.hub;
  ``weights`` is a torch.hub cache folder that already holds the model (offline), else it downloads.
- ``none``: no perceptual term (stated in the log, progress.jsonl and model.json provenance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..interface.errors import InputError
from .config import PerceptualConfig

WEIGHTS_HINT = (
    "download the MedicalNet ResNet weights (e.g. resnet_50_23dataset.pth from Tencent/MedicalNet) and set "
    "vae.perceptual.weights (or --perceptual-weights), or set vae.perceptual.network to 'none' to train "
    "without a perceptual loss"
)


def _normalise(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / torch.sqrt(torch.sum(x * x, dim=1, keepdim=True) + eps)


def _zscore(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    return (x - x.mean(dim=dims, keepdim=True)) / (x.std(dim=dims, keepdim=True) + 1e-6)


def build_medicalnet(depth: int) -> nn.Module:
    from monai.networks.nets import resnet
    from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

    bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(depth)
    factory = getattr(resnet, f"resnet{depth}")
    return factory(
        spatial_dims=3,
        n_input_channels=1,
        shortcut_type=shortcut,
        feed_forward=False,
        bias_downsample=bias_downsample,
    )


def load_medicalnet_weights(net: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a MedicalNet checkpoint into ``net``; returns a summary (InputError when it does not fit)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"perceptual weights file {path} does not exist; {WEIGHTS_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling error
        raise InputError(f"cannot read perceptual weights {path}: {type(e).__name__}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"perceptual weights {path} hold no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    own = net.state_dict()
    missing = sorted(k for k in own if k not in state)
    wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or wrong:
        raise InputError(
            f"perceptual weights {path} do not fit the network: {len(missing)} missing tensor(s) "
            f"(e.g. {missing[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]}); check the ResNet "
            "depth in vae.perceptual.network"
        )
    net.load_state_dict({k: state[k] for k in own}, strict=True)
    unused = sorted(k for k in state if k not in own)
    return {"tensors": len(own), "ignored": len(unused)}


class MedicalNetPerceptualLoss(nn.Module):
    """LPIPS-like 3D feature distance with a frozen MedicalNet ResNet (see the module docstring).

    ``weights=None`` keeps random weights: for benchmarks only (the trainers always require a file).
    """

    def __init__(
        self,
        depth: int,
        weights: str | Path | None,
        layers: tuple[int, ...] = (1, 2, 3, 4),
        distance: str = "l2",
    ) -> None:
        super().__init__()
        self.net = build_medicalnet(depth)
        self.load_summary = {} if weights is None else load_medicalnet_weights(self.net, weights)
        self.net.eval().requires_grad_(False)
        self.layers = tuple(layers)
        self.distance = distance

    def train(self, mode: bool = True) -> MedicalNetPerceptualLoss:
        super().train(mode)
        self.net.eval()  # frozen BatchNorm statistics, always
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        h = n.act(n.bn1(n.conv1(_zscore(x))))
        if not n.no_max_pool:
            h = n.maxpool(h)
        out = []
        for i in range(1, max(self.layers) + 1):
            h = getattr(n, f"layer{i}")(h)
            if i in self.layers:
                out.append(h)
        return out

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fx = self.features(input)
        with torch.no_grad():
            fy = self.features(target)
        total = input.new_zeros(())
        for a, b in zip(fx, fy, strict=True):
            d = _normalise(a) - _normalise(b)
            d = d * d if self.distance == "l2" else d.abs()
            total = total + d.sum(dim=1).mean()
        return total / len(fx)


def build_perceptual(cfg: PerceptualConfig) -> tuple[nn.Module | None, dict[str, Any]]:
    """The perceptual loss module (None for 'none') and a description for logs and provenance."""
    info: dict[str, Any] = cfg.describe()
    if cfg.network == "none":
        info["used"] = False
        return None, info
    if cfg.network.startswith("medicalnet_resnet"):
        if not cfg.weights:
            raise InputError(
                f"config key vae.perceptual.weights is required for {cfg.network}; {WEIGHTS_HINT}"
            )
        depth = int(cfg.network.removeprefix("medicalnet_resnet"))
        loss = MedicalNetPerceptualLoss(depth, cfg.weights, cfg.layers, cfg.distance)
        info.update(used=True, weights=str(Path(cfg.weights).resolve()), **loss.load_summary)
        from ..models.model_dir import sha256_file

        info["weights_sha256"] = sha256_file(cfg.weights)
        return loss, info
    from monai.losses import PerceptualLoss

    try:
        loss = PerceptualLoss(
            spatial_dims=3,
            network_type=cfg.network,
            is_fake_3d=True,
            fake_3d_ratio=0.2,
            cache_dir=cfg.weights,
        )
    except Exception as e:  # noqa: BLE001 - torch.hub raises many kinds of errors offline
        raise InputError(
            f"could not load the {cfg.network} perceptual network through torch.hub "
            f"({type(e).__name__}: {e}); offline, use a medicalnet_resnet* network with a local weights "
            "file, or 'none'"
        ) from e
    loss.eval().requires_grad_(False)
    info.update(used=True, implementation="monai.losses.PerceptualLoss (2.5D)")
    return loss, info
