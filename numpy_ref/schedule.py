"""Noise schedules (DDPM): betas, alphas, abar = prod(alphas), and the forward process q(x_t | x_0)."""
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Schedule:
    kind: str             # "linear" or "cosine"
    betas: np.ndarray     # (T,) float64
    alphas: np.ndarray    # (T,) 1 - betas
    abar: np.ndarray      # (T,) cumulative product of alphas, decreasing from ~1 to ~0

    @property
    def T(self):
        return len(self.betas)


def make_schedule(kind="linear", T=1000, beta_start=1e-4, beta_end=0.02):
    """linear: betas from beta_start to beta_end (DDPM); cosine: abar = cos^2 of a shifted ramp (Nichol & Dhariwal)."""
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
    return Schedule(kind, betas, alphas, np.cumprod(alphas))


def q_sample(x0, t, noise, sched):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps: x0, noise (B, ...), t (B,) int -> (B, ...) in x0's dtype."""
    ab = sched.abar[np.asarray(t)].reshape(-1, *([1] * (x0.ndim - 1)))
    return (np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * noise).astype(x0.dtype)


def training_target(x0, t, noise, sched, prediction="eps"):
    """What the network learns to output at x_t: eps (the noise), or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
    (Salimans & Ho 2022, arXiv 2202.00512). x0, noise (B, ...), t (B,) int -> (B, ...) in x0's dtype."""
    if prediction == "eps":
        return noise
    if prediction != "v":
        raise ValueError(f"unknown prediction {prediction!r}; choose 'eps' or 'v'")
    ab = sched.abar[np.asarray(t)].reshape(-1, *([1] * (x0.ndim - 1)))
    return (np.sqrt(ab) * noise - np.sqrt(1.0 - ab) * x0).astype(x0.dtype)


def snr(sched):
    """Signal-to-noise ratio abar / (1 - abar) per timestep, (T,)."""
    return sched.abar / (1.0 - sched.abar)


LOSS_WEIGHTS = ("none", "min-snr")


def loss_weight(t, sched, prediction="eps", kind="none", gamma=5.0):
    """Per-sample weight of the training MSE, t (B,) int -> (B,) float32.
    "none": ones. "min-snr": Min-SNR-gamma (Hang et al. 2023, arXiv 2303.09556): the x0 error weighted by
    min(SNR_t, gamma), i.e. min(SNR, gamma) / SNR on the eps loss and min(SNR, gamma) / (SNR + 1) on the v loss,
    so the many easy low-noise steps stop dominating the gradient."""
    if kind == "none":
        return np.ones(len(np.asarray(t)), np.float32)
    if kind != "min-snr":
        raise ValueError(f"unknown loss weight {kind!r}; choose one of {', '.join(LOSS_WEIGHTS)}")
    if prediction not in ("eps", "v"):
        raise ValueError(f"unknown prediction {prediction!r}; choose 'eps' or 'v'")
    s = snr(sched)[np.asarray(t)]
    return (np.minimum(s, gamma) / (s if prediction == "eps" else s + 1.0)).astype(np.float32)
