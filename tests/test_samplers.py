"""Schedules and samplers: closed forms, oracle denoisers, and the tinygrad port step by step."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from tinygrad import Tensor

from numpy_ref import samplers as S
from numpy_ref.configs import PRESETS
from numpy_ref.models import tokenfree
from numpy_ref.schedule import loss_weight, make_schedule, q_sample, snr, training_target
from tinygrad_impl import samplers as TS
from tinygrad_impl.models import tokenfree as tg_tokenfree
from tinygrad_impl.weights import to_tensors
from util import assert_close, random_params

# ----------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_closed_forms(kind):
    s = make_schedule(kind, T=1000)
    assert s.T == 1000 and np.all(np.diff(s.abar) < 0), "abar must decrease"
    np.testing.assert_allclose(s.abar, np.cumprod(1 - s.betas))
    assert 0.98 < s.abar[0] <= 1 and s.abar[-1] < 1e-3
    assert np.all(np.diff(snr(s)) < 0)
    if kind == "linear":
        assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)


def test_q_sample_moments():
    s = make_schedule()
    x0 = np.array([0.8, -0.3], np.float32)
    for t in (0, 250, 999):
        noise = np.random.default_rng(t).standard_normal((200_000, 2)).astype(np.float32)
        xt = q_sample(np.broadcast_to(x0, noise.shape), np.full(len(noise), t), noise, s)
        np.testing.assert_allclose(xt.mean(0), np.sqrt(s.abar[t]) * x0, atol=6e-3)
        np.testing.assert_allclose(xt.var(0), 1 - s.abar[t], rtol=2e-2, atol=1e-4)


def test_bad_schedule_and_sampler_arguments():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("quadratic")
    with pytest.raises(ValueError, match="steps must be in 1..1000"):
        S.sampling_plan(make_schedule(), "ddim", 0)
    with pytest.raises(ValueError, match="unknown sampler 'rk4'; choose one of ddim, ddpm, dpmpp2m, euler, heun"):
        S.sampling_plan(make_schedule(), "rk4", 10)
    with pytest.raises(ValueError, match="dpmpp2m is deterministic"):
        S.sampling_plan(make_schedule(), "dpmpp2m", 10, eta=1.0)
    c = S.sampling_plan(make_schedule(), "dpmpp2m", 10)[4][1]
    with pytest.raises(ValueError, match="needs x0_prev"):
        S.denoise_step(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.float32), c)


# ----------------------------------------------------------------------------
# Samplers in NumPy
# ----------------------------------------------------------------------------

def oracle(x0):
    """The perfect denoiser for a one-point data distribution at x0."""
    sched = make_schedule()
    return lambda x, t, y: (x - np.sqrt(sched.abar[t])[:, None, None, None] * x0) / np.sqrt(1 - sched.abar[t])[:, None, None, None]


@pytest.mark.parametrize("sampler, steps, eta", [("ddim", 10, 0.0), ("ddim", 25, 1.0), ("ddpm", 1000, 0.0), ("ddpm", 40, 0.0),
                                                 ("dpmpp2m", 4, 0.0), ("dpmpp2m", 10, 0.0), ("dpmpp2m", 50, 0.0)])
def test_perfect_denoiser_recovers_the_data_point(sampler, steps, eta):
    x0 = np.random.default_rng(0).uniform(-0.9, 0.9, (2, 1, 4, 4)).astype(np.float32)
    out = S.sample(oracle(x0), x0.shape, make_schedule(), sampler, steps, eta, seed=3)
    np.testing.assert_allclose(out, x0, atol=1e-4)


@pytest.mark.parametrize("sampler, steps, eta", [("ddim", 10, 0.0), ("ddpm", 40, 0.0), ("dpmpp2m", 10, 0.0)])
def test_a_v_predicting_model_samples_like_the_eps_model_it_equals(sampler, steps, eta):
    """v = sqrt(abar) eps - sqrt(1 - abar) x0: the v that the oracle's eps implies, given to the sampler as v, draws
    the same images as the eps (and recovers the data point)."""
    sched, x0 = make_schedule(), np.random.default_rng(1).uniform(-0.9, 0.9, (2, 3, 4, 4)).astype(np.float32)
    eps_fn = oracle(x0)

    def v_fn(x, t, y):
        ab = sched.abar[t][:, None, None, None]
        return (np.sqrt(ab) * eps_fn(x, t, y) - np.sqrt(1 - ab) * (x - np.sqrt(1 - ab) * eps_fn(x, t, y)) / np.sqrt(ab))
    ref = S.sample(eps_fn, x0.shape, sched, sampler, steps, eta, seed=5)
    out = S.sample(v_fn, x0.shape, sched, sampler, steps, eta, seed=5, prediction="v")
    np.testing.assert_allclose(out, ref, atol=1e-4)
    np.testing.assert_allclose(out, x0, atol=1e-4)


def test_training_target_v_is_the_v_of_the_sampler():
    """The v that training_target makes for (x0, eps) gives back x0 through denoise_step's v branch (no clip)."""
    sched, rng = make_schedule(), np.random.default_rng(2)
    x0, noise = rng.uniform(-1, 1, (3, 3, 4, 4)), rng.standard_normal((3, 3, 4, 4))
    plan = S.sampling_plan(sched, "ddim", 10)
    for t, coefs in plan:
        tt = np.full(3, t)
        v = training_target(x0, tt, noise, sched, "v")
        _, x0_hat = S.denoise_step(q_sample(x0, tt, noise, sched), v, coefs, clip=False, prediction="v")
        np.testing.assert_allclose(x0_hat, x0, atol=1e-9)
    assert training_target(x0, tt, noise, sched, "eps") is noise
    with pytest.raises(ValueError, match="unknown prediction 'x0'"):
        training_target(x0, tt, noise, sched, "x0")


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_min_snr_weight_is_min_snr_gamma_on_the_x0_error(kind):
    """A wrong x0_hat, written as the eps or v the network would output: the min-snr weight times that loss is
    min(SNR, 5) times the x0 error, for either prediction (Hang et al. 2023)."""
    sched, rng = make_schedule(kind), np.random.default_rng(3)
    t = np.array([0, 10, 100, 300, 600, 999])
    x0, noise = rng.uniform(-1, 1, (6, 3, 4, 4)), rng.standard_normal((6, 3, 4, 4))
    x0_hat = x0 + 0.1 * rng.standard_normal(x0.shape)
    xt, ab = q_sample(x0, t, noise, sched), sched.abar[t].reshape(-1, 1, 1, 1)
    eps_hat = (xt - np.sqrt(ab) * x0_hat) / np.sqrt(1 - ab)
    x0_err = ((x0_hat - x0) ** 2).sum(axis=(1, 2, 3))
    want = np.minimum(snr(sched)[t], 5.0) * x0_err
    for pred in ("eps", "v"):
        out = eps_hat if pred == "eps" else np.sqrt(ab) * eps_hat - np.sqrt(1 - ab) * x0_hat
        err = ((out - training_target(x0, t, noise, sched, pred)) ** 2).sum(axis=(1, 2, 3))
        np.testing.assert_allclose(loss_weight(t, sched, pred, "min-snr") * err, want, rtol=1e-5, err_msg=pred)
    assert 0 < loss_weight(t, sched, "v", "min-snr").max() <= 1.0, "weights of the v loss lie in (0, 1]"
    np.testing.assert_array_equal(loss_weight(t, sched, "v", "none"), np.ones(6, np.float32))
    with pytest.raises(ValueError, match="unknown loss weight 'snr'; choose one of none, min-snr"):
        loss_weight(t, sched, "v", "snr")


