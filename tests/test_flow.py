"""Rectified flow (prediction "flow"): the training path and target, Euler and Heun against the exact ODE of Gaussian
data, NumPy vs tinygrad from one seed (with guidance), the sampler / model mismatch errors, and a tiny flow run
(with --hflip and --lr-decay cosine) whose checkpoint both sample CLIs draw the same grid from."""
import json
from dataclasses import replace

import numpy as np
import pytest
from tinygrad import Tensor

from numpy_ref import data as D
from numpy_ref import samplers as S
from numpy_ref import sample as np_sample
from numpy_ref.configs import PRESETS
from numpy_ref.models import tokenfree
from numpy_ref.schedule import (draw_timesteps, flow_s, flow_sample, loss_weight, make_schedule, noisy_sample,
                                q_sample, training_target)
from tinygrad_impl import sample as tg_sample
from tinygrad_impl import samplers as TS
from tinygrad_impl import train
from tinygrad_impl.models import tokenfree as tg_tokenfree
from tinygrad_impl.weights import to_tensors
from util import assert_close, cli_fails, random_params

# ----------------------------------------------------------------------------
# Training path, target, timesteps, weights
# ----------------------------------------------------------------------------

def test_flow_path_and_target_are_the_straight_line_and_its_velocity():
    """x_t = (1 - s) x0 + s eps with s = (t + 1) / T, target v = eps - x0; x0 = x_t - s v is what the sampler reads
    (denoise_step's flow branch); t = T - 1 is pure noise."""
    sched, rng = make_schedule(T=1000), np.random.default_rng(0)
    x0, noise = rng.uniform(-1, 1, (4, 3, 4, 4)).astype(np.float32), rng.standard_normal((4, 3, 4, 4)).astype(np.float32)
    t = np.array([0, 1, 499, 999])
    s = np.array([0.001, 0.002, 0.5, 1.0])[:, None, None, None]
    np.testing.assert_allclose(flow_s(t, 1000), s[:, 0, 0, 0])
    xt, v = flow_sample(x0, t, noise, 1000), training_target(x0, t, noise, sched, "flow")
    np.testing.assert_allclose(xt, (1 - s) * x0 + s * noise, atol=1e-6)
    np.testing.assert_array_equal(xt[3], noise[3])
    np.testing.assert_allclose(v, noise - x0, atol=1e-6)
    assert xt.dtype == v.dtype == np.float32
    np.testing.assert_array_equal(noisy_sample(x0, t, noise, sched, "flow"), xt)
    np.testing.assert_array_equal(noisy_sample(x0, t, noise, sched, "v"), q_sample(x0, t, noise, sched))
    for t_, coefs in S.sampling_plan(sched, "euler", 7):
        tt = np.full(4, t_)
        _, x0_hat = S.denoise_step(flow_sample(x0, tt, noise, 1000), training_target(x0, tt, noise, sched, "flow"),
                                   coefs, clip=False, prediction="flow")
        np.testing.assert_allclose(x0_hat, x0, atol=1e-5)


def test_timestep_draws():
    """uniform is the draw eps and v runs always made; logit-normal is floor(sigmoid(n) T): P(t <= k) = Phi(logit((k+1)/T))."""
    np.testing.assert_array_equal(draw_timesteps(np.random.default_rng(3), 50, 1000),
                                  np.random.default_rng(3).integers(0, 1000, 50))
    t = draw_timesteps(np.random.default_rng(4), 200_000, 1000, "logit-normal")
    assert t.dtype == np.int64 and 0 <= t.min() and t.max() <= 999
    from math import erf, log, sqrt
    for k in (99, 299, 499, 899):
        p = (k + 1) / 1000
        assert np.mean(t <= k) == pytest.approx(0.5 * (1 + erf(log(p / (1 - p)) / sqrt(2))), abs=4e-3), k
    with pytest.raises(ValueError, match="unknown timestep sampling 'cosine'; choose one of uniform, logit-normal"):
        draw_timesteps(np.random.default_rng(0), 2, 1000, "cosine")


