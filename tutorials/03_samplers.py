# %% [markdown]
# # 03 The samplers: DDPM vs DDIM vs DPM-Solver++(2M), quality vs steps
#
# A trained eps-predictor is turned into images by running the forward process of tutorial 01
# backwards. `numpy_ref/samplers.py` does every sampler as a *plan* (timesteps and seven step
# coefficients) plus one update rule:
#
#     x0_hat = clip((x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t))
#     x_prev = a x0_hat + b x_t + c eps + d x0_hat_before + sigma z
#
# - DDPM (ancestral): the posterior q(x_prev | x_t, x0_hat); fresh noise z at every step.
#   Made for all 1000 steps; here its chain is respaced to fewer.
# - DDIM (eta = 0): deterministic; jumps along the same noise direction, built for few steps.
#   It is the first-order (Euler) solver of the probability-flow ODE in lambda = log(alpha/sigma).
# - DPM-Solver++(2M) (Lu et al. 2022): the same ODE, second order. It remembers the previous
#   step's x0_hat (`x0_hat_before`, weight d) and extrapolates x0_hat linearly in lambda to the
#   middle of the step, then takes a DDIM step with that. Deterministic too; made for 10-25 steps.
#
# This tutorial samples the checkpoint of tutorial 04 with NumPy alone (it trains it first when
# it is missing) and measures quality against the number of steps. Writes `03_grid.png`,
# `03_contrast.png` and `03_quality.png`.

# %%
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.path.abspath("")
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import time

import numpy as np

from numpy_ref.data import load_dataset
from numpy_ref.sample import grid_labels, sample_images, schedule_of
from numpy_ref.samplers import sampling_plan
from numpy_ref.weights import load_for_sampling
from tutorial_utils import FAST, ensure_checkpoint, image_table, line_plot

ckpt = ensure_checkpoint()
params, cfg, meta, which = load_for_sampling(ckpt)
sched = schedule_of(meta)
print(f"{ckpt}: {cfg.arch}, {cfg.img_size}x{cfg.img_size}, step {meta['step']}, {which} weights")

STEPS = [2, 5] if FAST else [5, 10, 25, 50, 100]
N = 12 if FAST else 36                       # images per setting (classes in turn)

# %% [markdown]
# ## The plans
#
# The coefficients for a 5-step run of each sampler. DDPM has sigma > 0 (it adds noise back);
# DDIM has sigma = 0. DPM-Solver++(2M) has d != 0 on its middle steps (the weight of the previous
# x0_hat; negative: it extrapolates); its first step has no previous x0_hat and its last two
# (into t = 0, then to the clean image) are first order, the same update as DDIM's.

# %%
SAMPLERS = ("ddpm", "ddim", "dpmpp2m")
NAMES = {"ddpm": "DDPM", "ddim": "DDIM (eta=0)", "dpmpp2m": "DPM-Solver++(2M)"}
for sampler in SAMPLERS:
    print(f"{sampler}: t, then (sqrt(abar), sqrt(1-abar), a, b, c, sigma, d)")
    for t, coefs in sampling_plan(sched, sampler, 5):
        print(f"   t={t:4d}  " + "  ".join(f"{v:7.4f}" for v in coefs))

# %% [markdown]
# ## A quality number without an Inception network
#
# For these generated shapes a simple, honest measure is the distance from each sample to its
# nearest training image (root mean square over pixels). Sharp shapes on plain backgrounds sit
# close to some training image; blurry or noisy samples do not. Two calibration points frame it:
# real test images (the floor: what a perfect model scores) and Gaussian noise (the ceiling).
# It has a blind spot: a dim, blurry image is also close to some dark training background. So we
# also measure *contrast*, the standard deviation of each image's pixels: washed-out samples have
# less than real images. `python -m tinygrad_impl.evaluate` measures FD/KID on learned features.

# %%
train_set = load_dataset("shapes", "train", size=cfg.img_size)
ref = train_set.images.reshape(len(train_set), -1)                   # (6000, C*H*W)
ref_sq = (ref ** 2).sum(1)

def nn_distance(images):
    """Mean over images of the RMS pixel distance to the nearest training image."""
    q = images.reshape(len(images), -1)
    d2 = (q ** 2).sum(1)[:, None] - 2 * q @ ref.T + ref_sq[None]     # (n, 6000) squared distances
    return float(np.sqrt(np.maximum(d2.min(1), 0) / q.shape[1]).mean())

floor = nn_distance(load_dataset("shapes", "test", size=cfg.img_size).images[:N])
contrast = lambda images: float(images.reshape(len(images), -1).std(1).mean())
real_contrast = contrast(load_dataset("shapes", "test", size=cfg.img_size).images[:N])
ceiling = nn_distance(np.clip(np.random.default_rng(0).standard_normal((N, *train_set.shape)), -1, 1).astype(np.float32))
print(f"nearest-training-image distance: real test images {floor:.3f} (floor), noise {ceiling:.3f} (ceiling)")

# %% [markdown]
# ## Sample at every step count
#
# Same seed everywhere, classifier-free guidance 2. Every setting is one `sample_images` call (the
# function behind `python -m numpy_ref.sample`).

