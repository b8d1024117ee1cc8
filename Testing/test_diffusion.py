"""Tests of land.sampling.diffusion: schedule vs MONAI, v-prediction algebra, Min-SNR weights and the
samplers.

The samplers are checked with an analytic denoiser: for data x0 ~ N(mu, s^2) (per element) the optimal
v-prediction is closed form, and the probability-flow ODE has an exact solution
``x0 = mu + s * (x_T - a_T mu) / sqrt(a_T^2 s^2 + sigma_T^2)``, so ODE samplers (ddim eta=0, dpmpp2m) can
be checked against the exact flow and ddpm against the target distribution.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch

from land.interface.errors import Cancelled, InputError
from land.sampling.diffusion import (
    SAMPLERS,
    NoiseSchedule,
    default_steps,
    min_snr_weight,
    sample,
    timesteps_for,
)

MU, S = 0.3, 0.5
SCHED = NoiseSchedule()


def gaussian_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact v = a*E[eps|x_t] - s*E[x0|x_t] for x0 ~ N(MU, S^2) per element (float64 maths)."""
    abar = SCHED.alphas_cumprod[t.cpu()].to(x.device).view(-1, *([1] * (x.ndim - 1)))
    a, sg, xd = abar.sqrt(), (1 - abar).sqrt(), x.double()
    x0 = MU + a * S**2 / (abar * S**2 + 1 - abar) * (xd - a * MU)
    eps = (xd - a * x0) / sg
    return (a * eps - sg * x0).to(x.dtype)


def exact_flow(x_T: torch.Tensor) -> torch.Tensor:
    """Probability-flow ODE solution from t = 999 to clean data for the Gaussian data distribution."""
    abar = float(SCHED.alphas_cumprod[-1])
    return MU + S * (x_T.double() - math.sqrt(abar) * MU) / math.sqrt(abar * S**2 + 1 - abar)


def recording(fn):
    """Wrap a model_fn so that the x_t it is called with (the sampler trajectory) are recorded."""
    calls: list[torch.Tensor] = []

    def wrapped(x, t):
        calls.append(x.clone())
        return fn(x, t)

    return wrapped, calls


@pytest.fixture(scope="module")
def x_T() -> torch.Tensor:
    return torch.randn(4, 2, 64, generator=torch.Generator().manual_seed(0))


# -- schedule ------------------------------------------------------------------------------------------------


def test_schedule_matches_monai():
    from monai.networks.schedulers import DDPMScheduler

    ref = DDPMScheduler(
        num_train_timesteps=1000,
        schedule="linear_beta",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="v_prediction",
    )
    assert SCHED.num_train_timesteps == 1000
    assert SCHED.betas.dtype == torch.float64 and SCHED.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(SCHED.betas, ref.betas.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(SCHED.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-5, atol=1e-9)
    assert SCHED.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=2e-3)

    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    # MONAI works in float32: sqrt(1 - abar_0) = 0.01 carries a ~2e-4 relative error there -> atol 1e-5
    torch.testing.assert_close(
        SCHED.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        SCHED.velocity(x0, noise, t), ref.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5
    )
    # scalar t broadcasts over the batch
    torch.testing.assert_close(
        SCHED.add_noise(x0, noise, 500), SCHED.add_noise(x0, noise, torch.full((6,), 500))
    )


def test_predict_x0_eps_inverts_velocity():
    g = torch.Generator().manual_seed(2)
    x0, noise = (
        torch.randn(5, 4, 6, dtype=torch.float64, generator=g),
        torch.randn(5, 4, 6, dtype=torch.float64),
    )
    t = torch.tensor([0, 10, 400, 900, 999])
    x_t, v = SCHED.add_noise(x0, noise, t), SCHED.velocity(x0, noise, t)
    x0_hat, eps_hat = SCHED.predict_x0_eps(x_t, v, t)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=1e-12)