def test_ddim_eta0_is_deterministic_and_draws_no_noise_after_the_start():
    sched = make_schedule()
    plan = S.sampling_plan(sched, "ddim", 20, eta=0.0)
    assert all(c[5] == 0 for _, c in plan)
    cfg = PRESETS["tokenfree-tiny"]
    p = random_params(cfg)
    fn = lambda x, t, y: tokenfree.forward(p, x, t, y, cfg)  # noqa: E731
    a = S.sample(fn, (2, 3, 8, 8), sched, "ddim", 5, seed=1, y=[0, 1], guidance=2.0, null_class=cfg.null_class)
    b = S.sample(fn, (2, 3, 8, 8), sched, "ddim", 5, seed=1, y=[0, 1], guidance=2.0, null_class=cfg.null_class)
    np.testing.assert_array_equal(a, b)
    c = S.sample(fn, (2, 3, 8, 8), sched, "ddim", 5, seed=2, y=[0, 1], guidance=2.0, null_class=cfg.null_class)
    assert np.abs(a - c).max() > 1e-3
    with pytest.raises(AssertionError):   # eta > 0 draws noise: no longer a function of x_T alone
        np.testing.assert_array_equal(a, S.sample(fn, (2, 3, 8, 8), sched, "ddim", 5, eta=1.0, seed=1, y=[0, 1],
                                                  guidance=2.0, null_class=cfg.null_class))


