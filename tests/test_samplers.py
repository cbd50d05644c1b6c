"""Schedules and samplers: closed forms, oracle denoisers, and the tinygrad port step by step."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from tinygrad import Tensor

from numpy_ref import samplers as S
from numpy_ref.configs import PRESETS
from numpy_ref.models import tokenfree
from numpy_ref.schedule import make_schedule, q_sample, snr
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
    with pytest.raises(ValueError, match="unknown sampler"):
        S.sampling_plan(make_schedule(), "euler", 10)


# ----------------------------------------------------------------------------
# Samplers in NumPy
# ----------------------------------------------------------------------------

def oracle(x0):
    """The perfect denoiser for a one-point data distribution at x0."""
    sched = make_schedule()
    return lambda x, t, y: (x - np.sqrt(sched.abar[t])[:, None, None, None] * x0) / np.sqrt(1 - sched.abar[t])[:, None, None, None]


@pytest.mark.parametrize("sampler, steps, eta", [("ddim", 10, 0.0), ("ddim", 25, 1.0), ("ddpm", 1000, 0.0), ("ddpm", 40, 0.0)])
def test_perfect_denoiser_recovers_the_data_point(sampler, steps, eta):
    x0 = np.random.default_rng(0).uniform(-0.9, 0.9, (2, 1, 4, 4)).astype(np.float32)
    out = S.sample(oracle(x0), x0.shape, make_schedule(), sampler, steps, eta, seed=3)
    np.testing.assert_allclose(out, x0, atol=1e-4)


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

@given(seed=st.integers(0, 2**31 - 1), sampler=st.sampled_from(["ddim", "ddpm"]), eta=st.sampled_from([0.0, 0.5]),
       clip=st.booleans())
def test_denoise_step_matches_numpy(seed, sampler, eta, clip):
    rng = np.random.default_rng(seed)
    plan = S.sampling_plan(make_schedule(), sampler, 17, eta)
    t, coefs = plan[rng.integers(len(plan))]
    x, eps, noise = (rng.standard_normal((2, 3, 4, 4)).astype(np.float32) for _ in range(3))
    ref = S.denoise_step(x, eps, coefs, noise, clip)
    out = TS.denoise_step(Tensor(x), Tensor(eps), Tensor(coefs.astype(np.float32)), Tensor(noise), clip).numpy()
    assert_close(ref, out, what=f"{sampler} t={t}")


@pytest.mark.parametrize("sampler, eta, guidance", [("ddim", 0.0, 2.0), ("ddim", 1.0, 1.0), ("ddpm", 0.0, 3.0)])
def test_tinygrad_sampler_matches_numpy_with_the_same_seed(sampler, eta, guidance):
    cfg = PRESETS["tokenfree-tiny"]
    p = random_params(cfg, 5)
    pt = to_tensors(p)
    sched, shape, y = make_schedule(), (3, 3, 8, 8), np.array([0, 1, 3])
    steps = []
    ref = S.sample(lambda x, t, y: tokenfree.forward(p, x, t, y, cfg), shape, sched, sampler, 8, eta, seed=7, y=y,
                   guidance=guidance, null_class=cfg.null_class, progress=lambda plan: [steps.append(s) or s for s in plan])
    out = TS.sample(lambda x, t, y: tg_tokenfree.forward(pt, x, t, y, cfg), shape, sched, sampler, 8, eta, seed=7, y=y,
                    guidance=guidance, null_class=cfg.null_class)
    assert len(steps) == 8 and np.abs(ref).max() > 0.1
    assert_close(ref, out, atol=5e-4, what=sampler)   # 8 chained steps of the float32 model