def test_snr():
    t = torch.tensor([0, 500, 999])
    abar = SCHED.alphas_cumprod[t]
    torch.testing.assert_close(SCHED.snr(t), abar / (1 - abar))
    assert torch.all(SCHED.snr(torch.arange(1000)).diff() < 0)  # strictly decreasing in t


def test_min_snr_weight():
    gamma = 5.0
    t = torch.tensor([0, 50, 200, 500, 999])
    w = min_snr_weight(t, SCHED, gamma)
    assert w.dtype == torch.float32 and w.shape == (5,)
    snr = SCHED.snr(t)
    expected = torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1)
    torch.testing.assert_close(w.double(), expected, rtol=1e-6, atol=0)
    # t = 0: SNR ~ 1e4 >> gamma -> gamma / (SNR + 1); t = 999: SNR << gamma -> SNR / (SNR + 1) = abar
    assert w[0].item() == pytest.approx(gamma / (snr[0].item() + 1), rel=1e-6)
    assert w[-1].item() == pytest.approx(SCHED.alphas_cumprod[-1].item(), rel=1e-4)

    all_t = torch.arange(1000)
    w_all = min_snr_weight(all_t, SCHED, gamma).double()
    assert w_all.max().item() <= gamma / (gamma + 1) + 1e-7  # capped
    cross = int((SCHED.snr(all_t) >= gamma).sum())  # first t with SNR < gamma
    assert torch.all(w_all[:cross].diff() >= 0)  # rises while SNR >= gamma ...
    assert torch.all(w_all[cross:].diff() <= 0)  # ... falls once SNR < gamma
    assert int(w_all.argmax()) in (cross - 1, cross)
    # without a cap the v-prediction weight is SNR / (SNR + 1) = abar_t
    torch.testing.assert_close(
        min_snr_weight(all_t, SCHED, gamma=1e30).double(), SCHED.alphas_cumprod, rtol=1e-6, atol=0
    )


# -- timesteps and argument checking -------------------------------------------------------------------------


def test_timesteps_trailing():
    assert default_steps("ddpm") == 1000 and default_steps("ddim") == 50 and default_steps("dpmpp2m") == 25
    assert default_steps("unipc") == 12
    assert timesteps_for(1000, "ddpm").tolist() == list(range(999, -1, -1))
    t25 = timesteps_for(25, "dpmpp2m")
    assert t25.dtype == torch.int64 and t25.tolist() == list(range(999, 0, -40))
    assert timesteps_for(None, "ddim").tolist() == list(range(999, 0, -20))
    for steps in (1, 3, 7, 30, 333, 999):
        ts = timesteps_for(steps, "ddim")
        assert len(ts) == steps and ts[0] == 999 and ts[-1] >= 0 and torch.all(ts.diff() < 0)


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.5, True, "25"])
def test_bad_steps_rejected(bad):
    with pytest.raises(InputError, match="1 to 1000"):
        timesteps_for(bad, "ddim")
    with pytest.raises(InputError):
        sample(gaussian_v, (1, 4), sampler="ddim", steps=bad)


def test_bad_sampler_and_eta_rejected():
    with pytest.raises(InputError) as info:
        sample(gaussian_v, (1, 4), sampler="euler")
    assert all(name in str(info.value) for name in SAMPLERS)
    with pytest.raises(InputError, match="ddpm, ddim, dpmpp2m, unipc"):
        default_steps("plms")
    for eta in (-0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match="eta"):
            sample(gaussian_v, (1, 4), sampler="ddim", steps=5, eta=eta)
    with pytest.raises(InputError, match="x_T"):
        sample(gaussian_v, (1, 4), steps=5, x_T=torch.zeros(1, 5))


