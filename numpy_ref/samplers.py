"""Samplers: DDPM ancestral, DDIM(eta) and DPM-Solver++(2M) for eps / v models; Euler and Heun ODE steps for
rectified-flow models; all with classifier-free guidance.

Every sampler is a plan (a list of timesteps with seven step coefficients, made
once here in float64 and shared with tinygrad_impl) and one update rule,
`denoise_step`, which both backends implement:

    x0   = clip((x - s1 * eps) / s0)          s0 = sqrt(abar_t), s1 = sqrt(1 - abar_t)
           (a v-predicting model: x0 = clip(s0 * x - s1 * v), no division by s0, which is ~0.01 at t = T - 1)
    eps' = (x - s0 * x0) / s1                 (eps made consistent with the clipped x0)
    x'   = a * x0 + b * x + c * eps' + d * x0_prev + sigma * z

x0_prev is the x0 of the step before (zeros at the first step); only the multistep
DPM-Solver++(2M) uses it (d != 0), so denoise_step returns (x', x0) for the next step.

DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2), with alpha = s0,
sigma_t = s1 and lambda = log(alpha / sigma_t), from t to the next time t' with
h = lambda' - lambda and r = h_prev / h (h_prev: the step before):

    x' = (sigma_t' / sigma_t) x + alpha' (1 - e^-h) ((1 + 1/(2r)) x0 - 1/(2r) x0_prev)

so b = sigma_t' / sigma_t, a = alpha' (1 - e^-h) (1 + 1/(2r)), d = -alpha' (1 - e^-h) / (2r).
Three steps are first order, d = 0, i.e. DPM-Solver++(1), which is exactly DDIM with eta = 0:
the first (no x0_prev yet), the one into the last timestep t = 0 and the final one from t = 0
to abar = 1 (h infinite; x' = x0). The step into t = 0 is the "lower order final" of the
DPM-Solver code: on these time-uniform steps it spans a large part of lambda (the linear
schedule's lambda goes 1.0 -> 4.6 over t = 111 -> 0), and extrapolating x0 across it
(r = h_prev / h = 0.21 for 10 steps) made 10-25-step samples of Gaussian data (std 0.3-1)
worse than DDIM's; first order there, they are better at every step count (tests/test_samplers.py).

Rectified flow (prediction "flow": the model outputs v = eps - x0 on x = (1 - s) x0 + s eps, s = (t + 1) / T,
numpy_ref/schedule.py) runs the ODE dx/ds = v from s = 1 down to s = 0 through the s of the same timesteps, then 0.
It is the same step with s0 = 1 - s, s1 = s and x0 = clip(x - s v), so eps' - x0 = (x - x0) / s is v made consistent
with the clipped x0. Over h = s' - s < 0:

    Euler  x' = x + h v                       a = 1 - s', c = s'   ((1 - s') x0 + s' eps' is x + h v)
    Heun   x~ = x + h v, then x' = x + h (v + v~) / 2, v~ the velocity at (x~, s')

Heun is two plan entries per step, each one model call: the Euler step to x~ (at t), then at t' the correction
x' = x~ + h / 2 (v~ - v) = x~ + h / (2 s') (x0_prev - x0) (both v read at x~: v = (x~ - x0_prev) / s'), i.e.
b = 1, a = -h / (2 s'), d = h / (2 s'). Its last step, into s = 0 (t = -1, which no model takes), is Euler, so
Heun with `steps` steps calls the model 2 steps - 1 times.
"""
import numpy as np

DIFFUSION_SAMPLERS = ("ddim", "ddpm", "dpmpp2m")   # eps and v models
FLOW_SAMPLERS = ("euler", "heun")                   # flow models
SAMPLERS = DIFFUSION_SAMPLERS + FLOW_SAMPLERS


def samplers_for(prediction):
    """The samplers that can read a model of this prediction; the first is its default."""
    return FLOW_SAMPLERS if prediction == "flow" else DIFFUSION_SAMPLERS


def default_sampler(prediction):
    """ddim for eps and v models, euler for flow models (one model call per step, as ddim)."""
    return samplers_for(prediction)[0]


