"""Samplers in tinygrad: a port of numpy_ref/samplers.py. The plan (timesteps and step coefficients)
and every random draw come from numpy_ref, so a seed gives the same images in both backends. The flow samplers
(euler, heun) are plans of the same step, with x0 read from a flow's v (numpy_ref/samplers.py docstring)."""
import numpy as np
from tinygrad import Tensor, TinyJit

# shared with numpy_ref: the plan, and the noise (RowNoise: one generator per image)
from numpy_ref.samplers import (SAMPLERS, RowNoise, check_sampler, default_sampler, noise_source,  # noqa: F401
                                sampling_plan, samplers_for, timesteps)


def denoise_step(x, eps, coefs, noise=None, clip=True, x0_prev=None, prediction="eps"):
    """One reverse step: x, eps, noise, x0_prev (B, C, H, W) Tensors, coefs (7,) Tensor ->
    (x at the previous timestep, x0). coefs is a Tensor so one jitted step serves every timestep and
    every sampler; noise and x0_prev (the x0 this returned one step before) may be None when sigma, d are 0.
    eps is the model's output: eps, or v when prediction is "v" or "flow"."""
    s0, s1, a, b, c, sigma, d = (coefs[i] for i in range(7))
    x0 = s0 * x - s1 * eps if prediction == "v" else x - s1 * eps if prediction == "flow" else (x - s1 * eps) / s0
    if clip:
        x0 = x0.clip(-1.0, 1.0)
    eps = (x - s0 * x0) / s1
    out = a * x0 + b * x + c * eps
    if x0_prev is not None:
        out = out + d * x0_prev
    return (out if noise is None else out + sigma * noise), x0


def guided_eps(eps_fn, x, t, y=None, guidance=1.0, null_class=None):
    """Classifier-free guidance eps_u + w (eps_c - eps_u) in one batch of 2B.
    x (B,C,H,W), t (B,) Tensor, y (B,) class ids or (B, L) token ids Tensor or None, guidance a float or a 0-d
    Tensor. The null condition of class ids is null_class; of token ids the empty prompt, all PAD = 0 (y.zeros_like(),
    which works inside a JIT)."""
    if y is None:
        return eps_fn(x, t, y)
    B = x.shape[0]
    if y.ndim == 2:
        null = y.zeros_like()
    elif null_class is None:
        raise ValueError("classifier-free guidance needs the null class id (cfg.null_class)")
    else:
        null = Tensor.full((B,), null_class, dtype=y.dtype, device=y.device)
    e = eps_fn(x.cat(x), t.cat(t), y.cat(null))
    eps_c, eps_u = e[:B], e[B:]
    return eps_u + guidance * (eps_c - eps_u)


def make_step(eps_fn, guided, null_class=None, clip=True, prediction="eps", jit=True):
    """The whole reverse step (model, guidance, update) as one function of Tensors, a TinyJit with jit: keep it and
    pass it to every sample call of one batch shape, so the kernels are captured once for all the batches."""
    def step(x, t, coefs, noise, x0_prev, y_t, w_t):
        eps = guided_eps(eps_fn, x, t, y_t, w_t, null_class) if guided else eps_fn(x, t, y_t)
        x, x0 = denoise_step(x, eps, coefs, noise, clip, x0_prev, prediction)
        x.realize(x0)
        return x, x0
    return TinyJit(step) if jit else step


def sample(eps_fn, shape, sched, sampler="ddim", steps=50, eta=0.0, seed=0, y=None, guidance=1.0,
           null_class=None, clip=True, progress=None, device=None, jit=True, prediction="eps", step_fn=None):
    """Draw images (B, C, H, W) as a NumPy array; the same draws, in the same order, as numpy_ref.samplers.sample
    (seed: an int or a noise source such as RowNoise). eps_fn(x, t, y) works on Tensors. step_fn: a make_step of
    the same eps_fn, guidance on or off and shape, reused across calls; None makes a new one for this call."""
    check_sampler(sampler, prediction)
    rng = noise_source(seed)
    x = Tensor(rng.standard_normal(shape).astype(np.float32), device=device).realize()
    plan = sampling_plan(sched, sampler, steps, eta)
    guided = y is not None and guidance != 1.0
    y_t = None if y is None else Tensor(np.asarray(y, dtype=np.int32), device=device).realize()
    w_t = Tensor([float(guidance)], device=device).realize()
    zeros = np.zeros(shape, np.float32)
    step_fn = step_fn or make_step(eps_fn, guided, null_class, clip, prediction, jit)
    x0 = Tensor(zeros, device=device).realize()
    for t, coefs in (progress(plan) if progress else plan):
        noise = rng.standard_normal(shape).astype(np.float32) if coefs[5] > 0 else zeros
        t_t = Tensor(np.full(shape[0], t, np.float32), device=device)
        x, x0 = step_fn(x, t_t, Tensor(coefs.astype(np.float32), device=device), Tensor(noise, device=device),
                        x0, y_t, w_t)
        x, x0 = x.clone().realize(), x0.clone().realize()   # clone: the jit reuses its output buffers
    return x.numpy()
