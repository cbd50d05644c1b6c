"""Samplers: DDPM ancestral and DDIM(eta) with classifier-free guidance, on any eps predictor.

Every sampler is a plan (a list of timesteps with six step coefficients, made
once here in float64 and shared with tinygrad_impl) and one update rule,
`denoise_step`, which both backends implement:

    x0   = clip((x - s1 * eps) / s0)          s0 = sqrt(abar_t), s1 = sqrt(1 - abar_t)
    eps' = (x - s0 * x0) / s1                 (eps made consistent with the clipped x0)
    x'   = a * x0 + b * x + c * eps' + sigma * z
"""
import numpy as np

SAMPLERS = ("ddim", "ddpm")


def timesteps(sched, steps):
    """`steps` distinct timesteps from T-1 down to 0 (evenly spaced)."""
    if not 1 <= steps <= sched.T:
        raise ValueError(f"steps must be in 1..{sched.T}, got {steps}")
    return np.unique(np.round(np.linspace(0, sched.T - 1, steps)).astype(np.int64))[::-1]


def sampling_plan(sched, sampler="ddim", steps=50, eta=0.0):
    """[(t, coefs)] with coefs = float64 array (s0, s1, a, b, c, sigma) per step, t descending."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    ts = timesteps(sched, steps)
    plan = []
    for i, t in enumerate(ts):
        ab = sched.abar[t]
        ab_prev = sched.abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
        s0, s1 = np.sqrt(ab), np.sqrt(1.0 - ab)
        if sampler == "ddim":
            sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
            a, b, c = np.sqrt(ab_prev), 0.0, np.sqrt(max(1 - ab_prev - sigma ** 2, 0.0))
        else:   # DDPM posterior q(x_prev | x_t, x0), with the betas of the (possibly respaced) chain
            beta = 1.0 - ab / ab_prev
            a = np.sqrt(ab_prev) * beta / (1 - ab)
            b = np.sqrt(1.0 - beta) * (1 - ab_prev) / (1 - ab)
            c, sigma = 0.0, np.sqrt(beta * (1 - ab_prev) / (1 - ab))
        plan.append((int(t), np.array([s0, s1, a, b, c, sigma], dtype=np.float64)))
    return plan


def denoise_step(x, eps, coefs, noise=None, clip=True):
    """One reverse step: x, eps, noise (B, C, H, W), coefs (6,) -> x at the previous timestep."""
    s0, s1, a, b, c, sigma = (float(v) for v in coefs)
    x0 = (x - s1 * eps) / s0
    if clip:
        x0 = np.clip(x0, -1.0, 1.0)
    eps = (x - s0 * x0) / s1
    out = a * x0 + b * x + c * eps
    if sigma > 0:
        out = out + sigma * noise
    return out.astype(x.dtype)


def guided_eps(eps_fn, x, t, y=None, guidance=1.0, null_class=None):
    """Classifier-free guidance: eps_u + w (eps_c - eps_u), both halves in one batch of 2B.
    eps_fn(x (B,C,H,W), t (B,), y (B,) or None) -> (B,C,H,W); with y None or w == 1 it is called once."""
    B = len(x)
    tt = np.full(B, t, dtype=np.int64)
    if y is None or guidance == 1.0:
        return eps_fn(x, tt, y)
    if null_class is None:
        raise ValueError("classifier-free guidance needs the null class id (cfg.null_class)")
    y = np.asarray(y, dtype=np.int64)
    e = eps_fn(np.concatenate([x, x]), np.concatenate([tt, tt]), np.concatenate([y, np.full(B, null_class)]))
    eps_c, eps_u = e[:B], e[B:]
    return eps_u + guidance * (eps_c - eps_u)


def sample(eps_fn, shape, sched, sampler="ddim", steps=50, eta=0.0, seed=0, y=None, guidance=1.0,
           null_class=None, clip=True, progress=None):
    """Draw images (B, C, H, W) in [-1, 1]. Noise comes from np.random.default_rng(seed): the initial
    x_T first, then one draw per step whose sigma > 0, so a seed gives the same images everywhere.
    progress: optional wrapper over the plan (e.g. tqdm)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    plan = sampling_plan(sched, sampler, steps, eta)
    for t, coefs in (progress(plan) if progress else plan):
        eps = guided_eps(eps_fn, x, t, y, guidance, null_class)
        noise = rng.standard_normal(shape).astype(np.float32) if coefs[5] > 0 else None
        x = denoise_step(x, eps, coefs, noise, clip)
    return x