def check_sampler(sampler, prediction, what="sampler"):
    """ValueError when `sampler` is unknown or cannot read a model of `prediction` (a flow model's v is no eps);
    `what` names it in the message (a CLI: "--sampler")."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler not in samplers_for(prediction):
        kind = "rectified-flow" if prediction == "flow" else "diffusion"
        raise ValueError(f"{what} {sampler} does not apply to a {kind} model (prediction {prediction!r}); "
                         f"choose one of {', '.join(samplers_for(prediction))}")


def timesteps(sched, steps):
    """`steps` distinct timesteps from T-1 down to 0 (evenly spaced); a schedule with spacing "trailing" (a
    step-distilled student's) gives numpy_ref.distill.student_timesteps instead: T-1 down to T/steps - 1."""
    if not 1 <= steps <= sched.T:
        raise ValueError(f"steps must be in 1..{sched.T}, got {steps}")
    if getattr(sched, "spacing", "even") == "trailing":
        from .distill import student_timesteps
        return student_timesteps(sched.T, steps)
    return np.unique(np.round(np.linspace(0, sched.T - 1, steps)).astype(np.int64))[::-1]


def log_snr_half(ab):
    """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2 (infinite at abar = 1)."""
    return 0.5 * (np.log(ab) - np.log1p(-ab)) if ab < 1.0 else np.inf


def flow_plan(sched, sampler="euler", steps=50):
    """The plan of a flow sampler (module docstring): Euler, or Heun (an Euler entry and a correction per step)."""
    ts = timesteps(sched, steps)
    s = np.append((ts + 1.0) / sched.T, 0.0)            # flow_s of each timestep, then the data at s = 0
    euler = lambda i: np.array([1 - s[i], s[i], 1 - s[i + 1], 0.0, s[i + 1], 0.0, 0.0])  # noqa: E731
    plan = []
    for i, t in enumerate(ts):
        plan.append((int(t), euler(i)))
        if sampler == "heun" and i + 1 < len(ts):         # correct at t' = ts[i + 1]
            h, s1 = s[i + 1] - s[i], s[i + 1]
            plan.append((int(ts[i + 1]), np.array([1 - s1, s1, -h / (2 * s1), 1.0, 0.0, 0.0, h / (2 * s1)])))
    return plan


def sampling_plan(sched, sampler="ddim", steps=50, eta=0.0):
    """[(t, coefs)] with coefs = float64 array (s0, s1, a, b, c, sigma, d) per model call, t descending (a Heun
    correction repeats the t of the next step). sigma (index 5) scales fresh noise, d (index 6) the previous x0."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler in ("dpmpp2m", *FLOW_SAMPLERS) and eta != 0.0:
        raise ValueError(f"{sampler} is deterministic (an ODE solver): eta must be 0, got {eta}")
    if sampler in FLOW_SAMPLERS:
        return flow_plan(sched, sampler, steps)
    ts = timesteps(sched, steps)
    plan = []
    for i, t in enumerate(ts):
        ab = sched.abar[t]
        ab_prev = sched.abar[ts[i + 1]] if i + 1 < len(ts) else 1.0
        s0, s1 = np.sqrt(ab), np.sqrt(1.0 - ab)
        d = 0.0
        if sampler == "dpmpp2m":   # alpha' (1 - e^-h) = alpha' - sigma_t' alpha / sigma_t, finite at abar' = 1 too
            a = np.sqrt(ab_prev) - np.sqrt(1.0 - ab_prev) * s0 / s1
            b, c, sigma = np.sqrt(1.0 - ab_prev) / s1, 0.0, 0.0
            if 0 < i < len(ts) - 2:   # second order once a previous x0 exists, but not into t = 0 nor from there
                h = log_snr_half(ab_prev) - log_snr_half(ab)
                r = (log_snr_half(ab) - log_snr_half(sched.abar[ts[i - 1]])) / h
                a, d = a * (1.0 + 0.5 / r), -a * 0.5 / r
        elif sampler == "ddim":
            sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
            a, b, c = np.sqrt(ab_prev), 0.0, np.sqrt(max(1 - ab_prev - sigma ** 2, 0.0))
        else:   # DDPM posterior q(x_prev | x_t, x0), with the betas of the (possibly respaced) chain
            beta = 1.0 - ab / ab_prev
            a = np.sqrt(ab_prev) * beta / (1 - ab)
            b = np.sqrt(1.0 - beta) * (1 - ab_prev) / (1 - ab)
            c, sigma = 0.0, np.sqrt(beta * (1 - ab_prev) / (1 - ab))
        plan.append((int(t), np.array([s0, s1, a, b, c, sigma, d], dtype=np.float64)))
    return plan


def denoise_step(x, eps, coefs, noise=None, clip=True, x0_prev=None, prediction="eps"):
    """One reverse step: x, eps, noise, x0_prev (B, C, H, W), coefs (7,) -> (x at the previous timestep, x0).
    eps is the model's output: eps, or v when prediction is "v" or "flow". noise is used when sigma > 0, x0_prev
    (the x0 this returned one step before) when d != 0."""
    s0, s1, a, b, c, sigma, d = (float(v) for v in coefs)
    x0 = s0 * x - s1 * eps if prediction == "v" else x - s1 * eps if prediction == "flow" else (x - s1 * eps) / s0
    if clip:
        x0 = np.clip(x0, -1.0, 1.0)
    eps = (x - s0 * x0) / s1
    out = a * x0 + b * x + c * eps
    if d != 0:
        if x0_prev is None:
            raise ValueError("this step (d != 0, a dpmpp2m step) needs x0_prev: the x0 that the step before returned")
        out = out + d * x0_prev
    if sigma > 0:
        out = out + sigma * noise
    return out.astype(x.dtype), x0.astype(x.dtype)


def guided_eps(eps_fn, x, t, y=None, guidance=1.0, null_class=None):
    """Classifier-free guidance: eps_u + w (eps_c - eps_u), both halves in one batch of 2B (the same for v and a
    flow's v: eps is affine in v at a fixed x_t, so guiding v guides eps).
    eps_fn(x (B,C,H,W), t (B,), y) -> (B,C,H,W); with y None or w == 1 it is called once.
    y: class ids (B,), whose null condition is null_class, or token ids (B, L) of a text model, whose null condition
    is the empty prompt, all PAD (id 0; configs.null_condition), so null_class is not needed for them."""
    B = len(x)
    tt = np.full(B, t, dtype=np.int64)
    if y is None or guidance == 1.0:
        return eps_fn(x, tt, y)
    y = np.asarray(y, dtype=np.int64)
    if y.ndim == 2:     # token ids: the empty prompt is all PAD = 0
        null = np.zeros_like(y)
    elif null_class is None:
        raise ValueError("classifier-free guidance needs the null class id (cfg.null_class)")
    else:
        null = np.full(B, null_class)
    e = eps_fn(np.concatenate([x, x]), np.concatenate([tt, tt]), np.concatenate([y, null]))
    eps_c, eps_u = e[:B], e[B:]
    return eps_u + guidance * (eps_c - eps_u)


class RowNoise:
    """Noise drawn image by image: row i of a batch that starts at image `first` of a run draws from its own
    np.random.default_rng([seed, first + i]). An image's noise then depends on the seed and its index in the run
    only, not on how the run is cut into batches (one generator per batch would tie it to the batch size)."""

    def __init__(self, seed, first, rows):
        self.rngs = [np.random.default_rng([seed, i]) for i in range(first, first + rows)]

    def standard_normal(self, shape):
        """(rows, *image shape) float64, each row the next draw of its image's generator"""
        if shape[0] != len(self.rngs):
            raise ValueError(f"RowNoise has {len(self.rngs)} rows, asked for a batch of {shape[0]}")
        return np.stack([rng.standard_normal(shape[1:]) for rng in self.rngs])


def noise_source(seed):
    """What sample draws from: np.random.default_rng(seed) for an int (or a list of ints) seed, the whole batch from
    one generator; anything with standard_normal(shape), e.g. a RowNoise, as it is."""
    return seed if hasattr(seed, "standard_normal") else np.random.default_rng(seed)


def sample(eps_fn, shape, sched, sampler="ddim", steps=50, eta=0.0, seed=0, y=None, guidance=1.0,
           null_class=None, clip=True, progress=None, prediction="eps"):
    """Draw images (B, C, H, W) in [-1, 1]. Noise comes from noise_source(seed): the initial x_T first, then
    one draw per step whose sigma > 0, so a seed gives the same images everywhere. progress: optional wrapper over
    the plan (e.g. tqdm). prediction: what eps_fn returns, "eps", "v" or "flow" (check_sampler: which samplers apply).
    y: class ids (B,), token ids (B, L) of a text model (guided against the empty prompt), or None."""
    check_sampler(sampler, prediction)
    rng = noise_source(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    plan = sampling_plan(sched, sampler, steps, eta)
    x0 = np.zeros(shape, np.float32)
    for t, coefs in (progress(plan) if progress else plan):
        eps = guided_eps(eps_fn, x, t, y, guidance, null_class)
        noise = rng.standard_normal(shape).astype(np.float32) if coefs[5] > 0 else None
        x, x0 = denoise_step(x, eps, coefs, noise, clip, x0_prev=x0, prediction=prediction)
    return x
