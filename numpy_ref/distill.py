"""Distillation formulas shared by both backends (tinygrad_impl/distill.py trains with them).

Every function here is plain arithmetic (+ - * / ** and .mean()), so it takes NumPy arrays or tinygrad Tensors
alike: tinygrad_impl imports these functions, it does not copy them. Coefficients broadcast over images, e.g.
alpha (B, 1, 1, 1) against x (B, C, H, W).

Notation (DESIGN.md 4, 7): x_t = alpha_t x_0 + sigma_t eps, with alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t) for
a diffusion model (eps or v), and alpha = 1 - s, sigma = s, s = (t + 1) / T for a rectified-flow one. The clean end
t = -1 has alpha = 1, sigma = 0 (the sampler's last step goes there).

Progressive distillation (Salimans & Ho 2022, arXiv 2202.00512, Algorithm 2): the student learns in one DDIM step
from t to t'' what the teacher does in two, t -> t' -> t''. With x^_t the teacher's x0 at (z_t, t):

    z_t'  = alpha' x^_t  + sigma' / sigma (z_t - alpha x^_t)          (one DDIM step, eta 0; a flow's Euler step)
    z_t'' = alpha'' x^_t' + sigma'' / sigma' (z_t' - alpha' x^_t')
    x~    = (z_t'' - sigma'' / sigma z_t) / (alpha'' - sigma'' / sigma alpha)

x~ is the x0 that takes z_t to z_t'' in ONE DDIM step; the student's output target is the eps, v or flow velocity
that reads as x~ at z_t (output_from_x0). The loss is in x space with the paper's truncated-SNR weight
max(SNR_t, 1) (progressive_weight), so a 1-step student at t = T - 1 (SNR ~ 0) is still taught.

Knowledge distillation (SnapGen, arXiv 2412.09619; DESIGN.md 7): L = L_task + a |out_s - out_t|^2
+ b sum_l w(t) |P_l(f_s,l) - f_t,l|^2 / mean(f_t,l^2), with w(t) = kd_weight.

Step-distilled students sample on the "trailing" grid (student_timesteps): T - 1, T - 1 - T/N, ..., T/N - 1, so one
step starts at pure noise (the sampler's even grid puts a 1-step sample at t = 0), and the grid of N steps is every
other point of the grid of 2N: halving 16 -> 8 -> 4 -> 2 -> 1 keeps every student's steps on its teacher's.
"""
import numpy as np

# ----------------------------------------------------------------------------
# Timesteps and coefficients
# ----------------------------------------------------------------------------

def student_timesteps(T, steps):
    """The trailing grid of `steps` timesteps, descending: round(T - k T / steps) - 1, k = 0..steps-1 (int64).
    student_timesteps(T, 2n)[::2] == student_timesteps(T, n) for n a power of two (the same floats get rounded)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    return (np.round(T - np.arange(steps) * (T / steps)) - 1).astype(np.int64)


def progressive_pairs(T, steps):
    """(t, t_mid, t_next) int64 arrays (steps,) of a round that distills a 2*steps-step teacher into a steps-step
    student: student step k goes t[k] -> t_next[k] (-1: the clean end), the teacher's two steps pass t_mid[k]."""
    grid = np.append(student_timesteps(T, 2 * steps), -1)                   # (2 steps + 1,)
    return grid[0:-1:2], grid[1::2], grid[2::2]


def alpha_sigma(t, sched, prediction="eps"):
    """(alpha, sigma) float64 (B,) of integer timesteps t (B,) in -1..T-1; t = -1 is the clean end (1, 0)."""
    t = np.asarray(t, np.int64)
    if prediction == "flow":
        s = (t + 1.0) / sched.T
        return 1.0 - s, s
    abar = np.where(t < 0, 1.0, sched.abar[np.maximum(t, 0)])
    return np.sqrt(abar), np.sqrt(1.0 - abar)


# ----------------------------------------------------------------------------
# Reading a model's output (duck-typed: arrays or Tensors)
# ----------------------------------------------------------------------------