def test_min_snr_on_the_flow_loss_is_min_snr_gamma_on_the_x0_error():
    sched, rng = make_schedule(), np.random.default_rng(5)
    t = np.array([0, 10, 100, 300, 600, 999])
    x0, noise = rng.uniform(-1, 1, (6, 3, 4, 4)), rng.standard_normal((6, 3, 4, 4))
    x0_hat = x0 + 0.1 * rng.standard_normal(x0.shape)
    s = flow_s(t, 1000).reshape(-1, 1, 1, 1)
    xt = flow_sample(x0, t, noise, 1000)
    err = (((xt - x0_hat) / s - training_target(x0, t, noise, sched, "flow")) ** 2).sum(axis=(1, 2, 3))
    want = np.minimum(((1 - s[:, 0, 0, 0]) / s[:, 0, 0, 0]) ** 2, 5.0) * ((x0_hat - x0) ** 2).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(loss_weight(t, sched, "flow", "min-snr") * err, want, rtol=1e-5, atol=1e-12)
    assert loss_weight(t, sched, "flow", "min-snr")[-1] == 0.0, "s = 1 carries no x0 information"


def test_batch_at_for_flow_with_flips():
    """A flow batch is x_t = (1 - s) x0 + s eps and v = eps - x0 of dataset images (mirrored ones with hflip, about
    half); the draws are the seed's, and hflip changes nothing else."""
    ds, sched = D.load_dataset("shapes", size=8), make_schedule()
    args = (3, 1, ds, 400, sched, 0.1, 6, "flow", "logit-normal")
    xt, t, v, y = train.batch_at(*args)
    for a, b in zip((xt, t, v, y), train.batch_at(*args)):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng([1, 3])
    x0 = ds.images[rng.integers(0, len(ds), 400)]
    s = flow_s(t, 1000)[:, None, None, None]
    np.testing.assert_allclose(xt - s * v, x0, atol=1e-5)
    fxt, ft, fv, fy = train.batch_at(*args, hflip=True)
    np.testing.assert_array_equal(ft, t)
    np.testing.assert_array_equal(fy, y)
    fx0 = fxt - s * fv
    same, mirrored = (np.abs(fx0 - x0).max(axis=(1, 2, 3)) < 1e-5), (np.abs(fx0 - x0[..., ::-1]).max(axis=(1, 2, 3)) < 1e-5)
    assert (same | mirrored).all() and 0.4 < np.mean(mirrored & ~same) < 0.6
    np.testing.assert_allclose(fv + fx0, v + x0, atol=1e-5)   # the same noise


# ----------------------------------------------------------------------------
# Euler and Heun
# ----------------------------------------------------------------------------

def gaussian_flow(mu, sd):
    """For data N(mu, sd^2) per pixel: the exact velocity E[eps - x0 | x_s], and where the ODE takes x1 (at s = 1) at s.
    x_s ~ N((1 - s) mu, r^2), r^2 = (1 - s)^2 sd^2 + s^2; the ODE keeps u = (x - (1 - s) mu) / r fixed."""
    r = lambda s: np.sqrt((1 - s) ** 2 * sd ** 2 + s ** 2)  # noqa: E731

    def v_fn(x, t, y=None):
        s = flow_s(t, 1000).reshape(-1, *[1] * (x.ndim - 1))
        return -mu + (s - (1 - s) * sd ** 2) / r(s) ** 2 * (x - (1 - s) * mu)
    return v_fn, lambda x1, s: (1 - s) * mu + r(s) * x1


def test_flow_plans():
    sched = make_schedule()
    euler, heun = S.sampling_plan(sched, "euler", 10), S.sampling_plan(sched, "heun", 10)
    ts = list(S.timesteps(sched, 10))
    assert [t for t, _ in euler] == ts and len(heun) == 2 * 10 - 1   # heun: 2 steps - 1 model calls
    assert [t for t, _ in heun] == [ts[0]] + [t for t in ts[1:] for _ in range(2)]
    assert all(c[5] == 0 for _, c in euler + heun), "ODE steps draw no noise"
    assert euler[-1][1][2] == 1.0 and euler[-1][1][4] == 0.0, "the last step lands on x0"
    with pytest.raises(ValueError, match="heun is deterministic"):
        S.sampling_plan(sched, "heun", 10, eta=0.5)


