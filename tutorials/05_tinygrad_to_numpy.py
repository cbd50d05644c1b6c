# %% [markdown]
# # 05 From tinygrad to NumPy: one checkpoint, the same images
#
# Tutorial 04 trained a model in tinygrad. Its checkpoint is a plain safetensors file whose
# metadata holds the ModelConfig, the schedule and the step (`numpy_ref/weights.py`), so NumPy
# alone can load it and sample from it. This tutorial does both and compares, number by number:
# one network call first, then a whole DDIM run from the same seed.
#
# Writes `05_same_images.png`: NumPy samples, tinygrad samples, and their difference (x 100).

# %%
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.path.abspath("")
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import numpy as np

from numpy_ref import weights
from numpy_ref.models import get_model as numpy_model
from numpy_ref.sample import sample_images as numpy_sample
from numpy_ref.sample import schedule_of
from tinygrad_impl.models import get_model as tinygrad_model
from tinygrad_impl.sample import sample_images as tinygrad_sample
from tinygrad_impl.weights import to_tensors
from tutorial_utils import FAST, ensure_checkpoint, heat, image_table

ckpt = ensure_checkpoint()

# %% [markdown]
# ## Load the checkpoint into numpy_ref
#
# `load_for_sampling(path)` returns a dict name -> float32 array (the EMA copy when the file has
# one), the config, the metadata and which copy it read; every tensor is checked against `param_shapes(cfg)`.

# %%
params, cfg, meta, which = weights.load_for_sampling(ckpt)
print(f"{ckpt}\n  config: {cfg.arch}, width {cfg.width}, depth {cfg.depth}, {cfg.img_size}x{cfg.img_size}, "
      f"{cfg.num_classes} classes\n  meta: step {meta['step']}, data {meta['data']}, schedule {meta['schedule']}; "
      f"{which} weights")
for name in list(params)[:4]:
    print(f"  {name:28s} {params[name].shape} {params[name].dtype}")
print(f"  ... {len(params)} tensors")

# %% [markdown]
# ## One network call in both
#
# The same weights, the same x_t, t and labels. tinygrad computes in float32 with its own kernels
# (and sums in its own order), NumPy in float32 with BLAS, so the results agree to float32
# rounding, not bit for bit.

# %%
rng = np.random.default_rng(0)
x = rng.standard_normal((4, cfg.in_channels, cfg.img_size, cfg.img_size)).astype(np.float32)
t = np.array([999, 500, 100, 10])
y = np.arange(4) % cfg.num_classes
eps_np = numpy_model(cfg.arch).forward(params, x, t, y, cfg)
from tinygrad import Tensor
eps_tg = tinygrad_model(cfg.arch).forward(to_tensors(params), Tensor(x), Tensor(t.astype(np.float32)),
                                          Tensor(y.astype(np.int32)), cfg).numpy()
eps_diff = float(np.abs(eps_np - eps_tg).max())
print(f"eps: max |numpy - tinygrad| = {eps_diff:.2e}  (values up to {np.abs(eps_np).max():.2f})")

# %% [markdown]
# ## A whole sampling run in both
#
# Both samplers take every random draw from `np.random.default_rng(seed)` in the same order, so
# the seed fixes the images in both backends. Small float32 differences could grow over the steps
# of a chaotic sampler; DDIM is smooth enough that they stay small.

# %%
N, STEPS = (12, 3) if FAST else (36, 25)
sched = schedule_of(meta)
img_np = numpy_sample(params, cfg, sched, N, "ddim", STEPS, seed=0, guidance=2.0)
img_tg = tinygrad_sample(to_tensors(params), cfg, sched, N, "ddim", STEPS, seed=0, guidance=2.0)
img_diff = float(np.abs(img_np - img_tg).max())
print(f"DDIM {STEPS} steps, {N} images: max |numpy - tinygrad| = {img_diff:.2e} (pixel range [-1, 1])")

k = min(N, 12)
amp = np.abs(img_np - img_tg).max(1)[:k] * 100                     # (k, H, W), x 100
rows = [("numpy_ref", img_np[:k]), ("tinygrad", img_tg[:k]), ("|diff| x 100", heat(amp, 0.0, 1.0))]
path = image_table("05_same_images.png", rows, upscale=max(1, 48 // cfg.img_size),
                   title=f"same checkpoint, same seed: DDIM {STEPS} steps; the last row maps |diff| x 100 from 0 "
                         f"(blue) to 1 (yellow)")
print("wrote", path)

# %% [markdown]
# ## What to look at
#
# - The first two rows of `05_same_images.png` are the same images; the third row is dark blue
#   (the largest difference is printed above, far below one grey level, 2/255 = 0.008).
# - `python -m numpy_ref.sample --ckpt <ckpt>` and `python -m tinygrad_impl.sample --ckpt <ckpt>`
#   are the command-line versions of the two calls above.

# %%
print("\nlook at: 05_same_images.png (rows: numpy_ref, tinygrad, difference x 100)")
print(f"KEY eps_max_diff={eps_diff:.3e} image_max_diff={img_diff:.3e}")