def x0_from_output(out, z, alpha, sigma, prediction="eps"):
    """The x0 a model output reads as at z: eps -> (z - sigma eps) / alpha, v -> alpha z - sigma v, flow -> z - s v
    (numpy_ref.samplers.denoise_step, before its clip)."""
    if prediction == "v":
        return alpha * z - sigma * out
    if prediction == "flow":
        return z - sigma * out
    return (z - sigma * out) / alpha


def output_from_x0(x0, z, alpha, sigma, prediction="eps"):
    """The model output that reads as x0 at z: eps = (z - alpha x0) / sigma; v = alpha eps - sigma x0; flow's
    velocity eps - x0. Inverse of x0_from_output (sigma > 0)."""
    eps = (z - alpha * x0) / sigma
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "flow":
        return eps - x0
    return eps


def ddim_step(z, x0, alpha, sigma, alpha_next, sigma_next):
    """One deterministic DDIM step (eta 0; a flow's Euler step): z_t' = alpha' x0 + sigma' (z - alpha x0) / sigma."""
    return alpha_next * x0 + sigma_next * (z - alpha * x0) / sigma


def one_step_x0(z, z_next, alpha, sigma, alpha_next, sigma_next):
    """x~: the x0 whose single DDIM step takes z (at alpha, sigma) to z_next (at alpha_next, sigma_next)."""
    r = sigma_next / sigma
    return (z_next - r * z) / (alpha_next - r * alpha)


# ----------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------

def progressive_weight(alpha, sigma):
    """Truncated-SNR weight max(alpha^2 / sigma^2, 1) of the x-space loss (arXiv 2202.00512, section 4): float64 (B,)."""
    return np.maximum(np.asarray(alpha) ** 2 / np.asarray(sigma) ** 2, 1.0)


def kd_weight(alpha, sigma):
    """The timestep-aware weight w(t) of feature distillation: sigma_t^2, the noise share of x_t (0 clean, 1 noise).
    Ours (SnapGen weighs by timestep, the form is our choice): the teacher's features carry the most the task target
    lacks where x_t is noisiest; near the clean end x_t itself tells the student nearly everything. float64 (B,)."""
    return np.asarray(sigma, np.float64) ** 2


def feature_loss(fs, ft):
    """|fs - ft|^2 / mean(ft^2) per sample: fs the projected student map, ft the teacher's (B, C, h, w), same shape
    -> (B,). Dividing by the teacher's mean square makes levels of any scale count alike."""
    d = ((fs - ft) ** 2).mean(axis=(1, 2, 3))
    return d / ((ft ** 2).mean() + 1e-6)


# ----------------------------------------------------------------------------
# The progressive-distillation target, with a NumPy teacher
# ----------------------------------------------------------------------------

def progressive_target(teacher_fn, z, t, t_mid, t_next, y, sched, prediction="eps", clip=True):
    """(x~ (B, C, H, W), the student's output target (B, C, H, W)) for z (B, C, H, W) at t (B,): two teacher DDIM
    steps t -> t_mid -> t_next (module docstring). teacher_fn(x, t, y) -> output (B, C, H, W); clip as the sampler
    clips the teacher's x0. The formula of tinygrad_impl.distill.progressive_target."""
    col = lambda a: np.asarray(a, np.float64).reshape(-1, 1, 1, 1)  # noqa: E731
    a, s = (col(v) for v in alpha_sigma(t, sched, prediction))
    am, sm = (col(v) for v in alpha_sigma(t_mid, sched, prediction))
    an, sn = (col(v) for v in alpha_sigma(t_next, sched, prediction))
    x0 = x0_from_output(teacher_fn(z, t, y), z, a, s, prediction)
    x0 = np.clip(x0, -1.0, 1.0) if clip else x0
    z_mid = ddim_step(z, x0, a, s, am, sm)
    x0_mid = x0_from_output(teacher_fn(z_mid.astype(np.float32), t_mid, y), z_mid, am, sm, prediction)
    x0_mid = np.clip(x0_mid, -1.0, 1.0) if clip else x0_mid
    z_next = ddim_step(z_mid, x0_mid, am, sm, an, sn)
    x_target = one_step_x0(z, z_next, a, s, an, sn)
    return x_target.astype(np.float32), output_from_x0(x_target, z, a, s, prediction).astype(np.float32)