# %%
quality, sharp, grids, seconds = {}, {}, {}, {}
for sampler in SAMPLERS:
    quality[sampler], sharp[sampler] = [], []
    for steps in STEPS:
        t0 = time.perf_counter()
        images = sample_images(params, cfg, sched, N, sampler, steps, seed=0, guidance=2.0)
        seconds[sampler, steps] = time.perf_counter() - t0
        quality[sampler].append(nn_distance(images))
        sharp[sampler].append(contrast(images))
        grids[sampler, steps] = images
        print(f"{sampler:<7} {steps:4d} steps: distance {quality[sampler][-1]:.3f}, contrast {sharp[sampler][-1]:.3f} "
              f"(real {real_contrast:.3f})  ({seconds[sampler, steps]:.1f} s)",
              flush=True)

# %% [markdown]
# ## Pictures

# %%
labels = grid_labels(N, cfg.num_classes)
pick = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(cfg.num_classes) if (labels == c).any()])[:12]
rows = [(f"{s} {k} steps", grids[s, k][pick]) for s in SAMPLERS for k in STEPS]
path = image_table("03_grid.png", rows, upscale=max(1, 48 // cfg.img_size),
                   title=f"same seed and classes per column; {which} weights of step {meta['step']}, CFG 2")
print("wrote", path)
# DDIM and DPM-Solver++ solve the same ODE from the same noise, so both head for one image per
# noise. The most accurate solve here (DPM-Solver++ at the most steps) stands in for it:
# how far is each solver from it after k steps?
target = grids["dpmpp2m", STEPS[-1]]
solve_error = {s: [float(np.abs(grids[s, k] - target).mean()) for k in STEPS] for s in ("ddim", "dpmpp2m")}
for s in ("ddim", "dpmpp2m"):
    print(f"{NAMES[s]}, mean |x(k steps) - x(dpmpp2m, {STEPS[-1]} steps)| from the same noise: "
          + ", ".join(f"{k}: {c:.3f}" for k, c in zip(STEPS, solve_error[s])))
path = line_plot("03_contrast.png", {NAMES[s]: (STEPS, sharp[s]) for s in SAMPLERS},
                 title="Contrast: std of each image's pixels (real images: grey line)", xlabel="sampling steps",
                 ylabel="pixel std", hlines=[(real_contrast, "real test images")],
                 ylim=(0, 1.2 * max([real_contrast] + [v for s in SAMPLERS for v in sharp[s]])))
print("wrote", path)
path = line_plot("03_quality.png", {NAMES[s]: (STEPS, quality[s]) for s in SAMPLERS},
                 title="Distance to the nearest training image (lower is better)", xlabel="sampling steps",
                 ylabel="RMS distance", hlines=[(floor, "real test images"), (ceiling, "noise")],
                 ylim=(0, 1.05 * max([ceiling] + [v for s in SAMPLERS for v in quality[s]])))
print("wrote", path)

# %% [markdown]
# ## What to look at
#
# - `03_grid.png`: DDIM's columns hardly change from 5 to 100 steps: the same noise leads
#   deterministically to (nearly) the same image, so a few steps already give the final picture
#   (the printed distance from the most accurate solve shrinks with steps). DDPM's images change with
#   the step count (fresh noise at every step); at 5-10 steps they are dim and blurry, at 50-100
#   steps brighter, but still dimmer than DDIM's.
# - `03_contrast.png`: both climb with steps; DDIM's comes near the real images' within a few tens
#   of steps, DDPM's stays well below it even at 100 steps: DDPM respaced to few steps wastes them,
#   DDIM is made for it.
# - `03_quality.png`: the nearest-image distance *prefers* few-step DDPM, because its dim, blurry
#   images sit near dark training backgrounds: the blind spot named above. Read it together with
#   the contrast, and use `tinygrad_impl.evaluate` for real comparisons.
# - DPM-Solver++(2M) vs DDIM: from the same noise both head for the same image; the printed
#   `mean |x(k steps) - x(dpmpp2m, most steps)|` says how far each still is after k steps. With
#   2 steps the two are the same sampler (first and last steps are first order); the second-order
#   steps start at 4. Where the model's eps is exact, the gap is large: on Gaussian data the
#   second-order sampler's error falls about as the square of the step count, DDIM's about in
#   proportion (`tests/test_samplers.py` checks both). With this tutorial's trained model the gap is
#   smaller but in the same direction: compare the printed distances at 10, 25 and 50 steps.
#
# Next: `05_tinygrad_to_numpy.py` checks that NumPy and tinygrad draw the same images.

# %%
print("\nlook at: 03_grid.png (rows: sampler and steps), 03_contrast.png (contrast vs steps), "
      "03_quality.png (distance vs steps, floor and ceiling)")
print(f"KEY floor={floor:.3f} ceiling={ceiling:.3f} real_contrast={real_contrast:.3f} " + " ".join(
    f"{s}_{k}={q:.3f}" for s in SAMPLERS for k, q in zip(STEPS, quality[s])) + " " + " ".join(
    f"solve_{s}_{k}={e:.3f}" for s in ("ddim", "dpmpp2m") for k, e in zip(STEPS, solve_error[s])))