@given(seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 60), kind=st.sampled_from(["linear", "cosine"]),
       clip=st.booleans())
def test_dpmpp2m_steps_are_ddim_steps_from_the_x0_extrapolated_to_the_midpoint(seed, steps, kind, clip):
    """DPM-Solver++(2M) extrapolates x0 linearly in lambda = log(alpha / sigma) from the last step's x0 and this one's
    to the middle of the step and takes a DDIM (eta 0) step with it: with x0 linear in lambda every second-order step
    is the DDIM step from x0(midpoint); with x0 constant, any step is a DDIM step. Its first step and its last two
    (into t = 0, then to abar = 1) are first order and ignore x0_prev. It draws no noise."""
    rng = np.random.default_rng(seed)
    sched = make_schedule(kind)
    plan, ddim = S.sampling_plan(sched, "dpmpp2m", steps), S.sampling_plan(sched, "ddim", steps)
    assert [t for t, _ in plan] == [t for t, _ in ddim]
    assert all(c[5] == 0 for _, c in plan) and all(c[6] == 0 for _, c in S.sampling_plan(sched, "ddpm", steps))
    lam = [np.log(np.sqrt(sched.abar[t]) / np.sqrt(1 - sched.abar[t])) for t, _ in plan]
    x, eps, p, q, other = (rng.standard_normal((2, 1, 3, 3)) for _ in range(5))
    x0_at = lambda lm: p + q * lm                                                                # noqa: E731
    for i, ((t, c), (_, c_ddim)) in enumerate(zip(plan, ddim)):
        ref, x0 = S.denoise_step(x, eps, c_ddim, clip=clip)
        np.testing.assert_allclose(S.denoise_step(x, eps, c, clip=clip, x0_prev=x0)[0], ref, rtol=1e-9, atol=1e-9)
        first_order = i == 0 or i >= len(plan) - 2
        assert (c[6] == 0) == first_order, f"step {i} of {len(plan)}: d = {c[6]}"
        if first_order:
            np.testing.assert_allclose(S.denoise_step(x, eps, c, clip=clip, x0_prev=other)[0], ref, rtol=1e-9, atol=1e-9)
            continue
        s0, s1 = c[0], c[1]
        eps_of = lambda x0: (x - s0 * x0) / s1                                                  # noqa: E731
        out, x0 = S.denoise_step(x, eps_of(x0_at(lam[i])), c, clip=False, x0_prev=x0_at(lam[i - 1]))
        np.testing.assert_allclose(x0, x0_at(lam[i]), rtol=1e-9, atol=1e-9)
        mid = S.denoise_step(x, eps_of(x0_at((lam[i] + lam[i + 1]) / 2)), c_ddim, clip=False)[0]
        np.testing.assert_allclose(out, mid, rtol=1e-8, atol=1e-8, err_msg=f"step {i} t={t}")


def gaussian_eps(sched, mu, s):
    """The exact eps for data N(mu, s^2) per pixel: x_t ~ N(alpha mu, alpha^2 s^2 + sigma^2), so
    E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 s^2 + sigma^2)."""
    def eps_fn(x, t, y=None):
        al = np.sqrt(sched.abar[t]).reshape(-1, *[1] * (x.ndim - 1))
        sg = np.sqrt(1 - sched.abar[t]).reshape(al.shape)
        return (sg * (x - al * mu) / (al ** 2 * s ** 2 + sg ** 2)).astype(x.dtype)
    return eps_fn


def gaussian_ode(sched, mu, s, x_T, ab):
    """Where the probability-flow ODE takes x_T (at t = T-1) at abar = ab: it keeps the standardised
    u = (x - alpha mu) / sqrt(alpha^2 s^2 + sigma^2) fixed. At ab = 1: mu + s u, a draw from N(mu, s^2)."""
    u = (x_T - np.sqrt(sched.abar[-1]) * mu) / np.sqrt(sched.abar[-1] * s ** 2 + 1 - sched.abar[-1])
    return np.sqrt(ab) * mu + np.sqrt(ab * s ** 2 + 1 - ab) * u