# -- sampler behaviour ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_determinism_and_model_inputs(sampler):
    seen = []

    def model(x, t):
        seen.append((x.dtype, t.dtype, tuple(t.shape)))
        return gaussian_v(x, t)

    kwargs = dict(sampler=sampler, steps=20, eta=0.5 if sampler == "ddim" else 0.0)
    a = sample(model, (3, 2, 8), generator=torch.Generator().manual_seed(7), **kwargs)
    b = sample(model, (3, 2, 8), generator=torch.Generator().manual_seed(7), **kwargs)
    c = sample(model, (3, 2, 8), generator=torch.Generator().manual_seed(8), **kwargs)
    assert a.dtype == torch.float32 and a.shape == (3, 2, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(seen) == {(torch.float32, torch.int64, (3,))}


def test_progress_and_cancel():
    calls: list[tuple[int, int]] = []
    sample(gaussian_v, (2, 4), sampler="dpmpp2m", steps=12, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 12) for i in range(1, 13)]

    cancel = threading.Event()
    model, inputs = recording(gaussian_v)

    def progress(i, n):
        if i == 3:
            cancel.set()

    with pytest.raises(Cancelled, match="generation cancelled"):
        sample(model, (2, 4), sampler="ddim", steps=10, progress=progress, cancel=cancel)
    assert len(inputs) == 3  # stopped between steps 3 and 4

    model, inputs = recording(gaussian_v)
    with pytest.raises(Cancelled):
        sample(model, (2, 4), sampler="ddpm", cancel=cancel)  # already set: no model call
    assert inputs == []


def test_ddim_eta1_is_ddpm():
    """DDIM with eta = 1 uses sigma^2 = posterior variance, so its mean is the DDPM posterior mean; with
    the same generator both consume identical noise, so the whole 1000-step paths must agree (the two
    implementations use different formulas: x0/eps form vs posterior-mean coefficients)."""
    kw = dict(steps=1000, dtype=torch.float64)
    ddpm = sample(gaussian_v, (2, 64), sampler="ddpm", generator=torch.Generator().manual_seed(3), **kw)
    ddim = sample(
        gaussian_v, (2, 64), sampler="ddim", eta=1.0, generator=torch.Generator().manual_seed(3), **kw
    )
    assert (ddpm - ddim).abs().max().item() < 1e-10


def _float64_tables(ref) -> None:
    """Give a MONAI/diffusers scheduler our float64 coefficient tables.

    Theirs are float32 (``alphas = 1 - betas`` rounds 0.9999 by up to 3e-8, a ~3e-4 relative error in
    ``1 - abar_t`` at small t, which moves a 1000-step DDPM path by ~3e-4); with equal tables the step
    formulas themselves are compared, tightly."""
    ref.betas = SCHED.betas.clone()
    ref.alphas = 1.0 - SCHED.betas
    ref.alphas_cumprod = SCHED.alphas_cumprod.clone()
    ref.one = torch.tensor(1.0, dtype=torch.float64)


def _reference_ancestral_path(ref, x_T, generator):
    """Run a MONAI/diffusers DDPM ``step`` loop; v is handed over in float32 so that both draw float32
    noise from the generator (as ``sample`` does), while the state is float64."""
    x = x_T.double()
    for t in ref.timesteps:
        v = gaussian_v(x, t.expand(x.shape[0])).float()
        x = ref.step(v, int(t), x, generator=generator)[0]
    return x


