"""FID features: MONAI's 3D ResNet-50 in MedicalNet's layout, loaded from ``resnet_50_23dataset.pth``.

MedicalNet (Chen et al., "Med3D", 2019) builds its ResNet-50 with a stride-2 7x7x7 ``conv1``, a max-pool,
``layer2`` with stride 2, and ``layer3`` / ``layer4`` with stride 1 and dilation 2 / 4 (padding = dilation in
each bottleneck's 3x3x3 conv) instead of striding: the feature map stays at 1/8 of the input. MONAI's
``ResNet`` has no dilation option and strides every layer after ``layer1``; :func:`medicalnet_resnet50`
builds MONAI's network (1 input channel, shortcut B, no bias in the downsample convs, conv1 stride 2,
no classifier head) and then sets, in ``layer3`` and ``layer4``, every 3x3x3 conv to stride 1 with
dilation and padding 2 / 4 and the first block's 1x1x1 downsample conv to stride 1. The parameters and
their names are unchanged, so MedicalNet's weights load as they are (after removing ``module.``).

The features (WDM / LAND protocol) are the global average of ``layer4``: 2048 values per volume, input
a (1, 1, z, y, x) volume in [0, 1], batch 1. The HU -> [0, 1] scaling is not done here: ``land evaluate``
applies its intensity protocol first (:func:`land.eval.sets.volume_to_unit`; default ``wdm``, WDM-3D's
per-volume clip to [-1000, 99.9th percentile] and min-max).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..interface.errors import InputError

WEIGHTS_FILE = "resnet_50_23dataset.pth"
WEIGHTS_SOURCE = (
    "MedicalNet (Tencent, https://github.com/Tencent/MedicalNet), also on Hugging Face as "
    "TencentMedicalNet/MedicalNet-Resnet50"
)
_HEAD_PREFIXES = ("conv_seg.", "fc.")  # MedicalNet's segmentation head / a classifier: not used


def land_cache_dir() -> Path:
    """``$LAND_CACHE_DIR``, else ``$XDG_CACHE_HOME/land``, else ``~/.cache/land``."""
    if os.environ.get("LAND_CACHE_DIR"):
        return Path(os.environ["LAND_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "land"


def weights_search_paths() -> list[Path]:
    """Where :func:`find_weights` looks for ``resnet_50_23dataset.pth``, in order."""
    paths = [land_cache_dir() / "weights" / WEIGHTS_FILE, land_cache_dir() / WEIGHTS_FILE]
    hf = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    paths += sorted(hf.glob(f"models--TencentMedicalNet--MedicalNet-Resnet50/snapshots/*/{WEIGHTS_FILE}"))
    return paths


def find_weights(path: str | os.PathLike | None = None) -> Path:
    """The MedicalNet weights file: ``path`` if given, else the first file in :func:`weights_search_paths`.

    Raises InputError naming the file, where to get it and where to put it (its download is not automatic).
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InputError(
                f"feature weights file {p} not found; fix: give the path of {WEIGHTS_FILE} "
                f"from {WEIGHTS_SOURCE}"
            )
        return p
    for p in weights_search_paths():
        if p.is_file():
            return p
    raise InputError(
        f"{WEIGHTS_FILE} (MedicalNet ResNet-50 weights, needed for FID) was not found; it cannot be "
        f"downloaded here. fix: get it from {WEIGHTS_SOURCE} and put it at "
        f"{land_cache_dir() / 'weights' / WEIGHTS_FILE} (or set LAND_CACHE_DIR, "
        "or pass --feature-weights PATH)"
    )


def medicalnet_resnet50() -> torch.nn.Module:
    """MONAI's ResNet-50 adapted to MedicalNet's layout (see the module docstring); eval mode, random init."""
    from monai.networks.nets import resnet50

    net = resnet50(
        spatial_dims=3,
        n_input_channels=1,
        feed_forward=False,
        shortcut_type="B",
        bias_downsample=False,
        conv1_t_size=7,
        conv1_t_stride=2,
    )
    for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
        for block in layer:
            block.conv2.stride = (1, 1, 1)
            block.conv2.dilation = (dilation,) * 3
            block.conv2.padding = (dilation,) * 3
            block.stride = 1
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1, 1)
    return net.eval()


def medicalnet_state_dict(obj: object, source: str = "weights file") -> dict[str, torch.Tensor]:
    """A ResNet state dict from a loaded MedicalNet file: ``{"state_dict": ...}`` or a plain dict, ``module.``
    prefixes removed, head keys (``conv_seg.*``, ``fc.*``) dropped."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{source} holds no state dict of tensors; fix: give MedicalNet's {WEIGHTS_FILE}")
    out = {}
    for key, value in obj.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        if not k.startswith(_HEAD_PREFIXES):
            out[k] = value
    return out


def load_medicalnet_resnet50(path: str | os.PathLike | None = None) -> torch.nn.Module:
    """The FID feature network with MedicalNet's weights (``path`` or the cache; see :func:`find_weights`).

    The file is read with ``torch.load(weights_only=True)`` (no arbitrary unpickling). Every parameter and
    buffer must be present (BatchNorm ``num_batches_tracked`` counters, absent in old files, excepted).
    """
    p = find_weights(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, refused globals
        raise InputError(
            f"cannot read feature weights {p}: {e}; fix: give MedicalNet's {WEIGHTS_FILE}"
        ) from e
    state = medicalnet_state_dict(obj, str(p))
    net = medicalnet_resnet50()
    expected = net.state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise InputError(
            f"{p} is not a MedicalNet ResNet-50 weights file ({detail}); fix: give {WEIGHTS_FILE} "
            "(ResNet-50, shortcut B, 1 input channel)"
        )
    net.load_state_dict(state, strict=True)
    net.land_weights_sha256 = sha256_file(p)  # type: ignore[attr-defined]
    return net.eval()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def extractor_id(extractor: torch.nn.Module) -> str:
    """A key for the feature network: the weights file's sha256 when known, else a hash of its state."""
    known = getattr(extractor, "land_weights_sha256", None)
    if known:
        return f"medicalnet-r50-{known[:16]}"
    h = hashlib.sha256(type(extractor).__qualname__.encode())
    for key, value in extractor.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return f"{type(extractor).__name__}-{h.hexdigest()[:16]}"


@torch.inference_mode()
def extract_features(
    extractor: torch.nn.Module, volumes: Iterable[np.ndarray], device: str | torch.device = "cpu"
) -> Iterator[np.ndarray]:
    """One float64 feature vector per volume (each a [z, y, x] array in [0, 1]), batch 1.

    ``extractor`` is any module mapping (1, 1, z, y, x) to (1, F) (or to a feature map, which is averaged
    over its spatial axes).
    """
    dev = torch.device(device)
    extractor = extractor.to(dev).eval()
    for volume in volumes:
        x = torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float32, device=dev)[None, None]
        y = extractor(x)
        if y.ndim > 2:
            y = y.flatten(2).mean(-1)
        yield y.reshape(-1).double().cpu().numpy()