@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["linear", "cosine"]), s=st.floats(0.5, 1.0),
       steps=st.integers(10, 25))
def test_dpmpp2m_with_few_steps_lands_closer_to_the_ode_solution_than_ddim(seed, kind, s, steps):
    """The reason for the sampler: with 10-25 steps on Gaussian data and the exact eps, DPM-Solver++(2M) ends closer
    to the exact ODE image of the same x_T (a draw from the data distribution) than DDIM with the same steps."""
    sched, shape = make_schedule(kind), (8, 1, 4, 4)
    mu = np.random.default_rng(seed).uniform(-0.5, 0.5, shape[1:])
    x_T = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)    # what sample() starts from
    exact = gaussian_ode(sched, mu, s, x_T.astype(np.float64), 1.0)
    err = {sampler: np.sqrt(np.mean((S.sample(gaussian_eps(sched, mu, s), shape, sched, sampler, steps, seed=seed,
                                              clip=False) - exact) ** 2)) for sampler in ("ddim", "dpmpp2m")}
    assert err["dpmpp2m"] < 0.85 * err["ddim"], err


@given(seed=st.integers(0, 2**31 - 1), s=st.floats(0.1, 1.0))
def test_dpmpp2m_is_second_order_and_ddim_first(seed, s):
    """Error at t = 333 against the exact ODE from one x_T, float64, on grids that nest (999 = 111 * 9 = 333 * 3):
    steps 112, 334, 1000 shrink the step 3x each time, so the error shrinks 9x for a second-order solver, 3x for DDIM.
    (The whole run's error is not: the last step into t = 0 spans lambda 3.2..4.6 even at 1000 steps on the linear
    schedule, and is first order on purpose.)"""
    sched, rng = make_schedule(), np.random.default_rng(seed)
    mu, x_T = rng.uniform(-0.5, 0.5, (1, 4, 4)), rng.standard_normal((2, 1, 4, 4))
    eps_fn, exact = gaussian_eps(sched, mu, s), gaussian_ode(sched, mu, s, x_T, sched.abar[333])

    def error(sampler, steps):
        x, x0 = x_T, np.zeros_like(x_T)
        for t, coefs in S.sampling_plan(sched, sampler, steps):
            if t == 333:
                return np.abs(x - exact).max()
            x, x0 = S.denoise_step(x, eps_fn(x, np.array([t])), coefs, clip=False, x0_prev=x0)
        raise AssertionError(f"t = 333 is not on the {steps}-step grid")

    for sampler, order in (("dpmpp2m", 2.0), ("ddim", 1.0)):
        e = [error(sampler, n) for n in (112, 334, 1000)]
        orders = np.log(np.array(e[:-1]) / e[1:]) / np.log(3)
        assert np.all(np.abs(orders - order) < 0.15), (sampler, e, orders)


def test_classifier_free_guidance_is_the_linear_combination():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((4, 1, 2, 2)).astype(np.float32)      # eps depends on the class only
    fn = lambda x, t, y: x * 0 + table[np.asarray(y)]                   # noqa: E731
    x = np.zeros((2, 1, 2, 2), np.float32)
    for w in (0.0, 1.0, 3.0):
        e = S.guided_eps(fn, x, 10, np.array([0, 2]), w, null_class=3)
        np.testing.assert_allclose(e, table[3] + w * (table[[0, 2]] - table[3]), rtol=1e-6)


# ----------------------------------------------------------------------------
# tinygrad port
# ----------------------------------------------------------------------------

@given(seed=st.integers(0, 2**31 - 1), sampler=st.sampled_from(["ddim", "ddpm", "dpmpp2m"]),
       eta=st.sampled_from([0.0, 0.5]), clip=st.booleans(), prediction=st.sampled_from(["eps", "v"]))