def _our_ancestral_path(steps, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    return sample(
        lambda x, t: gaussian_v(x, t).float(), (2, 64), steps=steps, dtype=torch.float64, generator=g, **kw
    )


def test_ddpm_matches_monai_step():
    """Full 1000-step ancestral path vs MONAI's DDPMScheduler.step with the same generator stream."""
    from monai.networks.schedulers import DDPMScheduler

    ref = DDPMScheduler(
        num_train_timesteps=1000,
        schedule="linear_beta",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="v_prediction",
        clip_sample=False,
    )
    ref.set_timesteps(1000)
    assert torch.equal(ref.timesteps, timesteps_for(1000, "ddpm"))
    g = torch.Generator().manual_seed(4)
    x_T = torch.randn(2, 64, generator=g)
    ours = _our_ancestral_path(1000, 4, sampler="ddpm")

    _float64_tables(ref)
    assert (
        ours - _reference_ancestral_path(ref, x_T, g)
    ).abs().max().item() < 1e-6  # measured 4.9e-8 (3.1e-4 with MONAI's own float32 tables)


@pytest.mark.parametrize("steps", [100, 30])
def test_strided_ddpm_matches_diffusers(steps):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="v_prediction",
        clip_sample=False,
        variance_type="fixed_small",
        timestep_spacing="trailing",
    )
    ref.set_timesteps(steps)
    assert torch.equal(ref.timesteps, timesteps_for(steps, "ddpm"))
    _float64_tables(ref)
    g = torch.Generator().manual_seed(6)
    x_T = torch.randn(2, 64, generator=g)
    ours = _our_ancestral_path(steps, 6, sampler="ddpm")
    assert (ours - _reference_ancestral_path(ref, x_T, g)).abs().max().item() < 1e-6  # measured <= 8.4e-8


def test_ddpm_samples_target_distribution():
    out = sample(gaussian_v, (1, 20000), sampler="ddpm", generator=torch.Generator().manual_seed(5))
    assert out.mean().item() == pytest.approx(MU, abs=0.015)  # standard error 0.0035; measured 0.292
    assert out.std().item() == pytest.approx(S, rel=0.03)  # measured 0.498
    strided = sample(
        gaussian_v, (1, 20000), sampler="ddpm", steps=100, generator=torch.Generator().manual_seed(5)
    )
    assert strided.mean().item() == pytest.approx(MU, abs=0.015)
    assert strided.std().item() == pytest.approx(S, rel=0.1)  # measured -6%: coarse fixed-small variance


def test_ode_samplers_converge_to_exact_flow(x_T):
    """Errors vs the exact probability-flow solution (max abs, data std S = 0.5, |x0 - MU| up to ~1.7)."""
    exact = exact_flow(x_T)

    def err(sampler, steps):
        out = sample(gaussian_v, x_T.shape, sampler=sampler, steps=steps, x_T=x_T, dtype=torch.float64)
        return (out - exact).abs().max().item(), out

    e_ddim1000, ddim1000 = err("ddim", 1000)
    e_dpm1000, _ = err("dpmpp2m", 1000)
    e_ddim50, ddim50 = err("ddim", 50)
    e_dpm25, dpm25 = err("dpmpp2m", 25)
    e_dpm50, _ = err("dpmpp2m", 50)
    assert e_ddim1000 < 0.01  # measured 6.2e-3 (first order, O(1/steps))
    assert e_dpm1000 < 1e-3  # measured 1.5e-4
    assert e_dpm50 < 0.01  # measured 2.2e-3
    assert e_dpm25 < 0.06  # measured 4.5e-2 (dominated by the final x0-prediction step from t=39)
    assert e_dpm25 < e_ddim50 < 0.15  # ddim 50 measured 0.117: DPM-Solver++(2M) 25 beats DDIM 50
    assert (dpm25 - ddim1000).abs().max().item() < 0.05  # measured 0.039
    assert (ddim50 - ddim1000).abs().max().item() < 0.12  # measured 0.111
    for out in (ddim1000, ddim50, dpm25):  # all map N(0, 1) noise to roughly N(MU, S^2)
        assert out.mean().item() == pytest.approx(exact.mean().item(), abs=0.01)
        assert out.std().item() == pytest.approx(exact.std().item(), rel=0.08)