def test_a_one_point_flow_is_recovered_by_both():
    """Straight paths: the exact velocity (x - x0) / s of a one-point distribution takes any step count to x0."""
    x0 = np.random.default_rng(0).uniform(-0.9, 0.9, (2, 3, 4, 4))
    v_fn = lambda x, t, y: (x - x0) / flow_s(t, 1000)[:, None, None, None]  # noqa: E731
    for sampler in ("euler", "heun"):
        for steps in (1, 3, 20):
            out = S.sample(v_fn, x0.shape, make_schedule(), sampler, steps, seed=2, prediction="flow")
            np.testing.assert_allclose(out, x0, atol=1e-5, err_msg=f"{sampler} {steps}")


def test_heun_is_second_order_and_euler_first():
    """On Gaussian data (curved paths when sd != 1), float64, nested grids of 37, 111, 333 steps (999 = 27 * 37 = 9 * 111
    = 3 * 333): the error against the exact ODE at s = 1 / T (t = 0, before the last step, an Euler step for both)
    shrinks ~9x per 3x steps for Heun, ~3x for Euler; and at s = 0 Heun beats Euler at equal model calls."""
    rng = np.random.default_rng(1)
    mu, sd, x1 = rng.uniform(-0.5, 0.5, (1, 4, 4)), rng.uniform(0.2, 0.6, (1, 4, 4)), rng.standard_normal((3, 1, 4, 4))
    v_fn, ode = gaussian_flow(mu, sd)
    sched = make_schedule()

    def error(sampler, steps, last=True):
        x, x0 = x1, np.zeros_like(x1)
        plan = S.sampling_plan(sched, sampler, steps)
        for t, coefs in plan if last else plan[:-1]:
            x, x0 = S.denoise_step(x, v_fn(x, np.array([t])), coefs, clip=False, x0_prev=x0, prediction="flow")
        return np.abs(x - ode(x1, 0.0 if last else 1 / sched.T)).max()

    for sampler, order in (("heun", 2.0), ("euler", 1.0)):
        e = [error(sampler, n, last=False) for n in (38, 112, 334)]
        orders = np.log(np.array(e[:-1]) / e[1:]) / np.log(3)
        assert np.all(np.abs(orders - order) < 0.2), (sampler, e, orders)
    assert error("heun", 10) < 0.3 * error("euler", 19)   # 19 model calls each


def test_a_flow_model_refuses_the_diffusion_samplers_and_back():
    fn = lambda x, t, y: 0 * x  # noqa: E731
    for backend in (S, TS):
        with pytest.raises(ValueError, match=r"sampler ddim does not apply to a rectified-flow model \(prediction "
                                             r"'flow'\); choose one of euler, heun"):
            backend.sample(fn, (1, 1, 2, 2), make_schedule(), "ddim", 3, prediction="flow")
        with pytest.raises(ValueError, match=r"sampler heun does not apply to a diffusion model \(prediction 'v'\); "
                                             r"choose one of ddim, ddpm, dpmpp2m"):
            backend.sample(fn, (1, 1, 2, 2), make_schedule(), "heun", 3, prediction="v")
    assert (S.default_sampler("flow"), S.default_sampler("eps"), S.default_sampler("v")) == ("euler", "ddim", "ddim")


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_tinygrad_flow_samplers_match_numpy_with_the_same_seed(sampler):
    # the model and batch of the flow run's grid below (shapes: 6 classes, depth=1; 4 images): tinygrad compiles once
    cfg = replace(PRESETS["tokenfree-tiny"], prediction="flow", depth=1, num_classes=6)
    p = random_params(cfg, 5)
    pt = to_tensors(p)
    sched, shape, y = make_schedule(), (4, 3, 8, 8), np.arange(4) % cfg.num_classes
    kw = dict(seed=7, y=y, guidance=2.0, null_class=cfg.null_class, prediction="flow")
    ref = S.sample(lambda x, t, y: tokenfree.forward(p, x, t, y, cfg), shape, sched, sampler, 5, **kw)
    out = TS.sample(lambda x, t, y: tg_tokenfree.forward(pt, x, t, y, cfg), shape, sched, sampler, 5, **kw)
    assert np.abs(ref).max() > 0.1 and np.abs(ref).max() <= 1.0
    assert_close(ref, out, atol=5e-4, what=sampler)
    x, eps, x0_prev = (np.random.default_rng(i).standard_normal((2, 3, 4, 4)).astype(np.float32) for i in range(3))
    for _, coefs in S.sampling_plan(sched, sampler, 5):   # every step, unclipped too
        for clip in (True, False):
            a = S.denoise_step(x, eps, coefs, None, clip, x0_prev, "flow")
            b = TS.denoise_step(Tensor(x), Tensor(eps), Tensor(coefs.astype(np.float32)), None, clip, Tensor(x0_prev), "flow")
            assert_close(a[0], b[0].numpy(), what=f"{sampler} x")
            assert_close(a[1], b[1].numpy(), what=f"{sampler} x0")