def test_denoise_step_matches_numpy(seed, sampler, eta, clip, prediction):
    rng = np.random.default_rng(seed)
    plan = S.sampling_plan(make_schedule(), sampler, 17, 0.0 if sampler == "dpmpp2m" else eta)
    t, coefs = plan[rng.integers(len(plan))]
    x, eps, noise, x0_prev = (rng.standard_normal((2, 3, 4, 4)).astype(np.float32) for _ in range(4))
    ref, ref_x0 = S.denoise_step(x, eps, coefs, noise, clip, x0_prev, prediction)
    out, out_x0 = TS.denoise_step(Tensor(x), Tensor(eps), Tensor(coefs.astype(np.float32)), Tensor(noise), clip,
                                  Tensor(x0_prev), prediction)
    assert_close(ref, out.numpy(), what=f"{sampler} t={t}")
    assert_close(ref_x0, out_x0.numpy(), what=f"x0 of {sampler} t={t}")


@pytest.mark.parametrize("sampler, eta, guidance, prediction", [("ddim", 0.0, 2.0, "eps"), ("ddim", 1.0, 1.0, "eps"),
                                                                ("ddpm", 0.0, 3.0, "eps"), ("dpmpp2m", 0.0, 2.0, "eps"),
                                                                ("ddim", 0.0, 2.0, "v")])
@pytest.mark.usefixtures("both_paths")   # the fast path and the plain path
def test_tinygrad_sampler_matches_numpy_with_the_same_seed(sampler, eta, guidance, prediction):
    cfg = PRESETS["tokenfree-tiny"]
    p = random_params(cfg, 5)
    pt = to_tensors(p)
    # guidance runs the model on 2B images: B = 3 with guidance and 6 without share the model's compiled kernels
    B = 3 if guidance != 1.0 else 6
    sched, shape, y = make_schedule(), (B, 3, 8, 8), np.arange(B) % cfg.num_classes
    steps = []
    ref = S.sample(lambda x, t, y: tokenfree.forward(p, x, t, y, cfg), shape, sched, sampler, 8, eta, seed=7, y=y,
                   guidance=guidance, null_class=cfg.null_class, progress=lambda plan: [steps.append(s) or s for s in plan],
                   prediction=prediction)
    out = TS.sample(lambda x, t, y: tg_tokenfree.forward(pt, x, t, y, cfg), shape, sched, sampler, 8, eta, seed=7, y=y,
                    guidance=guidance, null_class=cfg.null_class, prediction=prediction)
    assert len(steps) == 8 and np.abs(ref).max() > 0.1
    assert_close(ref, out, atol=5e-4, what=sampler)   # 8 chained steps of the float32 model


# ----------------------------------------------------------------------------
# Noise per image (the CLIs' batches)
# ----------------------------------------------------------------------------

def test_row_noise_does_not_depend_on_how_the_rows_are_cut():
    whole, parts = S.RowNoise(5, 0, 6), [S.RowNoise(5, 0, 2), S.RowNoise(5, 2, 4)]
    for _ in range(3):   # x_T, then two steps' draws
        np.testing.assert_array_equal(whole.standard_normal((6, 3, 2, 2)),
                                      np.concatenate([p.standard_normal((len(p.rngs), 3, 2, 2)) for p in parts]))
    np.testing.assert_array_equal(S.noise_source(3).standard_normal(4), np.random.default_rng(3).standard_normal(4))
    with pytest.raises(ValueError, match="RowNoise has 6 rows, asked for a batch of 5"):
        whole.standard_normal((5, 3))


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.5)])
def test_samples_with_row_noise_are_the_same_in_any_batches_and_both_backends(sampler, eta):
    """A row-wise eps (0.3 x) and noise at every step: 6 images at once, or as 2 + 4, or by tinygrad with one jitted
    step reused for both batches, are the same images; an int seed draws others."""
    sched, shape = make_schedule(), (3, 2, 2)
    eps_np = lambda x, t, y: 0.3 * x  # noqa: E731
    run = lambda first, rows: S.sample(eps_np, (rows, *shape), sched, sampler, 5, eta, S.RowNoise(9, first, rows))  # noqa: E731
    whole = run(0, 6)
    np.testing.assert_array_equal(np.concatenate([run(0, 2), run(2, 4)]), whole)
    assert np.abs(S.sample(eps_np, (6, *shape), sched, sampler, 5, eta, 9) - whole).max() > 0.1
    step = TS.make_step(lambda x, t, y: 0.3 * x, guided=False)
    tg = [TS.sample(lambda x, t, y: 0.3 * x, (3, *shape), sched, sampler, 5, eta, S.RowNoise(9, first, 3), step_fn=step)
          for first in (0, 3)]
    assert_close(whole, np.concatenate(tg), atol=1e-5, what=sampler)
