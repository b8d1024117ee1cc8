"""LAND's latent diffusion: linear-beta noise schedule, v-prediction, Min-SNR loss weights and samplers.

Conventions (T = 1000 training timesteps, ``t`` in ``[0, T-1]``)::

    betas      = linspace(1e-4, 0.02, T)            (MONAI DDPMScheduler schedule="linear_beta")
    abar_t     = prod_{s<=t} (1 - beta_s)           alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t)
    x_t        = alpha_t * x0 + sigma_t * eps
    v          = alpha_t * eps - sigma_t * x0       (what the denoiser predicts)
    x0         = alpha_t * x_t - sigma_t * v,       eps = sigma_t * x_t + alpha_t * v
    SNR(t)     = abar_t / (1 - abar_t),             lambda_t = log(alpha_t / sigma_t) = log(SNR) / 2

Samplers (``SAMPLERS``) all drive a v-prediction ``model_fn(x_t, t) -> v`` from ``t = 999`` to clean data:
``ddpm`` (ancestral), ``ddim`` (eta = 0: deterministic) and ``dpmpp2m`` (DPM-Solver++(2M)).

Timestep spacing ("trailing", Lin et al. 2024, Table 2; diffusers ``timestep_spacing="trailing"``)::

    t_i = round(T - i * T / steps) - 1,  i = 0 .. steps-1   (round half to even, as numpy)

so the first step always starts at ``t = 999`` (pure noise, matching training), steps are evenly spaced
``T / steps`` apart, and the last model call is at ``t = T/steps - 1`` whose step goes to clean data
(``abar = 1``), returning the model's x0 prediction. ``steps = 1000`` gives ``999, 998, ..., 0``.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable

import torch
from torch import Tensor

from .contract import DEFAULT_STEPS, SAMPLERS  # noqa: F401 - SAMPLERS re-exported
from .errors import Cancelled, InputError, ModelError

__all__ = [
    "SAMPLERS",
    "NoiseSchedule",
    "default_steps",
    "min_snr_weight",
    "sample",
    "timesteps_for",
]

_DEFAULT_STEPS = DEFAULT_STEPS

ModelFn = Callable[[Tensor, Tensor], Tensor]


class NoiseSchedule:
    """Linear-beta DDPM schedule (float64 internals) with v-prediction helpers.

    ``t`` may be an int, a 0-d tensor (same timestep for the batch) or an int64 tensor of shape ``(N,)``
    (one timestep per sample, broadcast over the remaining dims of ``x``).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if num_train_timesteps < 1:
            raise ValueError("num_train_timesteps must be >= 1")
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.betas: Tensor = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        self.alphas_cumprod: Tensor = torch.cumprod(1.0 - self.betas, dim=0)
        self._tables: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps}, "
            f"beta_start={self.beta_start}, beta_end={self.beta_end})"
        )

    # -- coefficient lookup -------------------------------------------------------------------------------
    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (name, device, dtype)
        table = self._tables.get(key)
        if table is None:
            abar = self.alphas_cumprod
            values = abar.sqrt() if name == "alpha" else (1.0 - abar).sqrt()
            table = values.to(device=device, dtype=dtype)
            self._tables[key] = table
        return table

    def _coefs(self, t: int | Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) gathered at ``t``, shaped to broadcast against ``like``, in a >= fp32 dtype."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        alpha = self._table("alpha", like.device, dtype)
        sigma = self._table("sigma", like.device, dtype)
        t = torch.as_tensor(t, dtype=torch.long, device=like.device)
        if t.ndim > 1:
            raise ValueError(f"t must be a scalar or a 1-D tensor, got shape {tuple(t.shape)}")
        if t.ndim == 1:
            if like.ndim == 0 or t.shape[0] != like.shape[0]:
                raise ValueError(f"t has {t.shape[0]} entries but x has shape {tuple(like.shape)}")
            view = (-1,) + (1,) * (like.ndim - 1)
            return alpha[t].view(view), sigma[t].view(view)
        return alpha[t], sigma[t]

    # -- forward process / parametrisation ----------------------------------------------------------------
    def add_noise(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise``."""
        a, s = self._coefs(t, x0)
        return (a * x0 + s * noise).to(x0.dtype)

    def velocity(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """The v-prediction target ``v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * x0``."""
        a, s = self._coefs(t, x0)
        return (a * noise - s * x0).to(x0.dtype)

    def predict_x0_eps(self, x_t: Tensor, v: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """Invert the v-parametrisation: ``x0 = a*x_t - s*v``, ``eps = s*x_t + a*v`` (a^2 + s^2 = 1)."""
        a, s = self._coefs(t, x_t)
        return (a * x_t - s * v).to(x_t.dtype), (s * x_t + a * v).to(x_t.dtype)

    def snr(self, t: int | Tensor) -> Tensor:
        """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` as a float64 CPU tensor shaped like ``t``."""
        abar = self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()]
        return abar / (1.0 - abar)

    # -- sampler helpers ----------------------------------------------------------------------------------
    def abar(self, t: int) -> float:
        """``abar_t`` as a Python float; ``t = -1`` means clean data (``abar = 1``)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])


def min_snr_weight(t: Tensor, schedule: NoiseSchedule, gamma: float = 5.0) -> Tensor:
    """Per-sample Min-SNR-gamma weight for the **v-prediction** MSE loss (Hang et al. 2023).

    Min-SNR weights the x0-space loss by ``min(SNR_t, gamma)``. With ``x0 = a*x_t - s*v`` the x0 error is
    ``s * (v_hat - v)`` and ``s^2 = 1 / (SNR_t + 1)``, so the equivalent weight on ``||v_hat - v||^2`` is::

        w(t) = min(SNR_t, gamma) / (SNR_t + 1)

    ``w <= gamma / (gamma + 1)``; it rises with ``t`` while ``SNR_t > gamma`` and falls (-> SNR_t) beyond.
    Returns float32 weights of shape ``t.shape`` on ``t``'s device.
    """
    if gamma <= 0:
        raise ValueError("gamma must be > 0")
    snr = schedule.snr(t)
    weight = torch.clamp(snr, max=float(gamma)) / (snr + 1.0)
    device = t.device if isinstance(t, Tensor) else torch.device("cpu")
    return weight.to(device=device, dtype=torch.float32)


# -- sampling ------------------------------------------------------------------------------------------------


def _check_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    return sampler


def default_steps(sampler: str) -> int:
    """Default step count: ddpm 1000, ddim 50, dpmpp2m 25."""
    return _DEFAULT_STEPS[_check_sampler(sampler)]


def timesteps_for(steps: int | None, sampler: str = "dpmpp2m", num_train_timesteps: int = 1000) -> Tensor:
    """Descending int64 model timesteps ("trailing" spacing, see module doc); ``None`` -> default steps."""
    _check_sampler(sampler)
    if steps is None:
        steps = default_steps(sampler)
    if (
        isinstance(steps, bool)
        or not isinstance(steps, numbers.Integral)
        or not 1 <= steps <= num_train_timesteps
    ):
        raise InputError(
            f"invalid step count {steps!r} for sampler {sampler!r}: use an integer from 1 to "
            f"{num_train_timesteps} (default {default_steps(sampler)})"
        )
    steps = int(steps)
    ratio = num_train_timesteps / steps
    grid = num_train_timesteps - torch.arange(steps, dtype=torch.float64) * ratio
    return torch.round(grid).to(torch.int64) - 1


def _ddpm_step(x: Tensor, x0: Tensor, abar_t: float, abar_p: float) -> tuple[Tensor, float]:
    """Posterior ``q(x_prev | x_t, x0)`` mean and std for a (possibly strided) step ``t -> prev``."""
    alpha = abar_t / abar_p
    beta = 1.0 - alpha
    c_x0 = math.sqrt(abar_p) * beta / (1.0 - abar_t)
    c_xt = math.sqrt(alpha) * (1.0 - abar_p) / (1.0 - abar_t)
    std = math.sqrt(max((1.0 - abar_p) / (1.0 - abar_t) * beta, 0.0))
    return c_x0 * x0 + c_xt * x, std


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    shape: tuple[int, ...] | torch.Size,
    *,
    sampler: str = "dpmpp2m",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    eta: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    x_T: Tensor | None = None,
    schedule: NoiseSchedule | None = None,
) -> Tensor:
    """Draw samples from a v-prediction denoiser ``model_fn(x_t, t) -> v`` (``t``: int64, shape ``(N,)``).

    - ``sampler``: ``"ddpm"`` ancestral (posterior mean + ``sqrt(posterior variance)`` noise, none on the last
      step; strided posterior when ``steps < 1000``), ``"ddim"`` (``eta`` in [0, 1]; 0 = deterministic,
      1 = DDPM; ``eta`` is ignored by the other samplers) or ``"dpmpp2m"`` (DPM-Solver++(2M), data
      prediction, log-SNR time; first-order first step). Every sampler's last step goes to clean data and
      returns the model's x0 prediction.
    - ``steps``: 1..1000, ``None`` -> :func:`default_steps`. Timesteps: :func:`timesteps_for`.
    - Start noise ``x_T`` (unless given) and ddpm/ddim-eta step noise are drawn from ``generator`` on the CPU
      in float32 and then moved, so a seed gives the same random numbers on every device.
    - ``dtype`` is the model input / output dtype; the solver state is kept in float32 (float64 if
      ``dtype`` is float64).
    - ``progress(i, steps)`` is called after each step (``i`` from 1); ``cancel`` is checked before each
      step and raises :class:`land.errors.Cancelled`.
    """
    _check_sampler(sampler)
    schedule = schedule or NoiseSchedule()
    ts = timesteps_for(steps, sampler, schedule.num_train_timesteps).tolist()
    n_steps = len(ts)
    if not (isinstance(eta, int | float) and 0.0 <= float(eta) <= 1.0):
        raise InputError(f"invalid eta {eta!r}: use a number from 0 (deterministic DDIM) to 1 (DDPM-like)")
    eta = float(eta)
    device = torch.device(device) if device is not None else torch.device("cpu")
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    shape = tuple(int(s) for s in shape)

    if x_T is None:
        x = torch.randn(shape, generator=generator, dtype=torch.float32)
    else:
        if tuple(x_T.shape) != shape:
            raise InputError(f"x_T has shape {tuple(x_T.shape)} but shape {shape} was requested")
        x = x_T
    x = x.to(device=device, dtype=state_dtype)

    def draw_noise() -> Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(
            device=device, dtype=state_dtype
        )

    prev_x0: Tensor | None = None  # dpmpp2m history
    prev_lambda = 0.0
    for i, t in enumerate(ts):
        if cancel is not None and cancel.is_set():
            raise Cancelled("generation cancelled")
        t_prev = ts[i + 1] if i + 1 < n_steps else -1  # -1: clean data
        abar_t, abar_p = schedule.abar(t), schedule.abar(t_prev)
        a_t, s_t = math.sqrt(abar_t), math.sqrt(1.0 - abar_t)

        t_batch = torch.full((shape[0],), t, dtype=torch.int64, device=device)
        v = model_fn(x.to(dtype), t_batch)
        if tuple(v.shape) != shape:
            raise ModelError(f"the denoiser returned shape {tuple(v.shape)} for input shape {shape}")
        v = v.to(device=device, dtype=state_dtype)
        x0 = a_t * x - s_t * v

        if t_prev < 0:  # final step: to clean data (all samplers return the x0 prediction)
            x = x0
        elif sampler == "ddpm":
            mean, std = _ddpm_step(x, x0, abar_t, abar_p)
            x = mean + std * draw_noise()
        elif sampler == "ddim":
            eps = s_t * x + a_t * v
            sigma = eta * math.sqrt((1.0 - abar_p) / (1.0 - abar_t) * (1.0 - abar_t / abar_p))
            x = math.sqrt(abar_p) * x0 + math.sqrt(max(1.0 - abar_p - sigma**2, 0.0)) * eps
            if sigma > 0.0:
                x = x + sigma * draw_noise()
        else:  # dpmpp2m (Lu et al. 2022, Algorithm 2; diffusers "midpoint" form)
            a_p, s_p = math.sqrt(abar_p), math.sqrt(1.0 - abar_p)
            lam_t = math.log(a_t / s_t)
            h = math.log(a_p / s_p) - lam_t
            if prev_x0 is None:  # first step: DPM-Solver++(1) (= DDIM)
                d = x0
            else:
                r = (lam_t - prev_lambda) / h
                d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * prev_x0
            x = (s_p / s_t) * x - a_p * math.expm1(-h) * d
            prev_x0, prev_lambda = x0, lam_t

        if progress is not None:
            progress(i + 1, n_steps)
    return x.to(dtype)