# ----------------------------------------------------------------------------
# A flow run, end to end
# ----------------------------------------------------------------------------

TINY = ["--preset", "tokenfree-tiny", "--size", "8", "--batch", "2", "--lr", "3e-3", "--warmup", "5",
        "--sample-n", "4", "--sample-steps", "3", "--ckpt-every", "0", "--sample-every", "0", "--set", "depth=1"]


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    args = train.build_parser().parse_args(TINY + ["--out", str(out), "--steps", "12", "--prediction", "flow",
                                                   "--hflip", "--lr-decay", "cosine"])
    return out, train.train(args)


def test_a_flow_run_trains_and_both_clis_sample_its_checkpoint(flow_run, capsys):
    out, summary = flow_run
    assert summary["step"] == 12 and np.isfinite(summary["loss"]) and summary["grid"].endswith("samples_000012.png")
    from numpy_ref.weights import read_file
    _, cfg, meta = read_file(out / "ckpt.safetensors")
    assert cfg.prediction == "flow"
    assert {k: meta["run"][k] for k in ("loss_weight", "timestep_sampling", "hflip", "lr_decay")} == dict(
        loss_weight="none", timestep_sampling="logit-normal", hflip=True, lr_decay="cosine")
    lrs = [json.loads(line)["lr"] for line in open(out / "log.jsonl")]
    assert lrs[5] == pytest.approx(3e-3) and lrs[-1] < 3e-4 and np.all(np.diff(lrs[5:]) < 0), lrs
    capsys.readouterr()
    for sampler in ([], ["--sampler", "heun"]):
        # 4 images with guidance: the shape of the run's grid, so tinygrad reuses its kernels
        flags = ["--ckpt", str(out / "ckpt.safetensors"), "--steps", "3", "--n", "4", "--seed", "1", *sampler]
        np_sample.main(flags + ["--out", str(out / "np.png"), "--npy", str(out / "np.npy")])
        assert ("heun" if sampler else "euler") + " 3 steps" in capsys.readouterr().out
        tg_sample.main(flags + ["--out", str(out / "tg.png"), "--npy", str(out / "tg.npy"), "--device", "CPU"])
        a, b = np.load(out / "np.npy"), np.load(out / "tg.npy")
        assert a.shape == (4, 3, 8, 8) and np.isfinite(a).all() and a.std() > 0.05
        np.testing.assert_allclose(b, a, atol=2e-3)


def test_flow_mismatch_and_flag_errors(flow_run, tmp_path, capsys):
    ckpt = str(flow_run[0] / "ckpt.safetensors")
    base = ["--ckpt", ckpt, "--steps", "3", "--n", "2", "--out", str(tmp_path / "g.png")]
    for main in (np_sample.main, tg_sample.main):
        assert cli_fails(capsys, main, base + ["--sampler", "ddim"]) == (
            "error: --sampler ddim does not apply to a rectified-flow model (prediction 'flow'); "
            "choose one of euler, heun")
    assert "--eta must be 0 for --sampler euler" in cli_fails(capsys, np_sample.main, base + ["--eta", "0.5"])
    assert cli_fails(capsys, train.main, TINY + ["--out", str(tmp_path / "r"), "--timestep-sampling", "logit-normal"]
                     ) == "error: --timestep-sampling logit-normal is for --prediction flow; --prediction v trains on uniform t"
