# %% [markdown]
# # 04 Train in tinygrad
#
# Training a diffusion model is one line of arithmetic repeated: take a clean image x_0, a random
# timestep t and noise eps, make x_t with `q_sample` (tutorial 01), ask the network for eps, and
# step down the gradient of the squared error. `tinygrad_impl/train.py` does exactly that with
# AdamW, warm-up, gradient clipping, an EMA copy of the weights and label dropout (for
# classifier-free guidance), all in one jitted step. This tutorial runs that trainer, not a copy of it:
#
#     python -m tinygrad_impl.train --data shapes --preset tokenfree-tiny --size 16 --batch 32 --steps 1500 ...
#
# A few minutes on a laptop CPU (the first minute or so is tinygrad compiling the training step).
# Writes `04_loss.png` (the loss curve) and `04_samples.png` (real images beside generated ones),
# and the checkpoint `out/04_shapes_tokenfree-tiny_16/ckpt.safetensors` that tutorials 03 and 05 use.
# Running it again continues the same run (and does nothing once it is finished); delete that
# folder to start over.

# %%
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.path.abspath("")
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import json
import time

import numpy as np

from numpy_ref.data import load_dataset
from numpy_ref.sample import grid_labels, schedule_of
from tinygrad_impl.sample import sample_images
from tinygrad_impl.weights import load_for_sampling
from tutorial_utils import FAST, RUN, checkpoint_path, image_table, line_plot, run_folder, train_run

print("run settings:", RUN)

# %% [markdown]
# ## What one training step sees
#
# `train.batch_at(step, ...)` draws the batch of a step from a seeded generator, so a run is
# reproducible (and a resumed run repeats the uninterrupted one exactly). A look at one batch:

# %%
from numpy_ref.schedule import make_schedule
from tinygrad_impl import train

ds = load_dataset("shapes", "train", size=RUN["size"])
sched = make_schedule()
xt, t, noise, y = train.batch_at(0, 0, ds, 6, sched, label_drop=0.1, null_class=ds.num_classes)
print(f"dataset: {len(ds)} images {ds.shape}, classes {ds.class_names}")
print(f"one batch: x_t {xt.shape}, t {t.tolist()}, labels {y.tolist()} (label {ds.num_classes} = dropped, the null class)")

# %% [markdown]
# ## Train
#
# The callback prints a line now and then; the trainer writes `log.jsonl` with the loss of every
# step, checkpoints, and a final grid of EMA samples. A loss of 1.0 is what predicting eps = 0
# scores (eps has unit variance); a model that learned anything gets below it.

# %%
t0 = time.perf_counter()
report_every = max(1, RUN["steps"] // 10)

def progress(step, loss):
    if step % report_every == 0:
        print(f"  step {step:5d}  loss {loss:.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)

summary = train_run(callback=progress)
print(f"trained to step {summary['step']} in {time.perf_counter() - t0:.0f} s; checkpoint {checkpoint_path()}")

# %% [markdown]
# ## The loss curve
#
# Single steps are noisy (each sees random t: small t is easy, large t is hard), so the plot adds
# a moving average over 50 steps.

# %%
with open(os.path.join(run_folder(), "log.jsonl")) as f:
    log = [json.loads(line) for line in f]
steps = np.array([r["step"] for r in log])
loss = np.array([r["loss"] for r in log])
k = min(50, len(loss))
smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
path = line_plot("04_loss.png", {"loss per step": (steps, loss), f"mean of {k} steps": (steps[k - 1:], smooth)},
                 title=f"Training loss, {RUN['preset']} on {RUN['size']}x{RUN['size']} shapes",
                 xlabel="step", ylabel="|eps - eps_hat|^2", hlines=[(1.0, "predicting eps = 0")],
                 ylim=(0, max(1.2, float(loss.max()) * 1.05)))
first, last = float(loss[:k].mean()), float(loss[-k:].mean())
print(f"wrote {path}: mean loss of the first {k} steps {first:.4f}, of the last {k} steps {last:.4f}")

# %% [markdown]
# ## Samples
#
# DDIM, 25 steps (3 in fast mode), classifier-free guidance 2, from the EMA weights, with the
# tinygrad sampler (`tinygrad_impl.sample.sample_images`); row r asks for class r. Beside each row:
# real images of that class. Tutorial 03 compares samplers and step counts on this checkpoint.

# %%
params, cfg, meta, which = load_for_sampling(checkpoint_path())
n = RUN["sample_n"]                                               # the trainer's grid size: its kernels are compiled
images = sample_images(params, cfg, schedule_of(meta), n, "ddim", RUN["sample_steps"], seed=0, guidance=2.0)
labels = grid_labels(n, cfg.num_classes)                          # the classes sample_images asked for
n_per = min(6, n // ds.num_classes)
rows = []
for c, name in enumerate(ds.class_names):
    real = ds.images[ds.labels == c][:n_per]
    rows.append((name, np.concatenate([real, images[labels == c][:n_per]])))
path = image_table("04_samples.png", rows, col_titles=["real"] * n_per + ["generated"] * n_per,
                   upscale=max(1, 64 // RUN["size"]),
                   title=f"left: real shapes; right: {which} samples after {meta['step']} steps (DDIM {RUN['sample_steps']}, CFG 2)")
print(f"wrote {path} ({which} weights, step {meta['step']})")

# %% [markdown]
# ## What to look at
#
# - `04_loss.png`: the loss falls fast over the first few hundred steps from about 1.0 (what
#   predicting eps = 0 scores), then slowly.
# - `04_samples.png`: after the full run the generated images have learned the look of the data --
#   dark plain backgrounds with bright coloured blobs of the right size -- but not yet the shapes:
#   a 0.07M-parameter model after 1500 steps does not draw a crisp triangle, nor reliably its
#   row's class. Longer runs (`--steps 10000`) and `--preset tokenfree-xs` are the next things to try.
#   (In fast mode the samples are noise: 12 steps teach nothing.)
#
# Next: `03_samplers.py` (DDPM vs DDIM on this checkpoint), `05_tinygrad_to_numpy.py`.

# %%
print("\nlook at: 04_loss.png (the loss curve), 04_samples.png (real vs generated per class)")
print(f"KEY loss_first={first:.4f} loss_last={last:.4f} step={meta['step']}")
