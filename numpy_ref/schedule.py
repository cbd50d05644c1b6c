"""Noise schedules (DDPM): betas, alphas, abar = prod(alphas), and the forward process q(x_t | x_0).
Rectified flow (prediction "flow"): the straight path x_t = (1 - s) x_0 + s eps from data (s = 0) to noise (s = 1);
the network takes the integer t and learns the velocity v = eps - x_0. Only T of the schedule is used."""
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Schedule:
    kind: str             # "linear" or "cosine"
    betas: np.ndarray     # (T,) float64
    alphas: np.ndarray    # (T,) 1 - betas
    abar: np.ndarray      # (T,) cumulative product of alphas, decreasing from ~1 to ~0
    spacing: str = "even"  # the samplers' timesteps: "even" (linspace), or "trailing" for a step-distilled student

    @property
    def T(self):
        return len(self.betas)


SPACINGS = ("even", "trailing")   # where samplers put their steps (numpy_ref.samplers.timesteps)


def make_schedule(kind="linear", T=1000, beta_start=1e-4, beta_end=0.02, spacing="even"):
    """linear: betas from beta_start to beta_end (DDPM); cosine: abar = cos^2 of a shifted ramp (Nichol & Dhariwal).
    spacing: where samplers put their steps (numpy_ref.samplers.timesteps)."""
    if T < 2:
        raise ValueError(f"schedule needs T >= 2 timesteps, got {T}")
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif kind == "cosine":
        s = 0.008
        f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    else:
        raise ValueError(f"unknown schedule {kind!r}; choose 'linear' or 'cosine'")
    alphas = 1.0 - betas
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose 'even' or 'trailing'")
    return Schedule(kind, betas, alphas, np.cumprod(alphas), spacing)


def q_sample(x0, t, noise, sched):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps: x0, noise (B, ...), t (B,) int -> (B, ...) in x0's dtype."""
    ab = sched.abar[np.asarray(t)].reshape(-1, *([1] * (x0.ndim - 1)))
    return (np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * noise).astype(x0.dtype)


PREDICTIONS = ("eps", "v", "flow")


def training_target(x0, t, noise, sched, prediction="eps"):
    """What the network learns to output at x_t: eps (the noise), v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
    (Salimans & Ho 2022, arXiv 2202.00512), or for "flow" the velocity eps - x_0 of the straight path (flow_sample).
    x0, noise (B, ...), t (B,) int -> (B, ...) in x0's dtype."""
    if prediction == "eps":
        return noise
    if prediction == "flow":
        return (noise - x0).astype(x0.dtype)
    if prediction != "v":
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    ab = sched.abar[np.asarray(t)].reshape(-1, *([1] * (x0.ndim - 1)))
    return (np.sqrt(ab) * noise - np.sqrt(1.0 - ab) * x0).astype(x0.dtype)


# Rectified flow's time: the integer t in 0..T-1 that the model takes stands for s = (t + 1) / T in (0, 1], so s = 1 is
# pure noise (t = T - 1), and the sampler's last step goes from s = 1/T (t = 0) to the data at s = 0.
def flow_s(t, T):
    """s = (t + 1) / T (float64) of integer timesteps t (B,) in 0..T-1."""
    return (np.asarray(t) + 1.0) / T


def flow_sample(x0, t, noise, T):
    """x_t = (1 - s) x_0 + s eps, s = flow_s(t, T): x0, noise (B, ...), t (B,) int -> (B, ...) in x0's dtype."""
    s = flow_s(t, T).reshape(-1, *([1] * (x0.ndim - 1)))
    return ((1.0 - s) * x0 + s * noise).astype(x0.dtype)


def noisy_sample(x0, t, noise, sched, prediction="eps"):
    """The x_t a model of `prediction` trains on: q_sample (eps, v) or the straight path flow_sample (flow)."""
    return flow_sample(x0, t, noise, sched.T) if prediction == "flow" else q_sample(x0, t, noise, sched)


TIMESTEP_SAMPLINGS = ("uniform", "logit-normal")


def draw_timesteps(rng, batch, T, kind="uniform"):
    """Training timesteps t (batch,) int64 in 0..T-1. "uniform": rng.integers(0, T). "logit-normal" (SD3, Esser et al.
    2024, arXiv 2403.03206): s = sigmoid(n), n ~ N(0, 1), and t = floor(s T), the t whose flow_s is the grid point
    just above s (more steps at mid noise, few at the ends)."""
    if kind == "uniform":
        return rng.integers(0, T, batch)
    if kind != "logit-normal":
        raise ValueError(f"unknown timestep sampling {kind!r}; choose one of {', '.join(TIMESTEP_SAMPLINGS)}")
    s = 1.0 / (1.0 + np.exp(-rng.standard_normal(batch)))
    return np.minimum(np.floor(s * T), T - 1).astype(np.int64)


def snr(sched):
    """Signal-to-noise ratio abar / (1 - abar) per timestep, (T,)."""
    return sched.abar / (1.0 - sched.abar)


LOSS_WEIGHTS = ("none", "min-snr")


def loss_weight(t, sched, prediction="eps", kind="none", gamma=5.0):
    """Per-sample weight of the training MSE, t (B,) int -> (B,) float32.
    "none": ones. "min-snr": Min-SNR-gamma (Hang et al. 2023, arXiv 2303.09556): the x0 error weighted by
    min(SNR_t, gamma), i.e. min(SNR, gamma) / SNR on the eps loss and min(SNR, gamma) / (SNR + 1) on the v loss,
    so the many easy low-noise steps stop dominating the gradient. On the flow loss (x0 = x_t - s v, SNR =
    ((1 - s) / s)^2) it is min(SNR, gamma) s^2, which is 0 at s = 1."""
    if kind == "none":
        return np.ones(len(np.asarray(t)), np.float32)
    if kind != "min-snr":
        raise ValueError(f"unknown loss weight {kind!r}; choose one of {', '.join(LOSS_WEIGHTS)}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    if prediction == "flow":
        s = flow_s(t, sched.T)
        return (np.minimum(((1.0 - s) / s) ** 2, gamma) * s ** 2).astype(np.float32)
    s = snr(sched)[np.asarray(t)]
    return (np.minimum(s, gamma) / (s if prediction == "eps" else s + 1.0)).astype(np.float32)
