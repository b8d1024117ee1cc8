"""Fréchet distance between feature Gaussians (FID) and per-set statistics cached as ``.npz``."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import linalg

from ..imaging.atomic import atomic_path

FID_EPS = 1e-6


@dataclass
class FeatureStats:
    """Mean and covariance of a set's features (``n`` volumes)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStats:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors (an (N, F) array), got shape {f.shape}")
        return cls(f.mean(axis=0), np.cov(f, rowvar=False), int(f.shape[0]))

    def save(self, path: str | os.PathLike, key: str = "") -> None:
        """Atomic write of ``mu``, ``sigma``, ``n`` and ``key`` to an ``.npz`` file."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p, ".npz") as tmp:
            np.savez(tmp, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), key=np.str_(key))

    @classmethod
    def load(cls, path: str | os.PathLike, key: str | None = None) -> FeatureStats | None:
        """Statistics from ``path``; None when missing, unreadable or stored under another ``key``."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if key is not None and str(z["key"]) != key:
                    return None
                return cls(z["mu"], z["sigma"], int(z["n"]))
        except (OSError, KeyError, ValueError):
            return None


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = FID_EPS
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) with ``scipy.linalg.sqrtm``.

    When the product is singular (sqrtm not finite), ``eps`` is added to both diagonals, as in the
    reference implementations (pytorch-fid, WDM). A small imaginary part from numerical error is dropped;
    a large one is an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes differ: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected with fewer samples than features
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1.dot(s2))
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has an imaginary component of {imag:.3g}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> dict[str, float | int]:
    """``{"fid", "fid_x1e3", "n_a", "n_b"}``."""
    fid = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    return {"fid": fid, "fid_x1e3": fid * 1e3, "n_a": a.n, "n_b": b.n}


def stats_key(set_fingerprint: str, extractor: str, preprocessing: dict) -> str:
    """The cache key of a set's statistics: its files, the feature network and the preprocessing."""
    import hashlib

    text = json.dumps({"set": set_fingerprint, "extractor": extractor, "pre": preprocessing}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]
