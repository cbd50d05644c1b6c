# %% [markdown]
# # 01 Forward diffusion: from an image to noise
#
# A diffusion model learns to undo one fixed process: adding Gaussian noise to an image, a little
# at a time, over T = 1000 steps. This tutorial runs that forward process with `numpy_ref` alone
# and looks at it three ways: the schedule's numbers, the signal-to-noise curve, and a strip of
# noised images x_t.
#
# Run it as `python tutorials/01_forward_diffusion.py`, or open it as a notebook (jupytext, VS Code).
# It writes `01_schedules.png`, `01_snr.png` and `01_strip.png` next to itself.

# %%
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.path.abspath("")
sys.path[:0] = [HERE, os.path.dirname(HERE)]          # tutorial_utils, and numpy_ref without an install

import numpy as np

from numpy_ref.data import load_dataset
from numpy_ref.schedule import make_schedule, q_sample, snr
from tutorial_utils import FAST, image_table, line_plot

SIZE = 16 if FAST else 32

# %% [markdown]
# ## The schedule
#
# Step t adds noise of variance beta_t: `x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps`.
# Steps compose, so any x_t can be drawn from x_0 in one go with abar_t = prod(1 - beta_s, s <= t):
#
#     x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,      eps ~ N(0, I)
#
# `make_schedule("linear")` is DDPM's (beta from 1e-4 to 0.02); `"cosine"` is Nichol & Dhariwal's,
# which keeps more of the image for longer.

# %%
linear, cosine = make_schedule("linear"), make_schedule("cosine")
T = linear.T
for name, s in (("linear", linear), ("cosine", cosine)):
    print(f"{name:6s}: beta_0={s.betas[0]:.1e}  beta_T-1={s.betas[-1]:.4f}  "
          f"abar at t=0: {s.abar[0]:.5f}, t=250: {s.abar[250]:.3f}, t=500: {s.abar[500]:.3f}, t=999: {s.abar[-1]:.2e}")

t_axis = np.arange(T)
line_plot("01_schedules.png", {"sqrt(abar_t) linear: signal": (t_axis, np.sqrt(linear.abar)),
                               "sqrt(1-abar_t) linear: noise": (t_axis, np.sqrt(1 - linear.abar)),
                               "sqrt(abar_t) cosine": (t_axis, np.sqrt(cosine.abar)),
                               "sqrt(1-abar_t) cosine": (t_axis, np.sqrt(1 - cosine.abar))},
          title="How much image and how much noise x_t holds", xlabel="timestep t", ylim=(0, 1))

# %% [markdown]
# ## The signal-to-noise ratio
#
# SNR(t) = abar_t / (1 - abar_t): the power of the image over the power of the noise in x_t.
# On a log scale it falls almost linearly for the cosine schedule; the linear schedule spends
# fewer steps at high SNR and drives the image out faster. Where SNR = 1 (0 dB) the image and
# the noise are equally strong.

# %%
log_snr = {name: 10 * np.log10(snr(s)) for name, s in (("linear", linear), ("cosine", cosine))}
crossing = {name: int(np.argmax(v < 0)) for name, v in log_snr.items()}
for name in log_snr:
    print(f"{name:6s}: SNR {log_snr[name][0]:+.1f} dB at t=0, {log_snr[name][-1]:+.1f} dB at t=999; "
          f"SNR = 1 (0 dB) first at t={crossing[name]}")
line_plot("01_snr.png", {f"linear (0 dB at t={crossing['linear']})": (t_axis, log_snr["linear"]),
                         f"cosine (0 dB at t={crossing['cosine']})": (t_axis, log_snr["cosine"])},
          title="Signal-to-noise ratio of x_t", xlabel="timestep t", ylabel="10 log10 SNR (dB)",
          hlines=[(0.0, "SNR = 1")], ylim=(-60, 45))

# %% [markdown]
# ## A strip of x_t
#
# The built-in dataset (`shapes`: six classes of coloured shapes, generated from a seed) gives one
# image of each class. Every column noises it to a later t with `q_sample`, the same function the
# trainer uses. The same eps is used in every column, so only the mix changes.

# %%
ds = load_dataset("shapes", "test", size=SIZE)
x0 = ds.images[:6]                                                   # (6, 3, H, W) in [-1, 1], one per class
ts = [0, 50, 100, 200, 300, 400, 600, 800, 999]
eps = np.random.default_rng(0).standard_normal(x0[:1].shape).astype(np.float32)
rows = []
for i, name in enumerate(ds.class_names[:6]):
    strip = np.concatenate([q_sample(x0[i:i + 1], np.array([t]), eps, linear) for t in ts])   # (len(ts), 3, H, W)
    rows.append((f"{name} (linear)", strip))
rows.append(("circle (cosine)", np.concatenate([q_sample(x0[:1], np.array([t]), eps, cosine) for t in ts])))
path = image_table("01_strip.png", rows, col_titles=[f"t={t}" for t in ts], upscale=64 // SIZE * 2,
                   title="x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps   (values clipped to [-1, 1] for display)")
print("wrote", path)

# %% [markdown]
# ## Checking the formula on numbers
#
# Two facts the sampler relies on. (1) Knowing eps, x_0 comes back exactly:
# `x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)` -- that is why predicting eps is enough.
# (2) The correlation of x_t with x_0, over many noise draws, is sqrt(abar_t) / std(x_t): at t = 999
# almost nothing of the image is left, and x_t is close to a standard normal.

# %%
rng = np.random.default_rng(1)
x_many = np.repeat(x0, 64, axis=0)                                   # (384, 3, H, W)
for t in (100, 500, 999):
    noise = rng.standard_normal(x_many.shape).astype(np.float32)
    xt = q_sample(x_many, np.full(len(x_many), t), noise, linear)
    back = (xt - np.sqrt(1 - linear.abar[t]) * noise) / np.sqrt(linear.abar[t])
    corr = np.corrcoef(xt.ravel(), x_many.ravel())[0, 1]
    expected = np.sqrt(linear.abar[t]) * x_many.std() / np.sqrt(linear.abar[t] * x_many.var() + 1 - linear.abar[t])
    print(f"t={t:3d}: std(x_t)={xt.std():.3f}  corr(x_t, x_0)={corr:.3f} (formula {expected:.3f})  "
          f"max |x_0 recovered - x_0| = {np.abs(back - x_many).max():.1e}")

# %% [markdown]
# ## What to look at
#
# - `01_schedules.png`: the linear schedule's signal curve falls faster than the cosine one.
# - `01_snr.png`: SNR falls from about +40 dB to -44 dB (linear); it crosses 0 dB at t = 259 (cosine: t = 496).
# - `01_strip.png`: the shapes are clear to about t = 200, faint at 300-400, gone by 600; the
#   cosine row keeps the circle visible to about t = 600.
#
# Next: `02_tokenfree_block.py`, the network that learns to predict eps from x_t and t.

# %%
print("\nlook at: 01_schedules.png (signal and noise amplitudes), 01_snr.png (SNR in dB, 0 dB crossing), "
      "01_strip.png (x_t strips per class)")
print(f"KEY abar_T={linear.abar[-1]:.3e} snr_crossing_linear={crossing['linear']}")