def test_unipc_logsnr_timesteps():
    """Warped log-SNR targets lambda_T + (lambda(t_last) - lambda_T) * u**rho, met up to the integer grid,
    from t = 999 to t_last = min(UNIPC_FINAL_TIMESTEP, 1000 - steps)."""
    from land.sampling.diffusion import UNIPC_FINAL_TIMESTEP, UNIPC_SPACING_POWER, _logsnr_timesteps

    lam = 0.5 * (SCHED.alphas_cumprod / (1 - SCHED.alphas_cumprod)).log()
    assert 0 < UNIPC_SPACING_POWER < 1  # denser at the clean end
    assert 0 < UNIPC_FINAL_TIMESTEP < 50
    for steps in (2, 3, 5, 12, 25, 100, 400, 986, 990, 1000):
        ts = timesteps_for(steps, "unipc")
        last = min(UNIPC_FINAL_TIMESTEP, 1000 - steps)
        assert len(ts) == steps and ts[0] == 999 and ts[-1] == last and torch.all(ts.diff() < 0)
        if steps <= 25:
            u = torch.linspace(0, 1, steps, dtype=torch.float64)
            cases = [(UNIPC_SPACING_POWER, last, ts), (1.0, last, _logsnr_timesteps(steps, SCHED, 1.0))]
            if steps <= 12:  # to t = 0: beyond 12 steps the grid near t = 0 is coarser than the targets
                cases.append((UNIPC_SPACING_POWER, 0, _logsnr_timesteps(steps, SCHED, final=0)))
            for rho, end, got in cases:
                span = float(lam[end] - lam[-1])
                target = float(lam[-1]) + span * u**rho
                miss = (lam[got].double() - target).abs().max()
                assert got[-1] == end and float(miss) < 0.25 * span / (steps - 1), (steps, rho, end)
            even = lam[_logsnr_timesteps(steps, SCHED, 1.0)].diff()
            assert float(even.max() - even.min()) < 0.25 * float(even.mean())
    assert timesteps_for(1, "unipc").tolist() == [999]
    assert timesteps_for(1000, "unipc").tolist() == list(range(999, -1, -1))


def test_explicit_timesteps(x_T):
    ts = timesteps_for(25, "dpmpp2m").tolist()
    a = sample(gaussian_v, x_T.shape, sampler="dpmpp2m", steps=25, x_T=x_T)
    assert torch.equal(sample(gaussian_v, x_T.shape, sampler="dpmpp2m", timesteps=ts, x_T=x_T), a)
    for bad in ([], [1000, 5], [10, 10, 0], [5, -1]):
        with pytest.raises(InputError, match="timesteps"):
            sample(gaussian_v, x_T.shape, timesteps=bad, x_T=x_T)


def test_unipc_default_steps_beat_dpmpp2m_25():
    """unipc at its default and at 12 steps is far closer to the exact flow than dpmpp2m at 25 (RMS, 4096
    values); with many steps its only error left is the final jump from t_last to clean data, and run to
    t = 0 instead it converges to the exact flow."""
    from land.sampling.diffusion import UNIPC_FINAL_TIMESTEP, _logsnr_timesteps

    x = torch.randn(8, 512, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = exact_flow(x)

    def rms(sampler, steps, **kw):
        out = sample(gaussian_v, x.shape, sampler=sampler, steps=steps, x_T=x, dtype=torch.float64, **kw)
        return (out - exact).pow(2).mean().sqrt().item()

    e_dpm25 = rms("dpmpp2m", 25)
    assert rms("unipc", 12) < e_dpm25 / 5  # measured 0.0010 vs 0.0108 (rho 0.8 to t = 0: 0.0007)
    assert rms("unipc", default_steps("unipc")) < e_dpm25 / 5
    assert rms("unipc", 12) < rms("unipc", 10) < rms("unipc", 8)  # measured 0.0010, 0.0113, 0.0359
    # the final jump's error: x0 prediction at t_last on the exact flow vs the flow's end, S*z*(1 - a*S/r)
    abar = float(SCHED.alphas_cumprod[UNIPC_FINAL_TIMESTEP])
    abar_T = float(SCHED.alphas_cumprod[-1])
    z = (x - math.sqrt(abar_T) * MU) / math.sqrt(abar_T * S**2 + 1 - abar_T)
    jump = S * z * (1 - math.sqrt(abar) * S / math.sqrt(abar * S**2 + 1 - abar))
    assert rms("unipc", 200) == pytest.approx(jump.pow(2).mean().sqrt().item(), rel=0.02)  # measured 0.0035
    to_zero = _logsnr_timesteps(25, SCHED, final=0).tolist()
    assert rms("unipc", None, timesteps=to_zero) < 1e-4  # measured 2e-5
    assert rms("unipc", 1000) < 1e-3


# -- independent references (diffusers) ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy-2 warning inside diffusers
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10, 25])
def test_unipc_matches_diffusers(x_T, steps):
    """On trailing timesteps our UniPC-bh2 (order 3, corrector) follows diffusers UniPCMultistepScheduler."""
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="v_prediction",
        solver_order=3,
        predict_x0=True,
        solver_type="bh2",
        timestep_spacing="trailing",
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    ref.set_timesteps(steps)
    dev = _path_deviation(ref, x_T, "unipc", timesteps=ref.timesteps.tolist())
    assert dev < 1e-5  # diffusers steps in float32; measured <= 7e-7


def _path_deviation(ref, x_T, sampler, **kw) -> float:
    """Largest difference between a diffusers scheduler's trajectory and ours (every x_t and the result)."""
    x, ref_path = x_T.double(), []
    for t in ref.timesteps:
        ref_path.append(x)
        x = ref.step(gaussian_v(x, t.expand(x.shape[0])), t, x).prev_sample
    model, our_path = recording(gaussian_v)
    ours = sample(model, x_T.shape, sampler=sampler, x_T=x_T, dtype=torch.float64, **kw)
    assert len(our_path) == len(ref.timesteps)
    return max((a - b).abs().max().item() for a, b in zip(our_path + [ours], ref_path + [x], strict=True))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy-2 warning inside diffusers
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 25, 50, 30])
def test_dpmpp2m_matches_diffusers(x_T, steps):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="v_prediction",
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    ref.set_timesteps(steps)
    assert torch.equal(ref.timesteps, timesteps_for(steps, "dpmpp2m"))
    dev = _path_deviation(ref, x_T, "dpmpp2m", steps=steps)
    assert dev < 1e-5  # diffusers steps in float32; measured 1.1e-8 (1 step) .. 2.0e-6 (50 steps)


@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_matches_diffusers(x_T, steps):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    ref.set_timesteps(steps)
    assert torch.equal(ref.timesteps, timesteps_for(steps, "ddim"))
    x = x_T.double()
    for t in ref.timesteps:
        x = ref.step(gaussian_v(x, t.expand(x.shape[0])), int(t), x, eta=0.0).prev_sample
    ours = sample(gaussian_v, x_T.shape, sampler="ddim", steps=steps, x_T=x_T, dtype=torch.float64)
    assert (ours - x).abs().max().item() < 1e-5  # measured 2.1e-7 (10), 1.4e-6 (50)


def test_low_precision_model_dtype():
    seen = set()

    def model(x, t):
        seen.add(x.dtype)
        return gaussian_v(x, t)

    out = sample(
        model, (2, 3, 4), sampler="dpmpp2m", steps=8, dtype=torch.bfloat16, generator=torch.Generator()
    )
    assert out.dtype == torch.bfloat16 and seen == {torch.bfloat16} and torch.isfinite(out.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_result_on_cuda(sampler):
    kw = dict(sampler=sampler, steps=20, eta=0.5 if sampler == "ddim" else 0.0)
    cpu = sample(gaussian_v, (2, 64), generator=torch.Generator().manual_seed(9), **kw)
    gpu = sample(gaussian_v, (2, 64), generator=torch.Generator().manual_seed(9), device="cuda", **kw)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
